#![no_main]
//! Any body through the Meta adapter, then into message state in both orders.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = flowhook::providers::meta::parse(data, common::ctx()) {
        common::fold(items);
    }
});
