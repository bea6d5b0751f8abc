//! Edge adapters: each provider file implements [`Source`]: it verifies a request over its raw
//! bytes and turns the body into [`IngestItem`]s. One handler (`http::webhooks`) serves them
//! all; adding a provider is a file here, its settings and its route (README, "Extending").

pub mod bik;
pub mod generic;
pub mod meta;

use actix_web::http::header::HeaderMap;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::ProviderSettings;
use crate::domain::{
    failure_text, Billing, CallbackData, Event, EventKind, IngestItem, MessageId, Provider, Status,
};

pub use bik::Bik;
pub use generic::Generic;
pub use meta::Meta;

/// What a provider file provides: how its webhooks are verified and read.
pub trait Source {
    /// Its name in the route (`/webhooks/<name>`), the metrics and the stored events.
    const PROVIDER: Provider;
    /// Its `[providers.<name>]` section.
    type Settings: Send + Sync;
    fn settings(all: &ProviderSettings) -> &Self::Settings;
    /// What the headers alone can refuse, before the body is read, so that a sender without
    /// credentials cannot make flowhook read a large body. Nothing by default.
    fn check_headers(_settings: &Self::Settings, _headers: &HeaderMap) -> Result<(), Refusal> {
        Ok(())
    }
    /// Verifies the request over the exact bytes of its body (`now` for timestamp windows).
    fn verify(
        settings: &Self::Settings,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Refusal>;
    /// The events of a verified body.
    fn parse(
        settings: &Self::Settings,
        headers: &HeaderMap,
        body: &[u8],
        ctx: ParseContext,
    ) -> Result<Vec<IngestItem>, Refusal>;
}

/// A header's bytes, if present.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

/// Why a request was refused before anything was stored.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Verification failed: `401`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The body is not JSON: `400`.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
}

/// What every adapter needs to know besides the body.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext {
    pub received_at: DateTime<Utc>,
    pub max_callback_bytes: usize,
}

/// Compares secrets without leaking, through timing, how much of them matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Parses a body, after the signature was checked over its exact bytes. A UTF-8 byte-order
/// mark in front of the JSON, which some senders' frameworks add, is skipped.
fn parse_json(body: &[u8]) -> Result<Value, Refusal> {
    let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(json).map_err(|e| Refusal::NotJson(e.to_string()))
}

/// A body that is one event or an array of them, as a list.
fn elements(body: Value) -> Vec<Value> {
    match body {
        Value::Array(items) => items,
        other => vec![other],
    }
}

/// An RFC 3339 string, or unix seconds as a number or a string of digits.
fn parse_time(value: &Value) -> Result<DateTime<Utc>, String> {
    let from_secs = |secs: i64| {
        Utc.timestamp_opt(secs, 0)
            .single()
            .ok_or_else(|| format!("timestamp {secs} is out of range"))
    };
    match value {
        Value::Number(n) => from_secs(
            n.as_i64()
                .ok_or("timestamp is not a whole number of seconds")?,
        ),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => from_secs(
            s.parse()
                .map_err(|_| "timestamp is out of range".to_owned())?,
        ),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| "timestamp is neither RFC 3339 nor unix seconds".to_owned()),
        Value::Null => Err("timestamp is missing".into()),
        _ => Err("timestamp is neither RFC 3339 nor unix seconds".into()),
    }
}

/// A present, non-empty scalar as text (providers send ids and phones as strings or numbers).
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A channel error's words, as Meta shapes them (`title`, `message`, `error_data.details`),
/// joined by [`failure_text`].
fn error_words(error: &Value) -> Option<String> {
    let part = |pointer: &str| error.pointer(pointer).and_then(Value::as_str);
    failure_text([
        part("/title"),
        part("/message"),
        part("/error_data/details"),
    ])
}

/// The first of `values` that is present and not null.
fn first_present<'a>(values: impl IntoIterator<Item = Option<&'a Value>>) -> Option<&'a Value> {
    values.into_iter().flatten().find(|v| !v.is_null())
}

