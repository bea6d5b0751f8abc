//! The six follow-up actions: which params each takes, and the exact request each makes
//! (BIK's, Engati's and Botika's public API references). Credentials are not part of a request as stored: the dispatcher adds
//! them from `[targets.*]` when it sends, so rotating a key needs no rewrite of the outbox.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::template::text_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActionKind {
    #[serde(rename = "bik.initiate_flow")]
    BikInitiateFlow,
    #[serde(rename = "bik.send_event")]
    BikSendEvent,
    #[serde(rename = "bik.send_message")]
    BikSendMessage,
    #[serde(rename = "engati.trigger_flow")]
    EngatiTriggerFlow,
    #[serde(rename = "botika.send_flow")]
    BotikaSendFlow,
    #[serde(rename = "http.post")]
    HttpPost,
}

/// Where an action's request goes; each has its own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Bik,
    Engati,
    Botika,
    Http,
}

impl Target {
    pub const ALL: [Target; 4] = [Self::Bik, Self::Engati, Self::Botika, Self::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bik => "bik",
            Self::Engati => "engati",
            Self::Botika => "botika",
            Self::Http => "http",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// Which params an action takes.
pub struct Spec {
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    /// At least one of these must be set.
    pub one_of: &'static [&'static str],
    /// Params that must be tables (TOML) / objects.
    pub tables: &'static [&'static str],
}

