#![no_main]
//! Any body through the BIK adapter, then into message state in both orders.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let settings = flowhook::config::BikSettings::default();
    if let Ok(items) = flowhook::providers::bik::parse(data, &settings, common::ctx()) {
        common::fold(items);
    }
});
