use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn bik_fixtures_follow_one_message_from_sent_to_read_and_its_click() {
    let app = spawn_app().await;
    for file in [
        "status-sent.json",
        "status-delivered.json",
        "status-read.json",
        "link-click.json",
    ] {
        assert_eq!(
            counts(app.post_bik(fixture(&format!("bik/{file}"))).await).await,
            (1, 0, 0, 0),
            "{file}"
        );
    }
    let m = app
        .message(FIXTURE_MESSAGE_ID)
        .await
        .expect("message stored");
    assert_eq!(m["status"], "read");
    assert_eq!(m["provider"], "bik");
    assert_eq!(m["channel"], "whatsapp");
    assert_eq!(m["recipient"], "+919090909090");
    assert_eq!(m["sent_at"], "2026-11-21T10:00:00Z");
    assert_eq!(m["delivered_at"], "2026-11-21T10:00:02Z");
    assert_eq!(m["read_at"], "2026-11-21T10:05:00Z");
    assert_eq!(m["failed_at"], Value::Null);
    assert_eq!(m["callback_data"]["order_id"], "ORD123");
    assert_eq!(
        m["callback_data_raw"],
        "{\"order_id\":\"ORD123\",\"campaign\":\"abandoned_cart\"}"
    );
    assert_eq!(m["callback_data_error"], Value::Null);
    assert_eq!(
        m["clicks"][0]["url"],
        "https://shop.example.com/checkout/ORD123"
    );
    assert_eq!(m["clicks"][0]["at"], "2026-11-21T10:06:00Z");
    let events = m["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[0]["event_id"],
        "5b0e6c1e-0001-4a38-9d1e-000000000001"
    );
    assert_eq!(events[3]["kind"], "click");
    assert!(events
        .iter()
        .all(|e| e["received_at"].is_string() && e["at"].is_string()));
    assert_eq!(m["actions"], serde_json::json!([]));
}

#[tokio::test]
async fn bik_status_with_wrong_basic_auth_is_rejected_and_not_stored() {
    let app = spawn_app().await;
    let cases = [
        (None, "missing Authorization"),
        (Some("Basic wrong-key".to_owned()), "invalid Authorization"),
        (Some(format!("Bearer {BIK_KEY}")), "invalid Authorization"),
        (Some(format!("basic {BIK_KEY}")), "invalid Authorization"),
        (Some(format!("Basic {BIK_KEY}x")), "invalid Authorization"),
        (Some("Basic ".to_owned()), "invalid Authorization"),
    ];
    for (auth, needle) in cases {
        let resp = app
            .post_bik_with_auth(fixture("bik/status-read.json"), auth.as_deref())
            .await;
        assert_error(resp, 401, needle).await;
    }
    assert!(app.message(FIXTURE_MESSAGE_ID).await.is_none());
    let rejected: Value = app.get_json("/v1/rejected").await;
    assert_eq!(rejected["rejected"], serde_json::json!([]));
}

#[tokio::test]
async fn both_keys_are_accepted_while_a_bik_key_is_rotated() {
    let app = spawn_app().await;
    let old = app
        .post_bik_with_auth(
            fixture("bik/status-sent.json"),
            Some(&format!("Basic {BIK_OLD_KEY}")),
        )
        .await;
    assert_eq!(counts(old).await, (1, 0, 0, 0));
    assert_eq!(
        counts(app.post_bik(fixture("bik/status-read.json")).await).await,
        (1, 0, 0, 0)
    );
}

#[tokio::test]
async fn a_mixed_batch_counts_accepted_ignored_and_rejected_and_quarantines_the_rejected() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_bik(fixture("bik/batch-mixed.json")).await).await,
        // The status, and the customer's message from the same number: a reply to it.
        (2, 0, 0, 1)
    );
    let rejected: Value = app.get_json("/v1/rejected").await;
    let items = rejected["rejected"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["provider"], "bik");
    assert_eq!(items[0]["reason"], "message id is missing");
    assert!(items[0]["raw"].as_str().unwrap().contains("5b0e6c1e-0007"));
    assert_eq!(
        app.message(FIXTURE_MESSAGE_ID).await.unwrap()["status"],
        "delivered"
    );
}

#[tokio::test]
async fn an_incoming_message_with_no_message_to_answer_is_ignored_and_stores_nothing() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_bik(fixture("bik/incoming-message.json")).await).await,
        (0, 0, 1, 0)
    );
    assert!(app
        .message("wamid.INBOUND00000000000000000000000000000000001")
        .await
        .is_none());
}

#[tokio::test]
async fn a_failed_status_keeps_its_reason() {
    let app = spawn_app().await;
    counts(app.post_bik(fixture("bik/status-failed.json")).await).await;
    let m = app
        .message("wamid.FAILED0000000000000000000000000000000000001")
        .await
        .unwrap();
    assert_eq!(m["status"], "failed");
    assert_eq!(m["failure_reason"], "Message undeliverable");
    assert_eq!(m["failed_at"], "2026-11-21T10:00:03Z");
}

#[tokio::test]
async fn a_duplicate_retry_is_answered_200_as_a_duplicate_and_changes_nothing() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_bik(fixture("bik/status-delivered.json")).await).await,
        (1, 0, 0, 0)
    );
    let before = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(
        counts(app.post_bik(fixture("bik/status-delivered.json")).await).await,
        (0, 1, 0, 0)
    );
    // The same event under a new provider id is still a duplicate (same message, status, time).
    let renamed = fixture("bik/status-delivered.json").replace("5b0e6c1e-0002", "5b0e6c1e-9999");
    assert_eq!(counts(app.post_bik(renamed).await).await, (0, 1, 0, 0));
    assert_eq!(app.message(FIXTURE_MESSAGE_ID).await.unwrap(), before);
}

