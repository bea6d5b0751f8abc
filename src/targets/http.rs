//! Plain HTTP (`[targets.http]`, limits only): `http.post` sends the rule's body to the
//! rule's URL with its headers, signed Standard Webhooks style when the rule has a `secret`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::params::{is_http_url, take_table, text_of};
use super::{ActionDef, Destination, Endpoint, Origin, Outbound, Request, Spec};
use crate::secret::Secret;

/// No keys of its own: the URL is each rule's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {}

impl Destination for Settings {
    const NAME: &'static str = "http";
    const ACTIONS: &'static [ActionDef] = &[ActionDef {
        name: "http.post",
        spec: Spec {
            required: &["url", "body"],
            optional: &["headers", "secret"],
            one_of: &[],
            tables: &["body", "headers"],
        },
        build: post,
        signed: true,
    }];

    fn required(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        Vec::new()
    }

    fn base_url(&self) -> Option<&str> {
        None
    }

    /// The stored path is the whole URL.
    fn endpoint(&self, request: &Outbound) -> Endpoint {
        Endpoint {
            url: request.path.clone(),
            authorization: None,
        }
    }
}

fn post(mut p: Map<String, Value>, _: &Origin) -> Result<Request, String> {
    let url = p.remove("url").map(|v| text_of(&v)).unwrap_or_default();
    if !is_http_url(&url) {
        return Err(format!("url {url:?} is not an http(s) URL"));
    }
    let headers = take_table(&mut p, "headers")?
        .into_iter()
        .map(|(k, v)| (k, text_of(&v)))
        .collect();
    Ok(Request {
        path: url,
        body: p.remove("body").unwrap_or_default(),
        headers,
    })
}
