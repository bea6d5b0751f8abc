//! `/metrics` after a known sequence of webhooks: exact counter values. A test binary of its
//! own, because the metrics recorder is process-wide and other tests would add to it.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::collections::BTreeMap;

use helpers::*;
use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn value(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics
        .get(key)
        .unwrap_or_else(|| panic!("no series {key}; have:\n{metrics:#?}"))
}

#[tokio::test]
async fn counters_match_a_known_sequence_of_webhooks() {
    let mock = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let app = spawn_app_with_rules(&format!(
        r#"
[[rules]]
name = "on-read"
on = "status"
statuses = ["read"]
action = "http.post"
params = {{ url = "{}/hook", body = {{ id = "{{{{message_id}}}}" }} }}
"#,
        mock.uri()
    ))
    .await;

    let read = fixture("bik/status-read.json");
    assert_eq!(counts(app.post_bik(read.clone()).await).await, (1, 0, 0, 0));
    assert_eq!(counts(app.post_bik(read).await).await, (0, 1, 0, 0));
    // An event of a kind flowhook does not handle is ignored.
    let other = fixture("bik/incoming-message.json").replace("incoming-message", "chat-closed");
    assert_eq!(counts(app.post_bik(other).await).await, (0, 0, 1, 0));
    let wrong = app.post_bik_with_auth("[]", Some("Basic nope")).await;
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(app.post_bik("not json").await.status().as_u16(), 400);
    assert_eq!(
        counts(
            app.post_meta(fixture("meta/statuses-delivered-read.json"))
                .await
        )
        .await,
        (1, 1, 0, 0),
        "Meta's read is the BIK read already stored (same message, status and time)"
    );
    let no_id = json!({"type": "message.status", "status": "read", "timestamp": 1});
    assert_eq!(
        counts(app.post_generic("wh_1", no_id.to_string()).await).await,
        (0, 0, 0, 1)
    );
    app.wait_for_actions(FIXTURE_MESSAGE_ID, |a| {
        a.len() == 1 && a[0]["state"] == "delivered"
    })
    .await;

    let resp = app.get_public("/metrics").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = parse_metrics(&resp.text().await.unwrap());
    let webhooks = |provider: &str, outcome: &str| {
        value(
            &m,
            &format!(r#"flowhook_webhooks_total{{outcome="{outcome}",provider="{provider}"}}"#),
        )
    };
    assert_eq!(webhooks("bik", "accepted"), 1.0);
    assert_eq!(webhooks("bik", "duplicate"), 1.0);
    assert_eq!(webhooks("bik", "ignored"), 1.0);
    assert_eq!(webhooks("bik", "unauthorized"), 1.0);
    assert_eq!(webhooks("bik", "invalid"), 1.0);
    assert_eq!(webhooks("meta", "accepted"), 1.0);
    assert_eq!(webhooks("meta", "duplicate"), 1.0);
    assert_eq!(webhooks("generic", "rejected"), 1.0);
    let events = |status: &str| {
        value(
            &m,
            &format!(r#"flowhook_events_total{{kind="status",status="{status}"}}"#),
        )
    };
    assert_eq!((events("read"), events("delivered")), (1.0, 1.0));
    let actions = |outcome: &str| {
        value(
            &m,
            &format!(
                r#"flowhook_actions_total{{action="http.post",outcome="{outcome}",rule="on-read"}}"#
            ),
        )
    };
    assert_eq!((actions("queued"), actions("delivered")), (1.0, 1.0));
    assert_eq!(
        value(&m, r#"flowhook_outbox_actions{state="delivered"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"flowhook_outbox_actions{state="pending"}"#),
        0.0
    );
    assert_eq!(value(&m, "flowhook_outbox_oldest_due_seconds"), 0.0);
    assert!(value(&m, "flowhook_store_size_bytes") > 0.0);
    // Three BIK requests reached the store (the refused ones did not).
    assert_eq!(
        value(
            &m,
            r#"flowhook_ingest_duration_seconds_count{provider="bik"}"#
        ),
        3.0
    );
    if std::env::var_os("FLOWHOOK_TEST_POSTGRES").is_none() {
        // sled's group commit.
        assert!(value(&m, "flowhook_group_commit_batch_size_count") >= 1.0);
        assert!(value(&m, "flowhook_flush_duration_seconds_count") >= 1.0);
    } else {
        // Postgres: three ingest transactions, the pool.
        assert_eq!(
            value(&m, r#"flowhook_db_duration_seconds_count{op="ingest"}"#),
            3.0
        );
        assert!(value(&m, r#"flowhook_db_duration_seconds_count{op="claim"}"#) >= 1.0);
        let open = value(&m, r#"flowhook_db_connections{state="idle"}"#)
            + value(&m, r#"flowhook_db_connections{state="in_use"}"#);
        assert!(open >= 1.0);
    }
    assert_eq!(
        value(
            &m,
            r#"flowhook_dispatch_duration_seconds_count{result="delivered",target="http"}"#
        ),
        1.0
    );
}
