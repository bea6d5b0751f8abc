//! BIK webhooks: HTTP Basic auth with the key set in BIK's developer portal; a JSON array of
//! `{eventName, eventInfo, id, ...}` (a single object is accepted too).

use actix_web::http::header::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    constant_time_eq, elements, error_words, first_present, header, parse_json, rejected, text,
    Fields, ParseContext, Refusal, Source,
};
use crate::config::{BikSettings, ProviderSettings};
use crate::domain::optout::OptOutSource;
use crate::domain::{
    failure_text, EventKind, Incoming, IngestItem, MessageId, OptOutItem, Preference, Provider,
    Reply,
};

const STATUS_EVENT: &str = "message-status-update";
/// A customer's message: a reply (contract section 8.1).
const INCOMING_EVENT: &str = "incoming-message";
/// A recipient opting out of a campaign's messages (contract section 8.2).
const OPT_OUT_EVENT: &str = "optedOut";
const BASIC: &[u8] = b"Basic ";

pub struct Bik;

impl Source for Bik {
    const PROVIDER: Provider = Provider::Bik;
    type Settings = BikSettings;

    fn settings(all: &ProviderSettings) -> &BikSettings {
        &all.bik
    }

    /// BIK's credential is a header, so it is checked before the body is read.
    fn check_headers(settings: &BikSettings, headers: &HeaderMap) -> Result<(), Refusal> {
        verify(header(headers, "authorization"), settings)
    }

    fn verify(_: &BikSettings, _: &HeaderMap, _: &[u8], _: DateTime<Utc>) -> Result<(), Refusal> {
        Ok(())
    }

    fn parse(
        settings: &BikSettings,
        _: &HeaderMap,
        body: &[u8],
        ctx: ParseContext,
    ) -> Result<Vec<IngestItem>, Refusal> {
        parse(body, settings, ctx)
    }
}

/// Compares the whole `Authorization` header with `Basic <key>` for each configured key.
pub fn verify(authorization: Option<&[u8]>, settings: &BikSettings) -> Result<(), Refusal> {
    let header = authorization.ok_or(Refusal::Unauthorized("missing Authorization header"))?;
    // The scheme and the key compared apart, so that no `Basic <key>` is built per request.
    let (scheme, credential) = header.split_at(header.len().min(BASIC.len()));
    let basic = constant_time_eq(scheme, BASIC);
    let matched = settings.basic_auth.iter().fold(false, |found, key| {
        found | (basic & constant_time_eq(credential, key.expose().as_bytes()))
    });
    if matched {
        Ok(())
    } else {
        Err(Refusal::Unauthorized("invalid Authorization header"))
    }
}

pub fn parse(
    body: &[u8],
    settings: &BikSettings,
    ctx: ParseContext,
) -> Result<Vec<IngestItem>, Refusal> {
    Ok(elements(parse_json(body)?)
        .iter()
        .map(|element| parse_event(element, settings, ctx))
        .collect())
}

fn parse_event(raw: &Value, settings: &BikSettings, ctx: ParseContext) -> IngestItem {
    let Some(name) = raw.get("eventName").and_then(Value::as_str) else {
        return rejected(raw, "eventName is missing");
    };
    let kind = if name == STATUS_EVENT {
        EventKind::Status
    } else if settings.click_event_names.iter().any(|n| n == name) {
        EventKind::Click
    } else if name == INCOMING_EVENT {
        return parse_incoming(raw, ctx);
    } else if name == OPT_OUT_EVENT {
        return parse_opt_out(raw, ctx);
    } else {
        return IngestItem::Ignored;
    };
    let info = raw.get("eventInfo").unwrap_or(&Value::Null);
    if !info.is_object() {
        return rejected(raw, "eventInfo is missing or not an object");
    }
    let fields = Fields {
        event_id: text(raw.get("id")),
        message_id: info.get("messageId"),
        status: info.get("status"),
        url: first_present([info.get("url"), info.get("link"), info.get("clickedUrl")]),
        at: info.get("createdAt"),
        recipient: text(info.get("assetValue")),
        channel: text(info.get("channelId")),
        failure_code: failure_code(info),
        failure_reason: failure_reason(info),
        callback: first_present([info.get("callbackData"), raw.get("callbackData")]),
        ..Default::default()
    };
    fields.into_item(Provider::Bik, kind, raw, ctx)
}

/// An opt-out (`optedOut`, from BIK's "Subscribed Events"): the fields sit at the top level
/// (`messageId` the campaign message it answers, `createdAt`, `channel`, `eventId`); read from
/// `eventInfo` too, as BIK's other events carry them. It names no phone number: the recipient
/// is the named message's (`eventInfo.assetValue` is read where present). Its id is
/// `eventId` (or `id`) with the time: BIK's `eventId` (`optedOut-<userChannelId>`) is the
/// same for every opt-out of one user, so alone it would make a later one a duplicate.
fn parse_opt_out(raw: &Value, ctx: ParseContext) -> IngestItem {
    let info = raw.get("eventInfo").filter(|i| i.is_object());
    let field = |name: &str| raw.get(name).or_else(|| info.and_then(|i| i.get(name)));
    let message = match text(field("messageId")).map(|id| MessageId::parse(&id)) {
        Some(Ok(id)) => id,
        Some(Err(reason)) => return rejected(raw, reason),
        None => return rejected(raw, "an optedOut event needs messageId"),
    };
    let at = match super::parse_time(
        first_present([field("createdAt"), field("timestamp")]).unwrap_or(&Value::Null),
    ) {
        Ok(at) => at,
        Err(reason) => return rejected(raw, reason),
    };
    let id = text(field("eventId"))
        .or_else(|| text(raw.get("id")))
        .unwrap_or_else(|| format!("optedOut:{message}"));
    let recipient = text(field("assetValue"));
    IngestItem::OptOut(Box::new(OptOutItem {
        value: Preference::Stop,
        source: OptOutSource::Bik,
        event_id: format!("{id}@{}", crate::domain::rfc3339(at)),
        message: Some(message),
        context: None,
        recipient_e164: recipient
            .as_deref()
            .and_then(crate::domain::recipient::e164),
        recipient,
        provider: Provider::Bik,
        channel: text(field("channel")).or_else(|| text(field("channelId"))),
        at,
        received_at: ctx.received_at,
    }))
}