#[tokio::test]
async fn statuses_posted_read_then_delivered_then_sent_end_as_read_with_every_time_kept() {
    let app = spawn_app().await;
    for file in [
        "status-read.json",
        "status-delivered.json",
        "status-sent.json",
    ] {
        counts(app.post_bik(fixture(&format!("bik/{file}"))).await).await;
    }
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["status"], "read");
    assert_eq!(
        (m["sent_at"].as_str(), m["read_at"].as_str()),
        (Some("2026-11-21T10:00:00Z"), Some("2026-11-21T10:05:00Z"))
    );
    let statuses: Vec<_> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["sent", "delivered", "read"],
        "the timeline is in provider time order"
    );
}

#[tokio::test]
async fn reversed_arrival_gives_the_same_state_as_in_order_arrival() {
    let (forward, backward) = (spawn_app().await, spawn_app().await);
    let files = [
        "status-sent.json",
        "status-delivered.json",
        "link-click.json",
        "status-read.json",
    ];
    for file in files {
        counts(forward.post_bik(fixture(&format!("bik/{file}"))).await).await;
    }
    for file in files.iter().rev() {
        counts(backward.post_bik(fixture(&format!("bik/{file}"))).await).await;
    }
    let strip_receive_times = |mut m: Value| {
        for key in ["first_seen_at", "updated_at"] {
            m.as_object_mut().unwrap().remove(key);
        }
        for e in m["events"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("received_at");
        }
        m
    };
    let a = strip_receive_times(forward.message(FIXTURE_MESSAGE_ID).await.unwrap());
    let b = strip_receive_times(backward.message(FIXTURE_MESSAGE_ID).await.unwrap());
    assert_eq!(a, b);
}

#[tokio::test]
async fn a_single_object_body_is_accepted_like_a_one_element_array() {
    let app = spawn_app().await;
    let array: Value = serde_json::from_str(&fixture("bik/status-sent.json")).unwrap();
    assert_eq!(
        counts(app.post_bik(array[0].to_string()).await).await,
        (1, 0, 0, 0)
    );
}

#[tokio::test]
async fn bad_bik_bodies_get_clear_errors() {
    let app = spawn_app().await;
    assert_error(app.post_bik("{not json").await, 400, "not valid JSON").await;
    assert_error(app.post_bik("").await, 400, "not valid JSON").await;
    let huge = format!("[{}]", vec![fixture("bik/status-sent.json"); 200].join(","));
    assert_error(app.post_bik(huge).await, 413, "larger than").await;
    assert!(app.message(FIXTURE_MESSAGE_ID).await.is_none());
}

#[tokio::test]
async fn events_that_lack_what_they_need_are_quarantined_with_the_reason() {
    let app = spawn_app().await;
    let cases = [
        (r#"{"eventInfo":{}}"#, "eventName is missing"),
        (
            r#"{"eventName":"message-status-update"}"#,
            "eventInfo is missing",
        ),
        (
            r#"{"eventName":"message-status-update","eventInfo":{"messageId":"m1","createdAt":"2026-11-21T10:00:00Z"}}"#,
            "status is missing",
        ),
        (
            r#"{"eventName":"message-status-update","eventInfo":{"messageId":"m1","status":"sent"}}"#,
            "timestamp is missing",
        ),
        (
            r#"{"eventName":"message-status-update","eventInfo":{"messageId":"m1","status":"sent","createdAt":"soon"}}"#,
            "neither RFC 3339",
        ),
        (
            r#"{"eventName":"message-status-update","eventInfo":{"messageId":7,"status":"sent","createdAt":"2026-11-21T10:00:00Z"}}"#,
            "not a string",
        ),
        (
            r#"{"eventName":"link-click","eventInfo":{"messageId":"m1","createdAt":"2026-11-21T10:00:00Z"}}"#,
            "click URL is missing",
        ),
        (r#"42"#, "eventName is missing"),
    ];
    for (body, reason) in cases {
        assert_eq!(
            counts(app.post_bik(format!("[{body}]")).await).await,
            (0, 0, 0, 1),
            "{body}"
        );
        let page: Value = app.get_json("/v1/rejected?limit=500").await;
        let last = page["rejected"].as_array().unwrap().last().unwrap().clone();
        assert!(
            last["reason"].as_str().unwrap().contains(reason),
            "{body}: {last}"
        );
    }
    assert!(app.message("m1").await.is_none());
}

#[tokio::test]
async fn click_urls_are_read_from_any_of_the_documented_fields() {
    let app = spawn_app().await;
    for (i, field) in ["url", "link", "clickedUrl"].iter().enumerate() {
        let body = format!(
            r#"[{{"eventName":"linkClicked","id":"c{i}","eventInfo":{{"messageId":"m-click","createdAt":"2026-11-21T10:0{i}:00Z","{field}":"https://x/{field}"}},"callbackData":"{{\"order_id\":\"O9\"}}"}}]"#
        );
        assert_eq!(counts(app.post_bik(body).await).await, (1, 0, 0, 0));
    }
    let m = app.message("m-click").await.unwrap();
    let urls: Vec<_> = m["clicks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        ["https://x/url", "https://x/link", "https://x/clickedUrl"]
    );
    assert_eq!(
        m["callback_data"]["order_id"], "O9",
        "top-level callbackData is used too"
    );
    assert_eq!(m["status"], Value::Null);
}
