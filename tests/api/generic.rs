use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_signed_generic_status_and_click_are_stored() {
    let app = spawn_app().await;
    let status = generic_status(
        "gen-1",
        "delivered",
        1_795_255_200,
        json!({"order_id": "G1"}),
    );
    assert_eq!(
        counts(app.post_generic("msg_1", status).await).await,
        (1, 0, 0, 0)
    );
    let click = json!({"type": "message.click", "message_id": "gen-1", "url": "https://s/1", "timestamp": "2026-11-21T10:10:00Z", "recipient": "+919000000001"});
    assert_eq!(
        counts(app.post_generic("msg_2", click.to_string()).await).await,
        (1, 0, 0, 0)
    );
    let m = app.message("gen-1").await.unwrap();
    assert_eq!(m["status"], "delivered");
    assert_eq!(m["provider"], "generic");
    assert_eq!(
        m["callback_data"],
        json!({"order_id": "G1"}),
        "an inline object is taken as is"
    );
    assert_eq!(m["callback_data_raw"], "{\"order_id\":\"G1\"}");
    assert_eq!(m["events"][0]["event_id"], "msg_1");
    assert_eq!(m["clicks"][0]["url"], "https://s/1");
}

#[tokio::test]
async fn a_generic_batch_is_one_commit_and_a_retry_is_all_duplicates() {
    let app = spawn_app().await;
    let batch = format!(
        "[{},{},{}]",
        generic_status("gen-b", "sent", 1_795_255_200, Value::Null),
        generic_status("gen-b", "read", 1_795_255_300, Value::Null),
        json!({"type": "message.reaction", "message_id": "gen-b"})
    );
    assert_eq!(
        counts(app.post_generic("msg_batch", batch.clone()).await).await,
        (2, 0, 1, 0)
    );
    assert_eq!(
        counts(app.post_generic("msg_batch", batch).await).await,
        (0, 2, 1, 0)
    );
    let m = app.message("gen-b").await.unwrap();
    assert_eq!(m["events"][1]["event_id"], "msg_batch#1");
}

#[tokio::test]
async fn generic_posts_failing_standard_webhooks_checks_are_rejected_and_not_stored() {
    let app = spawn_app().await;
    let body = generic_status("gen-x", "sent", 1_795_255_200, Value::Null);
    let now = chrono::Utc::now().timestamp();
    let good = |ts: i64| sign_generic(GENERIC_SECRET, "msg_x", ts, &body);
    let wrong_secret = sign_generic("whsec_b3RoZXI=", "msg_x", now, &body);
    let (stale, future) = ((now - 301).to_string(), (now + 301).to_string());
    let now_s = now.to_string();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![
                ("webhook-timestamp", now_s.clone()),
                ("webhook-signature", good(now)),
            ],
            "missing",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-signature", good(now)),
            ],
            "missing",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", now_s.clone()),
            ],
            "missing",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", now_s.clone()),
                ("webhook-signature", wrong_secret),
            ],
            "invalid",
        ),
        (
            vec![
                ("webhook-id", "msg_other".into()),
                ("webhook-timestamp", now_s.clone()),
                ("webhook-signature", good(now)),
            ],
            "invalid",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", stale.clone()),
                ("webhook-signature", good(now - 301)),
            ],
            "tolerance",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", future.clone()),
                ("webhook-signature", good(now + 301)),
            ],
            "tolerance",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", "yesterday".into()),
                ("webhook-signature", good(now)),
            ],
            "unix seconds",
        ),
        (
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", now_s.clone()),
                ("webhook-signature", "v1,".into()),
            ],
            "invalid",
        ),
    ];
    for (headers, needle) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_error(
            app.post_generic_with_headers(body.clone(), &headers).await,
            401,
            needle,
        )
        .await;
    }
    assert!(app.message("gen-x").await.is_none());
}

#[tokio::test]
async fn the_standard_webhooks_library_vectors_verify_over_http() {
    let vectors: Value = serde_json::from_str(&fixture("standard-webhooks/vectors.json")).unwrap();
    let valid = vectors["valid"].as_array().unwrap().clone();
    let secrets: Vec<String> = valid
        .iter()
        .map(|v| v["secret"].as_str().unwrap().to_owned())
        .collect();
    let app = spawn_app_with(|s| {
        s.providers.generic.secrets = secrets.iter().map(flowhook::config::Secret::new).collect();
        s.providers.generic.tolerance_seconds = 20 * 365 * 86_400; // the vectors are from 2021-2022
    })
    .await;
    let post = |v: &Value, signature: &str| {
        let ts = v["timestamp"].to_string();
        let headers = [
            ("webhook-id", v["id"].as_str().unwrap().to_owned()),
            ("webhook-timestamp", ts),
            ("webhook-signature", signature.to_owned()),
        ];
        let body = v["body"].as_str().unwrap().to_owned();
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.post_generic_with_headers(body, &headers).await
        }
    };
    for v in &valid {
        // Verified; their bodies are not flowhook events (no type), so they are quarantined.
        assert_eq!(
            counts(post(v, v["signature"].as_str().unwrap()).await).await,
            (0, 0, 0, 1)
        );
    }
    for bad in vectors["invalid_signatures_for_second"].as_array().unwrap() {
        assert_error(post(&valid[1], bad.as_str().unwrap()).await, 401, "").await;
    }
    let multi = vectors["multi_signature_header_valid_for_first"]
        .as_str()
        .unwrap();
    assert_eq!(post(&valid[0], multi).await.status().as_u16(), 200);
}
