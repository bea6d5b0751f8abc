//! BIK's platform functions (`[targets.bik]`): initiate a flow, send an event, send a
//! message. Authorization: `Basic <auth_token>`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::params::{camel_object, string_lists, take_table};
use super::{ActionDef, Destination, Endpoint, Origin, Outbound, Request, Spec};
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub base_url: String,
    /// Sent as `Authorization: Basic <auth_token>`.
    pub auth_token: Secret,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base_url: "https://bikapi.bikayi.app".into(),
            auth_token: Secret::default(),
        }
    }
}

impl Destination for Settings {
    const NAME: &'static str = "bik";
    const ACTIONS: &'static [ActionDef] = &[
        ActionDef {
            name: "bik.initiate_flow",
            spec: Spec {
                required: &["medium", "flow_id"],
                optional: &[
                    "phone_number",
                    "email",
                    "name",
                    "node_name",
                    "business_phone_number",
                    "session_id",
                    "carry_payload",
                    "payload",
                ],
                one_of: &["phone_number", "email"],
                tables: &["carry_payload", "payload"],
            },
            build: initiate_flow,
            signed: false,
        },
        ActionDef {
            name: "bik.send_event",
            spec: Spec {
                required: &["event_name", "event_properties"],
                optional: &[
                    "phone_number",
                    "email",
                    "name",
                    "created_at",
                    "is_migration",
                ],
                one_of: &["phone_number", "email"],
                tables: &["event_properties"],
            },
            build: send_event,
            signed: false,
        },
        ActionDef {
            name: "bik.send_message",
            spec: Spec {
                required: &["medium", "contact_identifier", "type", "payload"],
                optional: &["business_phone_number", "callback_data"],
                one_of: &[],
                tables: &["payload", "callback_data"],
            },
            build: send_message,
            signed: false,
        },
    ];

    fn required(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("base_url", !self.base_url.is_empty()),
            ("auth_token", !self.auth_token.expose().is_empty()),
        ]
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        vec![("auth_token", &self.auth_token)]
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }

    fn endpoint(&self, request: &Outbound) -> Endpoint {
        Endpoint {
            url: format!("{}{}", self.base_url.trim_end_matches('/'), request.path),
            authorization: Some(format!("Basic {}", self.auth_token.expose())),
        }
    }
}

/// `carry_payload` is `{key: [string]}` for BIK.
fn initiate_flow(mut p: Map<String, Value>, _: &Origin) -> Result<Request, String> {
    if p.contains_key("carry_payload") {
        let carry = string_lists(take_table(&mut p, "carry_payload")?);
        p.insert("carry_payload".into(), carry);
    }
    Ok(Request::new(
        "/integrations/bikPlatformFunctions-initiateFlow",
        camel_object(p),
    ))
}

fn send_event(p: Map<String, Value>, _: &Origin) -> Result<Request, String> {
    Ok(Request::new(
        "/integrations/bikPlatformFunctions-events/sendEvent",
        json!({ "event": camel_object(p) }),
    ))
}

/// The message's `callbackData` chains back: it names the message and rule that sent it, so
/// its own status updates can be traced. BIK takes at most 1,024 characters.
fn send_message(mut p: Map<String, Value>, origin: &Origin) -> Result<Request, String> {
    let mut callback = take_table(&mut p, "callback_data")?;
    callback.insert(
        "parent_message_id".into(),
        Value::String(origin.message_id.clone()),
    );
    callback.insert("rule".into(), Value::String(origin.rule.clone()));
    let text = Value::Object(callback).to_string();
    let chars = text.chars().count();
    if chars > 1024 {
        return Err(format!(
            "callbackData would be {chars} characters; BIK takes at most 1024"
        ));
    }
    p.insert("callback_data".into(), Value::String(text));
    Ok(Request::new(
        "/integrations/bikPlatformFunctions-messages/v2/sendMessage",
        camel_object(p),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::ActionKind;

    fn origin() -> Origin {
        Origin {
            message_id: "wamid.X==".into(),
            rule: "r1".into(),
        }
    }

    fn build(action: &str, params: Value) -> Result<Outbound, String> {
        ActionKind::parse(action)
            .unwrap()
            .build(params.as_object().unwrap().clone(), &origin())
    }

    #[test]
    fn initiate_flow_is_camel_case_with_string_lists() {
        let out = build(
            "bik.initiate_flow",
            json!({"medium": "whatsapp", "flow_id": "f", "phone_number": "+91",
                "carry_payload": {"order_id": ["A1"], "qty": 2}}),
        )
        .unwrap();
        assert_eq!(out.path, "/integrations/bikPlatformFunctions-initiateFlow");
        assert_eq!(
            out.body,
            json!({"medium": "whatsapp", "flowId": "f", "phoneNumber": "+91",
                "carryPayload": {"order_id": ["A1"], "qty": ["2"]}})
        );
    }

    #[test]
    fn send_message_chains_back_and_respects_the_1024_limit() {
        let out = build(
            "bik.send_message",
            json!({"medium": "whatsapp", "contact_identifier": "+91", "type": "text",
                "payload": {"text": "hi"}, "callback_data": {"campaign": "c"}}),
        )
        .unwrap();
        assert_eq!(
            out.body["callbackData"],
            json!(r#"{"campaign":"c","parent_message_id":"wamid.X==","rule":"r1"}"#)
        );
        let long = "x".repeat(1100);
        let error = build(
            "bik.send_message",
            json!({"medium": "whatsapp", "contact_identifier": "+91", "type": "text",
                "payload": {}, "callback_data": {"note": long}}),
        )
        .unwrap_err();
        assert!(error.contains("1024"), "{error}");
    }

    #[test]
    fn calls_go_to_the_base_url_with_basic_auth() {
        let settings = Settings {
            base_url: "https://bik.example/".into(),
            auth_token: Secret::new("k"),
        };
        let out = build(
            "bik.send_event",
            json!({"event_name": "e", "event_properties": {}, "email": "a@b.c"}),
        )
        .unwrap();
        let endpoint = settings.endpoint(&out);
        assert_eq!(
            endpoint.url,
            "https://bik.example/integrations/bikPlatformFunctions-events/sendEvent"
        );
        assert_eq!(endpoint.authorization.as_deref(), Some("Basic k"));
    }
}
