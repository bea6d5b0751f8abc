//! `/openapi.json` parses as OpenAPI 3, documents exactly the routes the app serves, and
//! every schema reference in it resolves.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;

/// Every route the app serves (method, path template).
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/webhooks/bik"),
    ("GET", "/webhooks/meta"),
    ("POST", "/webhooks/meta"),
    ("POST", "/webhooks/generic"),
    ("GET", "/v1/messages"),
    ("GET", "/v1/messages/{message_id}"),
    ("GET", "/v1/recipients/{recipient}"),
    ("GET", "/v1/rejected"),
    ("GET", "/v1/actions"),
    ("GET", "/v1/stats"),
    ("POST", "/v1/actions/{id}/retry"),
    ("POST", "/v1/actions/retry"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/ui"),
    ("GET", "/ui/app.js"),
    ("GET", "/ui/app.css"),
];

fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_openapi_3_and_covers_every_route() {
    let app = spawn_app().await;
    let resp = app.get_public("/openapi.json").await;
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    // An independent OpenAPI 3.1 model (the oas3 crate), not the generator's own types.
    let spec = oas3::from_json(&text).expect("parses as an OpenAPI 3.1 document");
    assert_eq!(spec.info.title, "flowhook");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);

    // Each route in the list is served: the router neither 404s nor 405s it.
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{message_id}", "wamid.X")
            .replace("{id}", "act_x");
        let url = format!("{}{concrete}", app.address);
        let resp = match *method {
            "GET" => app.client.get(url),
            _ => app.client.post(url),
        }
        .send()
        .await
        .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("no such route"),
            "{method} {path} is documented but not served ({status} {body})"
        );
    }

    // Every reference resolves; every security requirement names a defined scheme.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema ref");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "unknown scheme {name}");
                }
            }
        }
    }
    let bearer: Vec<&String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/"))
        .map(|(p, _)| p)
        .collect();
    for path in bearer {
        for (_, op) in doc["paths"][path].as_object().unwrap() {
            assert_eq!(
                op["security"][0]["api_token"],
                serde_json::json!([]),
                "{path}"
            );
        }
    }
}

/// The property names a component schema documents.
fn documented_fields(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"))
        .keys()
        .cloned()
        .collect()
}

fn served_fields(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn the_documented_message_event_and_failure_fields_are_exactly_what_is_served() {
    let app = spawn_app().await;
    let doc: Value = app.get_public("/openapi.json").await.json().await.unwrap();
    counts(
        app.post_meta(fixture("meta/statuses-failed-errors.json"))
            .await,
    )
    .await;
    let id = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSRkFJTDQ3REVGNDU2R0hJNzg5AA==";
    let m = app.message(id).await.unwrap();
    assert_eq!(served_fields(&m), documented_fields(&doc, "MessageView"));
    assert_eq!(
        served_fields(&m["events"][0]),
        documented_fields(&doc, "EventView")
    );
    for field in [
        "recipient_e164",
        "recipient_user_id",
        "failure_code",
        "pricing",
        "conversation_id",
    ] {
        assert!(m.get(field).is_some(), "{field}");
    }
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    assert_eq!(
        served_fields(&stats["groups"][0]["top_failure_reasons"][0]),
        documented_fields(&doc, "FailureReason")
    );

    // Pricing, and a campaign's cost.
    counts(
        app.post_meta(fixture("meta/statuses-pricing-pmp.json"))
            .await,
    )
    .await;
    let priced = app
        .message("wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSUE1QMTIzREVGNDU2R0hJNzg5AA==")
        .await
        .unwrap();
    assert_eq!(
        served_fields(&priced["pricing"]),
        documented_fields(&doc, "Pricing")
    );
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    let group = &stats["groups"][0];
    assert_eq!(served_fields(group), documented_fields(&doc, "Group"));
    assert_eq!(
        served_fields(&group["cost"]),
        documented_fields(&doc, "Cost")
    );
    let sale = crate::helpers::group(&stats, "summer_sale");
    assert_eq!(
        served_fields(&sale["cost"]["by_category"]["marketing"]),
        documented_fields(&doc, "CategoryCost")
    );
}