/// A customer's message (`incoming-message`): `eventInfo.messageId` is its own id,
/// `eventInfo.message` its text, `eventInfo.assetValue` the sender; the business message it
/// answers is `eventInfo.context.messageId` where BIK passes the channel's context on, else the
/// sender's latest (the store decides). `eventInfo.messageType` (or `type`) is its type,
/// `text` when BIK says none; a button's payload is `eventInfo.payload` or
/// `eventInfo.buttonPayload`.
fn parse_incoming(raw: &Value, ctx: ParseContext) -> IngestItem {
    let info = raw.get("eventInfo").unwrap_or(&Value::Null);
    let (Some(id), Some(from)) = (text(info.get("messageId")), text(info.get("assetValue"))) else {
        return rejected(
            raw,
            "an incoming message needs eventInfo.messageId and assetValue",
        );
    };
    let at = match super::parse_time(info.get("createdAt").unwrap_or(&Value::Null)) {
        Ok(at) => at,
        Err(reason) => return rejected(raw, reason),
    };
    let context = text(info.pointer("/context/messageId"))
        .or_else(|| text(info.pointer("/context/id")))
        .and_then(|id| MessageId::parse(&id).ok());
    IngestItem::Reply(Box::new(Incoming {
        reply: Reply {
            message_id: id,
            kind: text(first_present([info.get("messageType"), info.get("type")]))
                .unwrap_or_else(|| "text".into()),
            text: text(first_present([info.get("message"), info.get("text")])),
            payload: text(first_present([
                info.get("payload"),
                info.get("buttonPayload"),
            ])),
        },
        context,
        from_e164: crate::domain::recipient::e164(&from),
        from,
        provider: Provider::Bik,
        channel: text(info.get("channelId")),
        at,
        received_at: ctx.received_at,
    }))
}

/// BIK relays the channel's error: a code in `failureCode` or `errorCode` (or inside a
/// `failureReason` object), as a number or a string.
fn failure_code(info: &Value) -> Option<String> {
    text(first_present([
        info.get("failureCode"),
        info.get("errorCode"),
        info.pointer("/failureReason/code"),
    ]))
}

/// `failureReason` as text, or, when BIK passes the channel's error object through, its words
/// joined the way Meta's are.
fn failure_reason(info: &Value) -> Option<String> {
    let reason = info.get("failureReason")?;
    if reason.is_object() {
        error_words(reason)
    } else {
        failure_text([reason.as_str()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings() -> BikSettings {
        BikSettings {
            basic_auth: vec![Secret::new("old-key"), Secret::new("new-key")],
            ..Default::default()
        }
    }

    #[test]
    fn any_configured_key_is_accepted_during_rotation() {
        assert!(verify(Some(b"Basic old-key"), &settings()).is_ok());
        assert!(verify(Some(b"Basic new-key"), &settings()).is_ok());
    }

    #[test]
    fn a_wrong_missing_or_partial_header_is_refused() {
        for header in [
            Some(&b"Basic other"[..]),
            Some(b"Basic "),
            Some(b"new-key"),
            Some(b"Bearer new-key"),
            Some(b"basic new-key"),
            Some(b"Basic"),
            Some(b""),
            None,
        ] {
            assert!(verify(header, &settings()).is_err(), "{header:?}");
        }
        let empty = BikSettings::default();
        assert!(verify(Some(b"Basic "), &empty).is_err());
    }

    /// BIK's public reference shows `failureReason` as text (`tests/fixtures/bik/`); a code
    /// field or the channel's error object passed through are read the same way as Meta's.
    #[test]
    fn failure_codes_and_error_objects_are_kept_like_metas() {
        let ctx = ParseContext {
            received_at: chrono::Utc::now(),
            max_callback_bytes: 4096,
        };
        let failed = |info: serde_json::Value| {
            let mut body = serde_json::json!({"eventName": "message-status-update", "id": "e1",
                "eventInfo": {"messageId": "wamid.X==", "status": "failed",
                              "createdAt": "2026-11-21T10:00:00Z"}});
            body["eventInfo"]
                .as_object_mut()
                .unwrap()
                .extend(info.as_object().unwrap().clone());
            match parse(body.to_string().as_bytes(), &settings(), ctx)
                .unwrap()
                .remove(0)
            {
                IngestItem::Event(e) => (e.failure_code, e.failure_reason),
                _ => panic!("not an event"),
            }
        };
        assert_eq!(
            failed(serde_json::json!({"failureReason": "Re-engagement message"})),
            (None, Some("Re-engagement message".into()))
        );
        assert_eq!(
            failed(serde_json::json!({"failureReason": "Blocked", "failureCode": 131049})),
            (Some("131049".into()), Some("Blocked".into()))
        );
        assert_eq!(
            failed(serde_json::json!({"failureReason": {"code": 131047,
                "title": "Re-engagement message", "message": "Re-engagement message",
                "error_data": {"details": "More than 24 hours have passed."}}})),
            (
                Some("131047".into()),
                Some("Re-engagement message: More than 24 hours have passed.".into())
            )
        );
        assert_eq!(
            failed(serde_json::json!({"failureReason": null})),
            (None, None)
        );
    }
}
