//! Forwarding (contract section 9): every accepted event that matches a `[[forwards]]` entry
//! is delivered to its URL, signed with Standard Webhooks, through the outbox; a duplicate
//! delivers nothing; the body carries the message's state after the event.

use std::time::Duration;

use chrono::Utc;
use flowhook::config::{ForwardEvent, ForwardSettings, Secret};
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::actions::all_in;
use crate::helpers::*;

/// `whsec_` + base64("forward-secret-for-tests!").
const FORWARD_SECRET: &str = "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ==";

pub fn forward(name: &str, url: &str) -> ForwardSettings {
    ForwardSettings {
        name: name.into(),
        url: url.into(),
        secret: Some(Secret::new(FORWARD_SECRET)),
        events: ForwardEvent::all(),
        when: Default::default(),
        timeout_ms: 5_000,
        max_in_flight: 8,
        rate_per_second: 0.0,
    }
}

async fn consumer(status: u16) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&mock)
        .await;
    mock
}

/// The requests `mock` received on `path`, once there are `n` (panics after 10 s).
async fn received(mock: &MockServer, path: &str, n: usize) -> Vec<Request> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Request> = mock
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.url.path() == path)
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} got {} of {n} deliveries",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(r: &'a Request, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Checks a delivery's signature as flowhook's own generic route does.
fn verify(r: &Request) {
    let id = header(r, "webhook-id");
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap();
    assert!((Utc::now().timestamp() - ts).abs() < 60);
    let expected = sign_generic(
        FORWARD_SECRET,
        id,
        ts,
        std::str::from_utf8(&r.body).unwrap(),
    );
    assert_eq!(header(r, "webhook-signature"), expected);
}

