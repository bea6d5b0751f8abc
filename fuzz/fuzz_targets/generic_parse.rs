#![no_main]
//! Any body (and webhook id) through the generic adapter, then into message state.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (id, body) = data.split_at(
        data.first()
            .map_or(0, |n| usize::from(*n % 16))
            .min(data.len()),
    );
    let id = String::from_utf8_lossy(id);
    if let Ok(items) = flowhook::providers::generic::parse(body, &id, common::ctx()) {
        common::fold(items);
    }
});