impl ActionKind {
    pub const ALL: [ActionKind; 6] = [
        Self::BikInitiateFlow,
        Self::BikSendEvent,
        Self::BikSendMessage,
        Self::EngatiTriggerFlow,
        Self::BotikaSendFlow,
        Self::HttpPost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BikInitiateFlow => "bik.initiate_flow",
            Self::BikSendEvent => "bik.send_event",
            Self::BikSendMessage => "bik.send_message",
            Self::EngatiTriggerFlow => "engati.trigger_flow",
            Self::BotikaSendFlow => "botika.send_flow",
            Self::HttpPost => "http.post",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    pub fn target(self) -> Target {
        match self {
            Self::BikInitiateFlow | Self::BikSendEvent | Self::BikSendMessage => Target::Bik,
            Self::EngatiTriggerFlow => Target::Engati,
            Self::BotikaSendFlow => Target::Botika,
            Self::HttpPost => Target::Http,
        }
    }

    pub fn spec(self) -> Spec {
        match self {
            Self::BikInitiateFlow => Spec {
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
            Self::BikSendEvent => Spec {
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
            Self::BikSendMessage => Spec {
                required: &["medium", "contact_identifier", "type", "payload"],
                optional: &["business_phone_number", "callback_data"],
                one_of: &[],
                tables: &["payload", "callback_data"],
            },
            Self::EngatiTriggerFlow => Spec {
                required: &["flow_key", "channel", "phone_no"],
                optional: &["attributes"],
                one_of: &[],
                tables: &["attributes"],
            },
            Self::BotikaSendFlow => Spec {
                required: &["to", "flow"],
                optional: &["reply_message_id"],
                one_of: &[],
                tables: &["flow"],
            },
            Self::HttpPost => Spec {
                required: &["url", "body"],
                optional: &["headers", "secret"],
                one_of: &[],
                tables: &["body", "headers"],
            },
        }
    }

    /// Turns rendered params into the request. `Err` says why no valid request can be made
    /// (the action is then recorded as skipped with that reason).
    pub fn build(self, params: Map<String, Value>, origin: &Origin) -> Result<Outbound, String> {
        let mut p = params;
        let (path, body, headers) = match self {
            Self::BikInitiateFlow => {
                if p.contains_key("carry_payload") {
                    let carry = string_lists(take_table(&mut p, "carry_payload")?);
                    p.insert("carry_payload".into(), carry);
                }
                (
                    "/integrations/bikPlatformFunctions-initiateFlow".to_owned(),
                    camel_object(p),
                    Vec::new(),
                )
            }
            Self::BikSendEvent => (
                "/integrations/bikPlatformFunctions-events/sendEvent".to_owned(),
                json!({ "event": camel_object(p) }),
                Vec::new(),
            ),
            Self::BikSendMessage => {
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
                (
                    "/integrations/bikPlatformFunctions-messages/v2/sendMessage".to_owned(),
                    camel_object(p),
                    Vec::new(),
                )
            }
            Self::EngatiTriggerFlow => {
                let flow_key = p
                    .remove("flow_key")
                    .map(|v| text_of(&v))
                    .unwrap_or_default();
                if flow_key.is_empty() {
                    return Err("flow_key is empty".into());
                }
                let mut body = Map::new();
                body.insert(
                    "user.channel".into(),
                    p.remove("channel").unwrap_or_default(),
                );
                body.insert(
                    "user.phone_no".into(),
                    p.remove("phone_no").unwrap_or_default(),
                );
                body.extend(take_table(&mut p, "attributes")?);
                // The flow key is the last path segment; the dispatcher puts the rest in front.
                (path_segment(&flow_key), Value::Object(body), Vec::new())
            }
            Self::BotikaSendFlow => {
                let mut body = Map::new();
                body.insert("to".into(), p.remove("to").unwrap_or_default());
                if let Some(reply) = p.remove("reply_message_id") {
                    body.insert("reply_message_id".into(), reply);
                }
                body.insert("type".into(), json!("flow"));
                body.insert("flow".into(), p.remove("flow").unwrap_or_default());
                (
                    "/api/whatsapp/v1/messages".to_owned(),
                    Value::Object(body),
                    Vec::new(),
                )
            }
            Self::HttpPost => {
                let url = p.remove("url").map(|v| text_of(&v)).unwrap_or_default();
                if !crate::config::is_http_url(&url) {
                    return Err(format!("url {url:?} is not an http(s) URL"));
                }
                let headers = take_table(&mut p, "headers")?
                    .into_iter()
                    .map(|(k, v)| (k, text_of(&v)))
                    .collect();
                (url, p.remove("body").unwrap_or_default(), headers)
            }
        };
        Ok(Outbound {
            target: self.target(),
            path,
            body,
            headers,
        })
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused an action: the message and the rule.
pub struct Origin {
    pub message_id: String,
    pub rule: String,
}

/// A request as the outbox keeps it, without credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    pub target: Target,
    /// Appended to the target's base URL; for Engati, the flow key; for `http.post`, the URL.
    pub path: String,
    pub body: Value,
    /// Extra headers (`http.post` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// Characters escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `snake_case` params become the request's `camelCase` fields; nested values pass through.
fn camel_object(params: Map<String, Value>) -> Value {
    Value::Object(params.into_iter().map(|(k, v)| (camel(&k), v)).collect())
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Percent-encodes one URL path segment.
pub(crate) fn path_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// Removes a table param: empty when absent, an error when it is not a table (check-config
/// refuses that, so only a bug can get here).
fn take_table(params: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>, String> {
    match params.remove(key) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(format!("{key} must be a table")),
    }
}

/// BIK's `carryPayload` is `{key: [string]}`: a single value becomes a one-element list and
/// numbers and booleans become their text.
fn string_lists(map: Map<String, Value>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(k, v)| {
                let list = match v {
                    Value::Array(items) => items.iter().map(|i| json!(text_of(i))).collect(),
                    other => vec![json!(text_of(&other))],
                };
                (k, Value::Array(list))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            message_id: "wamid.X==".into(),
            rule: "r1".into(),
        }
    }

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn initiate_flow_is_camel_case_with_string_lists() {
        let out = ActionKind::BikInitiateFlow
            .build(
                params(
                    json!({"medium": "whatsapp", "flow_id": "f", "phone_number": "+91",
                    "carry_payload": {"order_id": ["A1"], "qty": 2}}),
                ),
                &origin(),
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
        let out = ActionKind::BikSendMessage
            .build(
                params(
                    json!({"medium": "whatsapp", "contact_identifier": "+91", "type": "text",
                    "payload": {"text": "hi"}, "callback_data": {"campaign": "c"}}),
                ),
                &origin(),
            )
            .unwrap();
        assert_eq!(
            out.body["callbackData"],
            json!(r#"{"campaign":"c","parent_message_id":"wamid.X==","rule":"r1"}"#)
        );
        let long = "x".repeat(1100);
        let error = ActionKind::BikSendMessage
            .build(
                params(
                    json!({"medium": "whatsapp", "contact_identifier": "+91", "type": "text",
                    "payload": {}, "callback_data": {"note": long}}),
                ),
                &origin(),
            )
            .unwrap_err();
        assert!(error.contains("1024"), "{error}");
    }

    #[test]
    fn engati_puts_user_fields_first_and_merges_attributes() {
        let out = ActionKind::EngatiTriggerFlow
            .build(
                params(
                    json!({"flow_key": "re engage", "channel": "whatsapp", "phone_no": "+91",
                    "attributes": {"order_id": "A1"}}),
                ),
                &origin(),
            )
            .unwrap();
        assert_eq!(out.path, "re%20engage");
        assert_eq!(
            serde_json::to_string(&out.body).unwrap(),
            r#"{"user.channel":"whatsapp","user.phone_no":"+91","order_id":"A1"}"#
        );
    }
}
