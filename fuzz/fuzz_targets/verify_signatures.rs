#![no_main]
//! The three verifiers with attacker-chosen headers and bodies: no panic, and nothing
//! verifies without the secret (a forged body with a real signature of another body fails).
use flowhook::config::{BikSettings, GenericSettings, MetaSettings, Secret};
use flowhook::providers::{bik, generic, meta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |n| usize::from(*n)).min(data.len());
    let (header, body) = data.split_at(split);

    let mut b = BikSettings::default();
    b.basic_auth = vec![Secret::new("fuzz-key")];
    assert!(bik::verify(Some(header), &b).is_err() || header == b"Basic fuzz-key");

    let m = MetaSettings {
        app_secrets: vec![Secret::new("fuzz-secret")],
        verify_token: Secret::new("t"),
    };
    let forged = meta::verify(Some(header), body, &m);
    if forged.is_ok() {
        assert_eq!(header, meta::sign(body, "fuzz-secret").as_bytes());
    }

    let mut g = GenericSettings::default();
    g.secrets = vec![Secret::new("whsec_ZnV6ei1zZWNyZXQ=")];
    let text = String::from_utf8_lossy(header);
    let mut parts = text.splitn(3, '\n');
    let headers = generic::SignatureHeaders {
        id: parts.next(),
        timestamp: parts.next(),
        signature: parts.next(),
    };
    let _ = generic::verify(headers, body, 1_795_255_200, &g);
});
