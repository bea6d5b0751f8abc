//! Botika's WhatsApp flow message (`[targets.botika]`). Each tenant has its own host;
//! authorization: `Bearer <api_token>`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ActionDef, Destination, Endpoint, Origin, Outbound, Request, Spec};
use crate::secret::Secret;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Each Botika tenant has its own host, e.g. `https://waofficial.botika.online`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <api_token>`.
    pub api_token: Secret,
}

impl Destination for Settings {
    const NAME: &'static str = "botika";
    const ACTIONS: &'static [ActionDef] = &[ActionDef {
        name: "botika.send_flow",
        spec: Spec {
            required: &["to", "flow"],
            optional: &["reply_message_id"],
            one_of: &[],
            tables: &["flow"],
        },
        build: send_flow,
        signed: false,
    }];

    fn required(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("base_url", !self.base_url.is_empty()),
            ("api_token", !self.api_token.expose().is_empty()),
        ]
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        vec![("api_token", &self.api_token)]
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }

    fn endpoint(&self, request: &Outbound) -> Endpoint {
        Endpoint {
            url: format!("{}{}", self.base_url.trim_end_matches('/'), request.path),
            authorization: Some(format!("Bearer {}", self.api_token.expose())),
        }
    }
}

fn send_flow(mut p: Map<String, Value>, _: &Origin) -> Result<Request, String> {
    let mut body = Map::new();
    body.insert("to".into(), p.remove("to").unwrap_or_default());
    if let Some(reply) = p.remove("reply_message_id") {
        body.insert("reply_message_id".into(), reply);
    }
    body.insert("type".into(), json!("flow"));
    body.insert("flow".into(), p.remove("flow").unwrap_or_default());
    Ok(Request::new(
        "/api/whatsapp/v1/messages",
        Value::Object(body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::ActionKind;

    #[test]
    fn a_flow_message_goes_to_the_tenant_with_a_bearer_token() {
        let params = json!({"to": "+91", "flow": {"id": "f"}, "reply_message_id": "wamid.R"});
        let out = ActionKind::parse("botika.send_flow")
            .unwrap()
            .build(
                params.as_object().unwrap().clone(),
                &Origin {
                    message_id: "wamid.X==".into(),
                    rule: "r1".into(),
                },
            )
            .unwrap();
        assert_eq!(
            out.body,
            json!({"to": "+91", "reply_message_id": "wamid.R", "type": "flow", "flow": {"id": "f"}})
        );
        let settings = Settings {
            base_url: "https://t.botika.example".into(),
            api_token: Secret::new("t"),
        };
        let endpoint = settings.endpoint(&out);
        assert_eq!(
            endpoint.url,
            "https://t.botika.example/api/whatsapp/v1/messages"
        );
        assert_eq!(endpoint.authorization.as_deref(), Some("Bearer t"));
    }
}