#[tokio::test]
async fn each_accepted_event_is_delivered_once_per_forward_signed_with_the_state_after_it() {
    let mock = consumer(200).await;
    let m = mock.uri();
    let app = spawn_app_with(|s| {
        s.forwards = vec![forward("crm", &format!("{m}/crm")), {
            let mut only_statuses = forward("warehouse", &format!("{m}/warehouse"));
            only_statuses.events = vec![ForwardEvent::Status];
            only_statuses.when = [("callback.campaign".to_owned(), json!("spring"))].into();
            only_statuses
        }];
    })
    .await;
    let now = Utc::now();
    let spring = json!({"order_id": "O-1", "campaign": "spring"});
    // Out of order: read, then delivered.
    app.post_bik_status("wamid.FWD==", "read", now, &spring)
        .await;
    app.post_bik_status(
        "wamid.FWD==",
        "delivered",
        now - chrono::Duration::seconds(5),
        &spring,
    )
    .await;
    // A duplicate delivers nothing.
    assert_eq!(
        app.post_bik_status("wamid.FWD==", "read", now, &spring)
            .await,
        (0, 1, 0, 0)
    );
    // Another campaign: the warehouse forward's `when` leaves it out.
    app.post_bik_status("wamid.OTHER==", "sent", now, &json!({"campaign": "autumn"}))
        .await;

    let crm = received(&mock, "/crm", 3).await;
    let warehouse = received(&mock, "/warehouse", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&mock, "/crm", 0).await.len(), 3, "once each");
    assert_eq!(received(&mock, "/warehouse", 0).await.len(), 2);
    for r in crm.iter().chain(&warehouse) {
        verify(r);
    }
    let delivered = crm
        .iter()
        .map(body)
        .find(|b| b["status"] == "delivered")
        .unwrap();
    assert_eq!(
        delivered,
        json!({
            "type": "message.status", "message_id": "wamid.FWD==", "status": "delivered",
            "timestamp": crate::helpers::rfc3339_millis(now - chrono::Duration::seconds(5)),
            "recipient": "+919090909090", "recipient_e164": "+919090909090",
            "channel": "whatsapp", "provider": "bik",
            "event_id": delivered["event_id"].clone(),
            "callback_data": {"order_id": "O-1", "campaign": "spring"},
            "failure_code": null, "failure_reason": null, "url": null, "reply": null, "opt_out": null,
            // The message was read before this delivered status came: it stays read.
            "message": {"status": "read", "sent_at": null,
                "delivered_at": crate::helpers::rfc3339_millis(now - chrono::Duration::seconds(5)),
                "read_at": crate::helpers::rfc3339_millis(now), "failed_at": null, "replied_at": null}
        })
    );
    assert!(delivered["event_id"]
        .as_str()
        .unwrap()
        .starts_with("wamid.FWD==-delivered"));
    // One webhook-id per event and forward.
    let mut ids: Vec<&str> = crm.iter().map(|r| header(r, "webhook-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    // Delivered at the first attempt: the embedded store keeps no action for it; Postgres
    // lists it as delivered, under the forward's name.
    let listed = app.get_json("/v1/actions?rule=crm").await;
    let listed = listed["actions"].as_array().unwrap();
    let expected = if postgres_database().await.is_some() {
        3
    } else {
        0
    };
    assert_eq!(listed.len(), expected, "{listed:?}");
    for a in listed {
        assert_eq!(
            (&a["action"], &a["state"]),
            (&json!("forward"), &json!("delivered"))
        );
        assert!(ids.contains(&a["id"].as_str().unwrap()));
    }
    let metrics = app.get_public("/metrics").await.text().await.unwrap();
    let metrics = parse_metrics(&metrics);
    let delivered_to = |rule: &str| {
        metrics
            .iter()
            .filter(|(k, _)| {
                k.starts_with("flowhook_actions_total{")
                    && k.contains(r#"action="forward""#)
                    && k.contains(r#"outcome="delivered""#)
                    && k.contains(&format!(r#"rule="{rule}""#))
            })
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    // The recorder is process-wide: other tests' forwards have other names.
    assert!(delivered_to("crm") >= 3.0 && delivered_to("warehouse") >= 2.0);
}

#[tokio::test]
async fn replies_and_opt_outs_are_forwarded_with_their_own_types() {
    let mock = consumer(200).await;
    let m = mock.uri();
    let app = spawn_app_with(|s| s.forwards = vec![forward("crm", &format!("{m}/crm"))]).await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    app.post_meta(fixture("meta/message-button-reply.json"))
        .await;
    app.post_meta(fixture("meta/user-preferences.json")).await;
    let got = received(&mock, "/crm", 4).await;
    let types: Vec<String> = got
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap().to_owned())
        .collect();
    for t in ["message.status", "message.reply", "recipient.opt_out"] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    let reply = got
        .iter()
        .map(body)
        .find(|b| b["type"] == "message.reply" && b["reply"]["payload"] == "BUY_NOW")
        .unwrap();
    assert_eq!(reply["message"]["replied_at"], "2026-11-21T10:10:00Z");
    let stop = got
        .iter()
        .map(body)
        .find(|b| b["type"] == "recipient.opt_out")
        .unwrap();
    assert_eq!(stop["opt_out"], json!({"value": "stop", "source": "meta"}));
    assert_eq!(stop["recipient_e164"], "+919090909090");
}

#[tokio::test]
async fn a_consumer_that_fails_gets_retries_then_dead_then_a_retry_by_hand_with_the_same_id() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&mock)
        .await;
    let m = mock.uri();
    let app = spawn_app_with(|s| {
        s.forwards = vec![forward("crm", &format!("{m}/crm"))];
        s.dispatch.retry_schedule_seconds = vec![0.05];
        s.dispatch.jitter = 0.0;
    })
    .await;
    app.post_bik_status("wamid.DOWN==", "sent", Utc::now(), &json!({}))
        .await;
    let dead = app
        .wait_for_actions("wamid.DOWN==", all_in("dead", 1))
        .await;
    assert_eq!(dead[0]["attempts"], 2);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let id = dead[0]["id"].as_str().unwrap();
    let resp = app
        .post_api(&format!("/v1/actions/{id}/retry"), json!({}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    app.wait_for_actions("wamid.DOWN==", all_in("delivered", 1))
        .await;
    let got = received(&mock, "/crm", 3).await;
    for r in &got {
        assert_eq!(header(r, "webhook-id"), id, "the same id on every attempt");
        verify(r);
    }
}

#[tokio::test]
async fn a_forward_to_another_flowhook_leaves_it_with_the_same_state() {
    // The second flowhook's generic route takes the forward's key.
    let downstream = spawn_app_with(|s| {
        s.providers.generic.secrets = vec![Secret::new(FORWARD_SECRET)];
    })
    .await;
    let url = format!("{}/webhooks/generic", downstream.address);
    let upstream = spawn_app_with(|s| s.forwards = vec![forward("replica", &url)]).await;
    let now = Utc::now();
    let data = json!({"order_id": "O-9", "campaign": "spring"});
    // Out of order and with a duplicate: read, sent, delivered, read again, and a click.
    for (status, ago) in [("read", 0), ("sent", 20), ("delivered", 10), ("read", 0)] {
        upstream
            .post_bik_status(
                "wamid.REPL==",
                status,
                now - chrono::Duration::seconds(ago),
                &data,
            )
            .await;
    }
    upstream
        .post_bik(fixture("bik/link-click.json").replace(
            "wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==",
            "wamid.REPL==",
        ))
        .await;
    // Four distinct events upstream (the repeated read is a duplicate): wait for all four
    // downstream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let down = loop {
        match downstream.message("wamid.REPL==").await {
            Some(m) if m["events_total"] == 4 => break m,
            other => {
                assert!(std::time::Instant::now() < deadline, "{other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let up = upstream.message("wamid.REPL==").await.unwrap();
    assert_eq!(up["events_total"], down["events_total"]);
    for field in [
        "status",
        "sent_at",
        "delivered_at",
        "read_at",
        "callback_data",
        "recipient",
        "recipient_e164",
        "clicks",
    ] {
        assert_eq!(up[field], down[field], "{field}");
    }
    assert_eq!(down["status"], "read");
    assert_eq!(down["provider"], "generic");
    // The click's callback data is the earliest event's, on both sides: found by it there.
    let found = downstream
        .get_json("/v1/messages?callback.order_id=ORD123")
        .await;
    assert_eq!(
        found["messages"].as_array().unwrap().len(),
        1,
        "{found} {down}"
    );
}

/// The Standard Webhooks reference library (Python `standardwebhooks`) accepts a delivery.
#[tokio::test]
#[ignore = "needs python3 with the standardwebhooks package: .ci/run installs it (FLOWHOOK_TEST_PYTHONPATH)"]
async fn the_reference_library_verifies_a_delivery() {
    let mock = consumer(200).await;
    let m = mock.uri();
    let app = spawn_app_with(|s| s.forwards = vec![forward("crm", &format!("{m}/crm"))]).await;
    app.post_bik_status("wamid.REF==", "sent", Utc::now(), &json!({"campaign": "c"}))
        .await;
    let got = received(&mock, "/crm", 1).await;
    let r = &got[0];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body"), &r.body).unwrap();
    let headers = json!({
        "webhook-id": header(r, "webhook-id"),
        "webhook-timestamp": header(r, "webhook-timestamp"),
        "webhook-signature": header(r, "webhook-signature"),
    });
    std::fs::write(dir.path().join("headers.json"), headers.to_string()).unwrap();
    let script = format!(
        r#"
import json, sys
from standardwebhooks import Webhook
body = open("{d}/body", "rb").read()
headers = json.load(open("{d}/headers.json"))
payload = Webhook("{secret}").verify(body, headers)
assert payload["message_id"] == "wamid.REF==", payload
try:
    Webhook("{secret}").verify(body + b" ", headers)
except Exception:
    print("verified")
    sys.exit(0)
sys.exit("a changed body was accepted")
"#,
        d = dir.path().display(),
        secret = FORWARD_SECRET
    );
    let mut python = std::process::Command::new("python3");
    if let Ok(path) = std::env::var("FLOWHOOK_TEST_PYTHONPATH") {
        python.env("PYTHONPATH", path);
    }
    let output = python
        .args(["-c", &script])
        .output()
        .expect("python3 must be installed for this test");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "verified");
}

#[tokio::test]
async fn a_delivery_of_a_forward_removed_from_the_config_ends_dead_saying_so() {
    let mock = consumer(503).await;
    let m = mock.uri();
    let app = spawn_app_with(|s| {
        s.forwards = vec![forward("gone", &format!("{m}/gone"))];
        s.dispatch.retry_schedule_seconds = vec![1.0, 1.0];
        s.dispatch.jitter = 0.0;
    })
    .await;
    app.post_bik_status("wamid.GONE==", "sent", Utc::now(), &json!({}))
        .await;
    app.wait_for_actions("wamid.GONE==", all_in("retrying", 1))
        .await;
    let (mut settings, dir) = app.stop().await;
    settings.forwards.clear();
    let app = start(settings, dir).await;
    let dead = app
        .wait_for_actions("wamid.GONE==", all_in("dead", 1))
        .await;
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("\"gone\" is no longer configured"),
        "{error}"
    );
}