/// The fields an adapter found for one event, before the checks every event must pass.
#[derive(Default)]
struct Fields<'a> {
    event_id: Option<String>,
    message_id: Option<&'a Value>,
    status: Option<&'a Value>,
    url: Option<&'a Value>,
    at: Option<&'a Value>,
    recipient: Option<String>,
    recipient_user_id: Option<String>,
    participant: Option<String>,
    channel: Option<String>,
    failure_code: Option<String>,
    failure_reason: Option<String>,
    callback: Option<&'a Value>,
    billing: Option<Box<Billing>>,
    /// The recipient is a full international number, `+` or not (Meta's `recipient_id`).
    international: bool,
}

impl Fields<'_> {
    /// Builds the event, or quarantines the raw element with the first thing it lacks.
    fn into_item(
        self,
        provider: Provider,
        kind: EventKind,
        raw: &Value,
        ctx: ParseContext,
    ) -> IngestItem {
        match self.into_event(provider, kind, ctx) {
            Ok(event) => IngestItem::Event(Box::new(event)),
            Err(reason) => rejected(raw, reason),
        }
    }

    fn into_event(
        self,
        provider: Provider,
        kind: EventKind,
        ctx: ParseContext,
    ) -> Result<Event, String> {
        let message_id = match self.message_id {
            Some(Value::String(id)) => MessageId::parse(id)?,
            Some(Value::Null) | None => return Err("message id is missing".into()),
            Some(_) => return Err("message id is not a string".into()),
        };
        let (status, url) = match kind {
            EventKind::Status => match self.status {
                Some(Value::String(s)) if !s.trim().is_empty() => (Some(Status::parse(s)), None),
                Some(Value::String(_)) | Some(Value::Null) | None => {
                    return Err("status is missing".into())
                }
                Some(_) => return Err("status is not a string".into()),
            },
            EventKind::Click => match self.url {
                Some(Value::String(u)) if !u.is_empty() => (None, Some(u.clone())),
                Some(Value::String(_)) | Some(Value::Null) | None => {
                    return Err("click URL is missing".into())
                }
                Some(_) => return Err("click URL is not a string".into()),
            },
            // Replies are built as `Incoming`, opt-outs as `OptOutItem`, never from these fields.
            EventKind::Reply | EventKind::OptOut => return Err("not a status or a click".into()),
        };
        let at = parse_time(self.at.unwrap_or(&Value::Null))?;
        Ok(Event {
            message_id,
            provider,
            kind,
            status,
            url,
            at,
            received_at: ctx.received_at,
            event_id: self.event_id,
            recipient_e164: self.recipient.as_deref().and_then(if self.international {
                crate::domain::recipient::international
            } else {
                crate::domain::recipient::e164
            }),
            recipient: self.recipient,
            recipient_user_id: self.recipient_user_id,
            participant: self.participant,
            channel: self.channel,
            failure_code: self.failure_code,
            failure_reason: self.failure_reason,
            callback: self
                .callback
                .and_then(|cb| CallbackData::decode(cb, ctx.max_callback_bytes)),
            billing: self.billing,
            reply: None,
            opt_out: None,
        })
    }
}

fn rejected(raw: &Value, reason: impl Into<String>) -> IngestItem {
    IngestItem::Rejected {
        reason: reason.into(),
        raw: raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse_time;

    #[test]
    fn times_parse_from_rfc3339_and_unix_seconds() {
        let expected = "2026-11-21T10:00:02Z";
        for input in [
            json!("2026-11-21T10:00:02Z"),
            json!("2026-11-21T15:30:02+05:30"),
            json!(1795255202),
            json!("1795255202"),
        ] {
            assert_eq!(
                crate::domain::rfc3339(parse_time(&input).unwrap()),
                expected,
                "{input}"
            );
        }
        for bad in [
            json!(null),
            json!(""),
            json!("yesterday"),
            json!(1.5),
            json!("99999999999999999999"),
            json!([1]),
        ] {
            assert!(parse_time(&bad).is_err(), "{bad}");
        }
    }
}
