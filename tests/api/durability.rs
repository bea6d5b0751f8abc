use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::*;

/// Posts `n` distinct messages concurrently; returns their ids.
async fn post_many(app: &TestApp, n: usize, prefix: &str) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let posts = ids.iter().map(|id| {
        let body = format!(
            r#"[{{"eventName":"message-status-update","id":"{id}-e","eventInfo":{{"messageId":"{id}","status":"delivered","createdAt":"2026-11-21T10:00:00Z","assetValue":"+91","callbackData":"{{\"order_id\":\"{id}\"}}"}}}}]"#
        );
        app.post_bik(body)
    });
    for resp in join_all(posts).await {
        assert_eq!(counts(resp).await, (1, 0, 0, 0));
    }
    ids
}

#[tokio::test]
async fn every_accepted_event_is_there_after_a_restart_over_the_same_store() {
    let app = spawn_app().await;
    let ids = post_many(&app, 200, "restart").await;
    counts(app.post_bik(fixture("bik/batch-mixed.json")).await).await;

    let app = app.restart().await;
    for id in &ids {
        let m = app
            .message(id)
            .await
            .unwrap_or_else(|| panic!("{id} lost across restart"));
        assert_eq!(m["status"], "delivered");
    }
    let by_order: Value = app
        .get_json(&format!("/v1/messages?callback.order_id={}", ids[7]))
        .await;
    assert_eq!(by_order["messages"][0]["message_id"], ids[7].as_str());
    let rejected: Value = app.get_json("/v1/rejected").await;
    assert_eq!(rejected["rejected"].as_array().unwrap().len(), 1);
    // Dedupe keys survive too: a provider retry after the restart is still a duplicate.
    assert_eq!(
        counts(app.post_bik(fixture("bik/batch-mixed.json")).await).await,
        (0, 2, 0, 1)
    );
}

#[tokio::test]
async fn relaxed_durability_accepts_and_serves_the_same_way() {
    let app = spawn_app_with(|s| s.store.durability = flowhook::config::Durability::Relaxed).await;
    let ids = post_many(&app, 50, "relaxed").await;
    let app = app.restart().await;
    assert!(app.message(&ids[49]).await.is_some());
}
