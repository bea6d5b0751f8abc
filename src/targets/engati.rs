//! Engati's API trigger (`[targets.engati]`): start a bot flow for a user. The URL names the
//! customer, the bot and the flow; authorization: `Basic <api_key>`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::params::{path_segment, take_table, text_of};
use super::{ActionDef, Destination, Endpoint, Origin, Outbound, Request, Spec};
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub base_url: String,
    /// All digits as Engati issues them, so also taken when the environment makes a number
    /// of it.
    #[serde(deserialize_with = "crate::secret::text")]
    pub customer_id: String,
    #[serde(deserialize_with = "crate::secret::text")]
    pub bot_key: String,
    /// Sent as `Authorization: Basic <api_key>`.
    pub api_key: Secret,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base_url: "https://api.engati.ai".into(),
            customer_id: String::new(),
            bot_key: String::new(),
            api_key: Secret::default(),
        }
    }
}

impl Destination for Settings {
    const NAME: &'static str = "engati";
    const ACTIONS: &'static [ActionDef] = &[ActionDef {
        name: "engati.trigger_flow",
        spec: Spec {
            required: &["flow_key", "channel", "phone_no"],
            optional: &["attributes"],
            one_of: &[],
            tables: &["attributes"],
        },
        build: trigger_flow,
        signed: false,
    }];

    fn required(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("base_url", !self.base_url.is_empty()),
            ("customer_id", !self.customer_id.is_empty()),
            ("bot_key", !self.bot_key.is_empty()),
            ("api_key", !self.api_key.expose().is_empty()),
        ]
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        vec![("api_key", &self.api_key)]
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }

    /// The stored path is the (encoded) flow key; the rest comes from today's settings.
    fn endpoint(&self, request: &Outbound) -> Endpoint {
        Endpoint {
            url: format!(
                "{}/bot-api/v2.0/customer/{}/bot/{}/flow/{}",
                self.base_url.trim_end_matches('/'),
                path_segment(&self.customer_id),
                path_segment(&self.bot_key),
                request.path
            ),
            authorization: Some(format!("Basic {}", self.api_key.expose())),
        }
    }
}

/// The body's `user.*` fields first, then the attributes.
fn trigger_flow(mut p: Map<String, Value>, _: &Origin) -> Result<Request, String> {
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
    Ok(Request::new(path_segment(&flow_key), Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::targets::ActionKind;

    #[test]
    fn engati_puts_user_fields_first_and_merges_attributes() {
        let params = json!({"flow_key": "re engage", "channel": "whatsapp", "phone_no": "+91",
            "attributes": {"order_id": "A1"}});
        let out = ActionKind::parse("engati.trigger_flow")
            .unwrap()
            .build(
                params.as_object().unwrap().clone(),
                &Origin {
                    message_id: "wamid.X==".into(),
                    rule: "r1".into(),
                },
            )
            .unwrap();
        assert_eq!(out.path, "re%20engage");
        assert_eq!(
            serde_json::to_string(&out.body).unwrap(),
            r#"{"user.channel":"whatsapp","user.phone_no":"+91","order_id":"A1"}"#
        );
        let settings = Settings {
            customer_id: "c 1".into(),
            bot_key: "b".into(),
            api_key: Secret::new("k"),
            ..Settings::default()
        };
        let endpoint = settings.endpoint(&out);
        assert_eq!(
            endpoint.url,
            "https://api.engati.ai/bot-api/v2.0/customer/c%201/bot/b/flow/re%20engage"
        );
        assert_eq!(endpoint.authorization.as_deref(), Some("Basic k"));
    }
}
