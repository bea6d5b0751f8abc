//! WhatsApp Cloud API webhooks: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body, app secret)>`
//! over the raw bytes; `entry[].changes[].value.statuses[]` are events (with their `pricing` and
//! `conversation`), `messages[]` replies and `user_preferences[]` opt-outs. `recipient_id` is always a full international
//! number without `+`, so it has an E.164 form even where libphonenumber's metadata does not
//! know the range (Meta's test numbers, `+1 555 01x xxxx`).

use actix_web::http::header::HeaderMap;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    constant_time_eq, error_words, header, parse_json, rejected, text, Fields, ParseContext,
    Refusal, Source,
};
use crate::config::{MetaSettings, ProviderSettings};
use crate::domain::optout::OptOutSource;
use crate::domain::{
    Billing, EventKind, Incoming, IngestItem, MessageId, OptOutItem, Preference, Pricing, Provider,
    Reply,
};

pub struct Meta;

impl Source for Meta {
    const PROVIDER: Provider = Provider::Meta;
    type Settings = MetaSettings;

    fn settings(all: &ProviderSettings) -> &MetaSettings {
        &all.meta
    }

    fn verify(
        settings: &MetaSettings,
        headers: &HeaderMap,
        body: &[u8],
        _: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        verify(header(headers, "x-hub-signature-256"), body, settings)
    }

    fn parse(
        _: &MetaSettings,
        _: &HeaderMap,
        body: &[u8],
        ctx: ParseContext,
    ) -> Result<Vec<IngestItem>, Refusal> {
        parse(body, ctx)
    }
}

/// The subscription handshake: the challenge to echo, or `None` to answer `403`.
pub fn handshake<'a>(
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&'a str>,
    settings: &MetaSettings,
) -> Option<&'a str> {
    let expected = settings.verify_token.expose();
    let token_ok = !expected.is_empty() && constant_time_eq(token?.as_bytes(), expected.as_bytes());
    (mode? == "subscribe" && token_ok).then_some(challenge?)
}

/// Checks `sha256=<hex>` against each configured app secret.
pub fn verify(
    signature: Option<&[u8]>,
    body: &[u8],
    settings: &MetaSettings,
) -> Result<(), Refusal> {
    let header = signature.ok_or(Refusal::Unauthorized("missing X-Hub-Signature-256 header"))?;
    let digest = header
        .strip_prefix(b"sha256=")
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
        .ok_or(Refusal::Unauthorized(
            "malformed X-Hub-Signature-256 header",
        ))?;
    let matched = settings.app_secrets.iter().fold(false, |found, secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(body);
        found | mac.verify_slice(&digest).is_ok()
    });
    if matched {
        Ok(())
    } else {
        Err(Refusal::Unauthorized(
            "invalid X-Hub-Signature-256 signature",
        ))
    }
}

