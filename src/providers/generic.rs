//! The generic route: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`) and flowhook's own event
//! shape, one event or an array of them.

use actix_web::http::header::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{elements, header, parse_json, rejected, text, Fields, ParseContext, Refusal, Source};
use crate::config::{decode_whsec, GenericSettings, ProviderSettings};
use crate::domain::{EventKind, IngestItem, Provider};

pub struct Generic;

impl Source for Generic {
    const PROVIDER: Provider = Provider::Generic;
    type Settings = GenericSettings;

    fn settings(all: &ProviderSettings) -> &GenericSettings {
        &all.generic
    }

    fn verify(
        settings: &GenericSettings,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        verify(
            SignatureHeaders::of(headers),
            body,
            now.timestamp(),
            settings,
        )
    }

    fn parse(
        _: &GenericSettings,
        headers: &HeaderMap,
        body: &[u8],
        ctx: ParseContext,
    ) -> Result<Vec<IngestItem>, Refusal> {
        let id = SignatureHeaders::of(headers).id.unwrap_or_default();
        parse(body, id, ctx)
    }
}

/// The three Standard Webhooks headers, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl<'a> SignatureHeaders<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let text = |name| header(headers, name).and_then(|v| std::str::from_utf8(v).ok());
        Self {
            id: text("webhook-id"),
            timestamp: text("webhook-timestamp"),
            signature: text("webhook-signature"),
        }
    }
}

/// Verifies the signature against each secret and the timestamp against the tolerance window.
pub fn verify(
    headers: SignatureHeaders<'_>,
    body: &[u8],
    now_unix: i64,
    settings: &GenericSettings,
) -> Result<(), Refusal> {
    let (Some(id), Some(timestamp), Some(signature)) =
        (headers.id, headers.timestamp, headers.signature)
    else {
        return Err(Refusal::Unauthorized(
            "missing webhook-id, webhook-timestamp or webhook-signature header",
        ));
    };
    let sent_at: i64 = timestamp
        .parse()
        .map_err(|_| Refusal::Unauthorized("webhook-timestamp is not unix seconds"))?;
    if now_unix.abs_diff(sent_at) > settings.tolerance_seconds {
        return Err(Refusal::Unauthorized(
            "webhook-timestamp is outside the tolerance window",
        ));
    }
    let candidates: Vec<Vec<u8>> = signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    let matched = settings
        .secrets
        .iter()
        .filter_map(|s| decode_whsec(s).ok())
        .fold(false, |found, key| {
            let mac = signed_content_mac(&key, id, timestamp, body);
            found
                | candidates
                    .iter()
                    .fold(false, |any, c| any | mac.clone().verify_slice(c).is_ok())
        });
    if matched {
        Ok(())
    } else {
        Err(Refusal::Unauthorized("invalid webhook-signature"))
    }
}

/// `v1,<base64>` for a message, as a Standard Webhooks sender would compute it.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = signed_content_mac(key, id, &timestamp.to_string(), body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn signed_content_mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Parses the body; `webhook_id` becomes the event id (`<id>#<index>` for elements of an array,
/// so that each element of a retried batch is recognised again).
pub fn parse(body: &[u8], webhook_id: &str, ctx: ParseContext) -> Result<Vec<IngestItem>, Refusal> {
    let body = parse_json(body)?;
    let batch = body.is_array();
    Ok(elements(body)
        .iter()
        .enumerate()
        .map(|(i, element)| {
            let event_id = if batch {
                format!("{webhook_id}#{i}")
            } else {
                webhook_id.to_owned()
            };
            parse_event(element, event_id, ctx)
        })
        .collect())
}

fn parse_event(raw: &Value, event_id: String, ctx: ParseContext) -> IngestItem {
    let kind = match raw.get("type").and_then(Value::as_str) {
        Some("message.status") => EventKind::Status,
        Some("message.click") => EventKind::Click,
        Some(_) => return IngestItem::Ignored,
        None => return rejected(raw, "type is missing"),
    };
    let fields = Fields {
        event_id: Some(event_id),
        message_id: raw.get("message_id"),
        status: raw.get("status"),
        url: raw.get("url"),
        at: raw.get("timestamp"),
        recipient: text(raw.get("recipient")),
        recipient_user_id: text(raw.get("recipient_user_id")),
        participant: text(raw.get("participant")),
        channel: text(raw.get("channel")),
        failure_code: text(raw.get("failure_code")),
        failure_reason: text(raw.get("failure_reason")),
        callback: raw.get("callback_data"),
        ..Default::default()
    };
    fields.into_item(Provider::Generic, kind, raw, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn vectors() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/standard-webhooks/vectors.json"
        ))
        .unwrap()
    }

    fn settings(secret: &str) -> GenericSettings {
        GenericSettings {
            secrets: vec![Secret::new(secret)],
            tolerance_seconds: 300,
        }
    }

    fn headers<'a>(v: &'a Value, ts: &'a str, signature: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders {
            id: v["id"].as_str(),
            timestamp: Some(ts),
            signature: Some(signature),
        }
    }

    #[test]
    fn the_library_vectors_verify() {
        for v in vectors()["valid"].as_array().unwrap() {
            let ts = v["timestamp"].as_i64().unwrap();
            let body = v["body"].as_str().unwrap().as_bytes();
            let secret = v["secret"].as_str().unwrap();
            let ts_text = ts.to_string();
            let result = verify(
                headers(v, &ts_text, v["signature"].as_str().unwrap()),
                body,
                ts,
                &settings(secret),
            );
            assert!(result.is_ok(), "{v}");
            let key = decode_whsec(&Secret::new(secret)).unwrap();
            assert_eq!(
                sign(&key, v["id"].as_str().unwrap(), ts, body),
                v["signature"].as_str().unwrap()
            );
        }
    }

    #[test]
    fn invalid_signatures_are_refused() {
        let all = vectors();
        let v = &all["valid"][1];
        let ts = v["timestamp"].as_i64().unwrap();
        let ts_text = ts.to_string();
        for bad in all["invalid_signatures_for_second"].as_array().unwrap() {
            let result = verify(
                headers(v, &ts_text, bad.as_str().unwrap()),
                v["body"].as_str().unwrap().as_bytes(),
                ts,
                &settings(v["secret"].as_str().unwrap()),
            );
            assert!(result.is_err(), "{bad}");
        }
    }

    #[test]
    fn one_good_signature_among_several_is_enough() {
        let all = vectors();
        let v = &all["valid"][0];
        let ts = v["timestamp"].as_i64().unwrap();
        let ts_text = ts.to_string();
        let header = all["multi_signature_header_valid_for_first"]
            .as_str()
            .unwrap();
        let result = verify(
            headers(v, &ts_text, header),
            v["body"].as_str().unwrap().as_bytes(),
            ts,
            &settings(v["secret"].as_str().unwrap()),
        );
        assert!(result.is_ok());
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let all = vectors();
        let v = &all["valid"][0];
        let ts = v["timestamp"].as_i64().unwrap();
        let ts_text = ts.to_string();
        let body = v["body"].as_str().unwrap().as_bytes();
        let s = settings(v["secret"].as_str().unwrap());
        let sig = v["signature"].as_str().unwrap();
        assert!(verify(headers(v, &ts_text, sig), body, ts + 300, &s).is_ok());
        assert!(verify(headers(v, &ts_text, sig), body, ts + 301, &s).is_err());
        assert!(verify(headers(v, &ts_text, sig), body, ts - 301, &s).is_err());
        assert!(verify(headers(v, "not-a-number", sig), body, ts, &s).is_err());
    }
}
