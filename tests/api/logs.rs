//! Logs of the real binary: JSON lines, a request id on every line of a request (and as a
//! response header), and never a secret, an Authorization header or callback data.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;
use crate::process::{free_port, start};

const TARGET_SECRET: &str = "target-secret-Q7x";
const CALLBACK_MARKER: &str = "callback-marker-Q7x";
const LOOKUP_MARKER: &str = "lookup-marker-Q7x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_with_request_ids_and_no_secrets() {
    let mock = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
[store]
path = "{store}"
index_callback_fields = ["order_id"]
[api]
token = "{API_TOKEN}"
[providers.bik]
basic_auth = ["{BIK_KEY}"]
[providers.meta]
app_secrets = ["{META_SECRET}"]
verify_token = "{META_VERIFY_TOKEN}"
[targets.bik]
base_url = "{mock}"
auth_token = "{TARGET_SECRET}"
[log]
level = "debug"
format = "json"
[[rules]]
name = "event"
on = "status"
statuses = ["read"]
action = "bik.send_event"
[rules.params]
event_name = "read"
phone_number = "{{{{recipient}}}}"
event_properties = {{ marker = "{{{{callback.marker}}}}" }}
"#,
            store = dir.path().join("store").display(),
            mock = mock.uri(),
        ),
    )
    .unwrap();
    let log = dir.path().join("flowhook.log");
    let process = start(&config, &address, &log).await;
    let client = reqwest::Client::new();

    let callback = json!({"order_id": LOOKUP_MARKER, "marker": CALLBACK_MARKER});
    let id = "wamid.LOGS==";
    let resp = client
        .post(format!("{address}/webhooks/bik"))
        .header("Authorization", format!("Basic {BIK_KEY}"))
        .header("X-Request-Id", "caller-chosen-id")
        .body(bik_status(id, "read", Utc::now(), &callback))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-request-id"], "caller-chosen-id");
    let refused = client
        .post(format!("{address}/webhooks/bik"))
        .header("Authorization", format!("Basic {BIK_KEY}-wrong"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let generated = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 16);
    let body = r#"{"entry":[]}"#;
    let signature = flowhook::providers::meta::sign(body.as_bytes(), META_SECRET);
    client
        .post(format!("{address}/webhooks/meta"))
        .header("X-Hub-Signature-256", signature.clone())
        .body(body)
        .send()
        .await
        .unwrap();
    client
        .get(format!(
            "{address}/webhooks/meta?hub.mode=subscribe&hub.verify_token={META_VERIFY_TOKEN}&hub.challenge=1"
        ))
        .send()
        .await
        .unwrap();
    let lookup = client
        .get(format!(
            "{address}/v1/messages?callback.order_id={LOOKUP_MARKER}"
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status().as_u16(), 200);
    // The follow-up carries the target credential and the callback value.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "follow-up never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(process);

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        API_TOKEN,
        BIK_KEY,
        META_SECRET,
        META_VERIFY_TOKEN,
        TARGET_SECRET,
        CALLBACK_MARKER,
        LOOKUP_MARKER,
        signature.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in the log:\n{text}"
        );
    }
    assert!(!text.to_ascii_lowercase().contains("authorization:"));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    let of_request = |rid: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == rid)
            .collect()
    };
    // A stored webhook writes one line at info: the access line, with what was stored.
    let at_info = |rid: &str| -> Vec<&Value> {
        of_request(rid)
            .into_iter()
            .filter(|l| l["level"] == "INFO")
            .collect()
    };
    let stored = at_info("caller-chosen-id");
    assert!(
        matches!(stored[..], [line] if line["message"] == "request done"
            && line["status"] == 200
            && line["provider"] == "bik"
            && line["accepted"] == 1
            && line["duplicates"] == 0
            && line["ignored"] == 0
            && line["rejected"] == 0),
        "lines of the request at info: {stored:#?}"
    );
    let refusal = of_request(&generated);
    assert!(refusal.iter().any(|l| l["message"] == "webhook refused"));
    assert!(
        matches!(at_info(&generated)[..], [line] if line["status"] == 401
            && line.get("provider").is_none()),
        "lines of the refused request: {refusal:#?}"
    );
    assert!(lines.iter().any(|l| l["message"] == "follow-up delivered"));
}