/// `sha256=<hex>` for a body, as Meta would send it (for `flowhook sign` and tests).
pub fn sign(body: &[u8], app_secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn parse(body: &[u8], ctx: ParseContext) -> Result<Vec<IngestItem>, Refusal> {
    let body = parse_json(body)?;
    let Some(entries) = body.get("entry").and_then(Value::as_array) else {
        return Ok(vec![rejected(
            &body,
            "not a WhatsApp Cloud API webhook: entry[] is missing",
        )]);
    };
    let mut items = Vec::new();
    for change in entries.iter().flat_map(|e| {
        e.get("changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }) {
        let value = change.get("value").unwrap_or(&Value::Null);
        if value.get("statuses").is_some_and(|s| !s.is_array()) {
            items.push(rejected(change, "value.statuses is not a list"));
            continue;
        }
        let statuses = value.get("statuses").and_then(Value::as_array);
        let messages = value.get("messages").and_then(Value::as_array);
        let preferences = value.get("user_preferences").and_then(Value::as_array);
        if statuses.is_none() && messages.is_none() && preferences.is_none() {
            items.push(IngestItem::Ignored);
        }
        items.extend(
            preferences
                .into_iter()
                .flatten()
                .map(|preference| parse_preference(preference, ctx)),
        );
        items.extend(
            messages
                .into_iter()
                .flatten()
                .map(|message| parse_message(message, ctx)),
        );
        items.extend(
            statuses
                .into_iter()
                .flatten()
                .map(|status| parse_status(status, ctx)),
        );
    }
    Ok(items)
}

/// One status. A group message's statuses name the member in `recipient_participant_id`; a
/// user addressed by business-scoped user id has an empty `recipient_id` and a
/// `recipient_user_id`. A failure's words are `errors[0]`'s `title`, `message` and
/// `error_data.details`; its `code` is a number.
fn parse_status(raw: &Value, ctx: ParseContext) -> IngestItem {
    let error = raw.pointer("/errors/0");
    let fields = Fields {
        event_id: None,
        message_id: raw.get("id"),
        status: raw.get("status"),
        at: raw.get("timestamp"),
        recipient: text(raw.get("recipient_id")),
        recipient_user_id: text(raw.get("recipient_user_id")),
        participant: text(raw.get("recipient_participant_id")),
        channel: Some("whatsapp".into()),
        failure_code: error.and_then(|e| text(e.get("code"))),
        failure_reason: error.and_then(error_words),
        callback: raw.get("biz_opaque_callback_data"),
        billing: billing(raw),
        international: true,
        ..Default::default()
    };
    fields.into_item(Provider::Meta, EventKind::Status, raw, ctx)
}

/// A marketing preference (`value.user_preferences[]`, field `user_preferences`): `wa_id`
/// stops or resumes (`value`) the `marketing_messages` category at `timestamp`. Meta sends
/// no id: it is made of the user, the choice and the time, so a retried delivery is a
/// duplicate. Another category, or another value, is ignored.
fn parse_preference(raw: &Value, ctx: ParseContext) -> IngestItem {
    if text(raw.get("category")).as_deref() != Some("marketing_messages") {
        return IngestItem::Ignored;
    }
    let value = match text(raw.get("value")).as_deref() {
        Some("stop") => Preference::Stop,
        Some("resume") => Preference::Resume,
        _ => return IngestItem::Ignored,
    };
    let Some(wa_id) = text(raw.get("wa_id")).filter(|w| !w.trim().is_empty()) else {
        return rejected(raw, "a user preference needs its wa_id");
    };
    let at = match super::parse_time(raw.get("timestamp").unwrap_or(&Value::Null)) {
        Ok(at) => at,
        Err(reason) => return rejected(raw, reason),
    };
    IngestItem::OptOut(Box::new(OptOutItem {
        value,
        source: OptOutSource::Meta,
        event_id: format!(
            "user_preferences:{wa_id}:{}:{}",
            value.as_str(),
            at.timestamp()
        ),
        message: None,
        context: None,
        recipient_e164: crate::domain::recipient::international(&wa_id),
        recipient: Some(wa_id),
        provider: Provider::Meta,
        channel: Some("whatsapp".into()),
        at,
        received_at: ctx.received_at,
    }))
}

/// A customer message (`value.messages[]`): a reply to the business message its
/// `context.id` names (a reaction names it in `reaction.message_id`), else to the sender's
/// latest (the store decides). Its text is the body, the button's text or the interactive
/// reply's title; its payload the button's payload or the interactive reply's id.
fn parse_message(raw: &Value, ctx: ParseContext) -> IngestItem {
    let (Some(id), Some(from)) = (text(raw.get("id")), text(raw.get("from"))) else {
        return rejected(raw, "a customer message needs its id and from");
    };
    let at = match super::parse_time(raw.get("timestamp").unwrap_or(&Value::Null)) {
        Ok(at) => at,
        Err(reason) => return rejected(raw, reason),
    };
    let kind = text(raw.get("type")).unwrap_or_else(|| "unknown".into());
    // Taking a reaction back (an empty or missing emoji) says nothing new.
    if kind == "reaction" && text(raw.pointer("/reaction/emoji")).is_none_or(|e| e.is_empty()) {
        return IngestItem::Ignored;
    }
    let interactive = raw
        .pointer("/interactive/button_reply")
        .or_else(|| raw.pointer("/interactive/list_reply"));
    let reply_text = text(raw.pointer("/text/body"))
        .or_else(|| text(raw.pointer("/button/text")))
        .or_else(|| interactive.and_then(|i| text(i.get("title"))))
        .or_else(|| text(raw.pointer("/reaction/emoji")));
    let payload = text(raw.pointer("/button/payload"))
        .or_else(|| interactive.and_then(|i| text(i.get("id"))));
    let context = text(raw.pointer("/context/id"))
        .or_else(|| text(raw.pointer("/reaction/message_id")))
        .and_then(|id| MessageId::parse(&id).ok());
    IngestItem::Reply(Box::new(Incoming {
        reply: Reply {
            message_id: id,
            kind,
            text: reply_text,
            payload,
        },
        context,
        from_e164: crate::domain::recipient::international(&from),
        from,
        provider: Provider::Meta,
        channel: Some("whatsapp".into()),
        at,
        received_at: ctx.received_at,
    }))
}

/// A status's `pricing` and `conversation.id`. Meta's older key `pricing_type` stands in for
/// `type` where that is absent; a `pricing` that is not an object is left out.
fn billing(raw: &Value) -> Option<Box<Billing>> {
    let pricing = raw
        .get("pricing")
        .and_then(Value::as_object)
        .map(|p| Pricing {
            category: text(p.get("category")),
            kind: text(p.get("type")).or_else(|| text(p.get("pricing_type"))),
            billable: p.get("billable").and_then(Value::as_bool),
            pricing_model: text(p.get("pricing_model")),
        });
    Billing {
        pricing,
        conversation_id: text(raw.pointer("/conversation/id")),
    }
    .some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(secrets: &[&str]) -> MetaSettings {
        MetaSettings {
            app_secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            verify_token: Secret::new("tok"),
        }
    }

    #[test]
    fn the_shared_vector_verifies() {
        let vector: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/meta/signature-vector.json"
        ))
        .unwrap();
        let body = vector["body"].as_str().unwrap().as_bytes();
        let header = vector["header"].as_str().unwrap();
        let secret = vector["secret"].as_str().unwrap();
        assert_eq!(sign(body, secret), header);
        assert!(verify(
            Some(header.as_bytes()),
            body,
            &settings(&["rotated", secret])
        )
        .is_ok());
        assert!(verify(Some(header.as_bytes()), b"tampered", &settings(&[secret])).is_err());
        assert!(verify(Some(header.as_bytes()), body, &settings(&["other"])).is_err());
    }

    #[test]
    fn pricing_and_conversation_are_read_with_metas_older_keys() {
        let status = serde_json::json!({
            "pricing": {"pricing_model": "CBP", "category": "utility", "pricing_type": "regular"},
            "conversation": {"id": "c1", "origin": {"type": "utility"}},
        });
        let b = billing(&status).unwrap();
        let p = b.pricing.unwrap();
        assert_eq!(p.kind.as_deref(), Some("regular"));
        assert_eq!((p.billable, p.category.as_deref()), (None, Some("utility")));
        assert_eq!(b.conversation_id.as_deref(), Some("c1"));
        // `type` wins over `pricing_type`; a pricing that is not an object is left out.
        let both =
            serde_json::json!({"pricing": {"type": "free_entry_point", "pricing_type": "regular"}});
        assert_eq!(
            billing(&both).unwrap().pricing.unwrap().kind.as_deref(),
            Some("free_entry_point")
        );
        assert!(billing(&serde_json::json!({"pricing": "regular"})).is_none());
        assert!(billing(&serde_json::json!({})).is_none());
    }

    fn one_message(message: Value) -> IngestItem {
        let ctx = ParseContext {
            received_at: chrono::Utc::now(),
            max_callback_bytes: 4096,
        };
        parse_message(&message, ctx)
    }

    #[test]
    fn customer_messages_read_as_replies_with_their_text_payload_and_context() {
        // pywa tests/data/updates/callback_button.json, "button" (an interactive button reply).
        let interactive = serde_json::json!({
            "context": {"from": "1122334455667", "id": "wamid.xyzxyz"},
            "from": "972987654321", "id": "wamid.REPLY1", "timestamp": "1698266730",
            "type": "interactive",
            "interactive": {"type": "button_reply", "button_reply": {"id": "callback_data", "title": "title"}}
        });
        let IngestItem::Reply(r) = one_message(interactive) else {
            panic!("a reply")
        };
        assert_eq!(r.context.as_ref().map(|c| c.as_str()), Some("wamid.xyzxyz"));
        assert_eq!(
            (
                r.reply.kind.as_str(),
                r.reply.text.as_deref(),
                r.reply.payload.as_deref()
            ),
            ("interactive", Some("title"), Some("callback_data"))
        );
        assert_eq!(r.from_e164.as_deref(), Some("+972987654321"));
        // A forwarded message names no message it answers.
        let forwarded = serde_json::json!({
            "context": {"forwarded": true}, "from": "972987654321", "id": "wamid.F",
            "timestamp": "1697044362", "type": "video", "video": {"caption": "caption"}
        });
        let IngestItem::Reply(r) = one_message(forwarded) else {
            panic!("a reply")
        };
        assert!(r.context.is_none());
        // A reaction answers the message it reacts to; taking it back is ignored.
        let reaction = |emoji: Value| {
            serde_json::json!({"from": "972987654321", "id": "wamid.R", "timestamp": "1697044456",
                "type": "reaction", "reaction": {"message_id": "wamid.yzxyzx=", "emoji": emoji}})
        };
        let IngestItem::Reply(r) = one_message(reaction(Value::from("😮"))) else {
            panic!("a reply")
        };
        assert_eq!(
            r.context.as_ref().map(|c| c.as_str()),
            Some("wamid.yzxyzx=")
        );
        assert!(matches!(
            one_message(reaction(Value::from(""))),
            IngestItem::Ignored
        ));
        // Without its id or sender it is quarantined.
        assert!(matches!(
            one_message(serde_json::json!({"id": "wamid.X", "timestamp": "1"})),
            IngestItem::Rejected { .. }
        ));
    }

    #[test]
    fn malformed_signature_headers_are_refused() {
        for header in [
            &b"sha256="[..],
            b"sha256=zz",
            b"sha1=abcd",
            b"",
            b"0329a06b",
        ] {
            assert!(verify(Some(header), b"test", &settings(&["secret"])).is_err());
        }
        assert!(verify(None, b"test", &settings(&["secret"])).is_err());
    }

    #[test]
    fn the_handshake_echoes_the_challenge_only_for_the_right_token() {
        let s = settings(&[]);
        assert_eq!(
            handshake(Some("subscribe"), Some("tok"), Some("123"), &s),
            Some("123")
        );
        assert_eq!(
            handshake(Some("subscribe"), Some("bad"), Some("123"), &s),
            None
        );
        assert_eq!(
            handshake(Some("unsubscribe"), Some("tok"), Some("123"), &s),
            None
        );
        assert_eq!(handshake(None, Some("tok"), Some("123"), &s), None);
        assert_eq!(
            handshake(
                Some("subscribe"),
                Some(""),
                Some("1"),
                &MetaSettings::default()
            ),
            None
        );
    }
}
