#![no_main]
//! callbackData as a string (as BIK sends it) and as inline JSON, with small and large limits.
use flowhook::domain::{lookup_path, CallbackData};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    for limit in [16, 4096] {
        if let Some(decoded) = CallbackData::decode(&Value::String(text.clone()), limit) {
            assert!(decoded.value.is_some() != decoded.error.is_some());
            if let Some(map) = &decoded.value {
                let _ = lookup_path(map, "order.id");
                let _ = lookup_path(map, &text);
            }
        }
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = CallbackData::decode(&value, 4096);
    }
});
