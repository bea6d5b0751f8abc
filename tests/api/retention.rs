//! Retention under a steady stream with a tiny `retention_days`: old messages go with their
//! indexes, counts and actions, and the store stops growing.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// Reads one unlabelled or labelled series from `/metrics`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get_public("/metrics").await.text().await.unwrap();
    parse_metrics(&text).get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_with_a_tiny_retention_keeps_the_store_bounded() {
    let mock = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let rules = format!(
        r#"
[[rules]]
name = "hook"
on = "status"
statuses = ["read"]
action = "http.post"
params = {{ url = "{}/hook", body = {{ id = "{{{{message_id}}}}" }} }}
"#,
        mock.uri()
    );
    let parsed = flowhook::config::Settings::from_toml_str(&rules).unwrap();
    // Two seconds of retention, purged every 200 ms.
    let app = spawn_app_with(|s| {
        s.store.retention_days = 2.0 / 86_400.0;
        s.store.purge_interval_seconds = 0.2;
        s.rules = parsed.rules;
    })
    .await;

    let started = Instant::now();
    let mut sizes = Vec::new();
    let mut sent = Vec::new();
    let mut second = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("wamid.RET{second:02}x{i:02}=="))
            .collect();
        let posts = batch.iter().map(|id| {
            let callback = json!({"campaign": format!("c{second}"), "order_id": id});
            app.post_bik(bik_status(id, "read", Utc::now(), &callback))
        });
        for resp in futures_util::future::join_all(posts).await {
            assert_eq!(resp.status().as_u16(), 200);
        }
        sent.push(batch);
        sizes.push(metric(&app, "flowhook_store_size_bytes").await);
        second += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;

    // Everything sent more than retention + a purge interval ago is gone, with its index
    // entries; the newest batch is still there.
    let first = &sent[0][0];
    assert!(
        app.message(first).await.is_none(),
        "{first} outlived retention"
    );
    let page: Value = app
        .get_json(&format!(
            "/v1/messages?callback.order_id={}",
            encode_segment(first)
        ))
        .await;
    assert_eq!(page["messages"], json!([]));
    // Everything was sent over 2.6 s ago: all of it is purged, and so are the counts of
    // its actions.
    let total: usize = sent.iter().map(Vec::len).sum();
    for id in sent.last().unwrap() {
        assert!(app.message(id).await.is_none(), "{id} outlived retention");
    }
    let purged = metric(&app, r#"flowhook_purged_total{kind="messages"}"#).await;
    assert_eq!(purged, total as f64);
    let delivered = metric(&app, r#"flowhook_outbox_actions{state="delivered"}"#).await;
    assert_eq!(delivered, 0.0, "action counts follow the purge");
    // A fresh message is of course kept.
    let fresh = "wamid.FRESH==";
    app.post_bik_status(fresh, "read", Utc::now(), &json!({}))
        .await;
    assert!(app.message(fresh).await.is_some());
    eprintln!("retention: {total} messages purged; store sizes {sizes:?}");
    // Disk: after the first retention window the store stops growing with the stream. Without
    // purging, the peak size of the second half of the run is about 2.3 times that of the
    // first (measured); with it, at most about 1.4 times: dedupe keys outlive retention
    // (`dedupe_days`), and sled's size moves in 512 KiB segments as it reuses them, so compare
    // peaks rather than single samples.
    let peak = |part: &[f64]| part.iter().copied().fold(0.0, f64::max);
    let (first, second) = sizes.split_at(sizes.len() / 2);
    assert!(
        peak(second) <= peak(first) * 1.75,
        "store grew under a steady stream: peak {} bytes in the first half, {} in the second",
        peak(first),
        peak(second)
    );
}

#[tokio::test]
async fn readyz_reports_a_disk_below_the_floor() {
    let app = spawn_app_with(|s| s.store.min_free_disk_bytes = u64::MAX).await;
    let resp = app.get_public("/readyz").await;
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("store.min_free_disk_bytes"),
        "{body}"
    );
}
