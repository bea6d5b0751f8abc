//! `GET /v1/stats`: exact funnels under duplicates and any arrival order.

use chrono::Utc;
use serde_json::{json, Value};
use wiremock::MockServer;

use crate::helpers::*;

fn event(id: &str, campaign: &str, status: &str, secs: i64, reason: Option<&str>) -> Value {
    json!({
        "type": "message.status", "message_id": id, "status": status,
        "timestamp": 1_795_255_200 + secs, "recipient": "+919000000001", "channel": "whatsapp",
        "callback_data": {"campaign": campaign, "order_id": format!("O-{id}")},
        "failure_reason": reason,
    })
}

fn click(id: &str, campaign: &str, secs: i64) -> Value {
    json!({
        "type": "message.click", "message_id": id, "url": "https://shop.example.com/cart",
        "timestamp": 1_795_255_200 + secs, "recipient": "+919000000001",
        "callback_data": {"campaign": campaign, "order_id": format!("O-{id}")},
    })
}

/// Two campaigns: in `spring`, m1 is read and clicked, m2 fails, m3 is delivered, m4 fails;
/// in `summer`, m5 is sent.
fn events() -> Vec<Value> {
    vec![
        event("m1", "spring", "sent", 1, None),
        event("m1", "spring", "delivered", 2, None),
        event("m1", "spring", "read", 3, None),
        click("m1", "spring", 4),
        event("m2", "spring", "sent", 1, None),
        event("m2", "spring", "failed", 2, Some("undeliverable")),
        event("m3", "spring", "delivered", 2, None),
        event("m4", "spring", "failed", 2, Some("blocked")),
        event("m5", "summer", "sent", 1, None),
    ]
}

async fn app_with_rules() -> (TestApp, MockServer) {
    let mock = ok_and_dead_target().await;
    let m = mock.uri();
    let rules = post_rule("on-read", "read", &format!("{m}/ok"), "message_id")
        + &post_rule("on-failed", "failed", &format!("{m}/dead"), "message_id");
    (spawn_app_with_rules(&rules).await, mock)
}

async fn post_all(app: &TestApp, events: &[Value], batch: usize) {
    for (i, chunk) in events.chunks(batch).enumerate() {
        let body = Value::Array(chunk.to_vec()).to_string();
        let resp = app.post_generic(&format!("wh-{batch}-{i}"), body).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
}

async fn settled_stats(app: &TestApp, query: &str) -> Value {
    // Wait for the follow-ups to settle so that their counts are final.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pending: Value = app.get_json("/v1/actions?state=pending").await;
        let retrying: Value = app.get_json("/v1/actions?state=retrying").await;
        if pending["actions"] == json!([]) && retrying["actions"] == json!([]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "actions never settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let resp = app.get(&format!("/v1/stats?{query}")).await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}

fn expected_groups() -> Value {
    // The generic route carries no pricing: nothing is billable.
    let no_cost = json!({"currency": "USD", "estimated": 0.0, "billable": 0, "by_category": {}});
    json!([
        {"value": "spring", "messages": 4, "sent": 4, "delivered": 2, "read": 1, "failed": 2,
         "clicked": 1, "replied": 0, "opted_out": 0, "actions_delivered": 1, "actions_dead": 2,
         "rates": {"delivered": 0.5, "read": 0.5, "clicked": 1.0},
         "top_failure_reasons": [{"code": null, "reason": "blocked", "count": 1}, {"code": null, "reason": "undeliverable", "count": 1}],
         "cost": no_cost},
        {"value": "summer", "messages": 1, "sent": 1, "delivered": 0, "read": 0, "failed": 0,
         "clicked": 0, "replied": 0, "opted_out": 0, "actions_delivered": 0, "actions_dead": 0,
         "rates": {"delivered": 0.0, "read": null, "clicked": null},
         "top_failure_reasons": [],
         "cost": no_cost}
    ])
}

#[tokio::test]
async fn funnels_are_exact_in_order_reversed_and_duplicated() {
    let (in_order, _m1) = app_with_rules().await;
    post_all(&in_order, &events(), 3).await;
    let stats = settled_stats(&in_order, "group_by=callback.campaign").await;
    assert_eq!(stats["groups"], expected_groups());
    assert_eq!(stats["group_by"], "callback.campaign");
    assert_eq!(stats["fields"], json!(["campaign"]));

    // Reversed, every event twice, in other batches: the same numbers.
    let (shuffled, _m2) = app_with_rules().await;
    let mut reversed = events();
    reversed.reverse();
    let doubled: Vec<Value> = reversed.iter().chain(events().iter()).cloned().collect();
    post_all(&shuffled, &doubled, 2).await;
    post_all(&shuffled, &doubled, 4).await;
    let again = settled_stats(&shuffled, "group_by=callback.campaign").await;
    assert_eq!(again["groups"], expected_groups());
}

#[tokio::test]
async fn days_bound_the_stats_and_mistakes_get_400() {
    let (app, _mock) = app_with_rules().await;
    post_all(&app, &events(), 9).await;
    let today = Utc::now().date_naive();
    let tomorrow = today.succ_opt().unwrap();
    let yesterday = today.pred_opt().unwrap();
    let within = settled_stats(
        &app,
        &format!("group_by=callback.campaign&from={yesterday}&to={today}"),
    )
    .await;
    assert_eq!(within["groups"], expected_groups());
    assert_eq!(within["from"], yesterday.to_string());
    let later = settled_stats(&app, &format!("group_by=callback.campaign&from={tomorrow}")).await;
    assert_eq!(later["groups"], json!([]));
    let earlier = settled_stats(&app, &format!("group_by=callback.campaign&to={yesterday}")).await;
    assert_eq!(earlier["groups"], json!([]));

    assert_error(app.get("/v1/stats").await, 400, "group_by must be").await;
    assert_error(
        app.get("/v1/stats?group_by=callback.sku").await,
        400,
        "store.stats_callback_fields ([campaign])",
    )
    .await;
    // An indexed field that is not counted cannot be grouped by either.
    assert_error(
        app.get("/v1/stats?group_by=callback.order_id").await,
        400,
        "stats_callback_fields",
    )
    .await;
    assert_error(
        app.get("/v1/stats?group_by=callback.campaign&from=yesterday")
            .await,
        400,
        "from must be",
    )
    .await;
    assert_error(
        app.get(&format!(
            "/v1/stats?group_by=callback.campaign&from={today}&to={yesterday}"
        ))
        .await,
        400,
        "from is after to",
    )
    .await;
}

#[tokio::test]
async fn any_configured_stats_field_can_group() {
    let app = spawn_app_with(|s| {
        s.store.stats_callback_fields = vec!["campaign".into(), "order_id".into()]
    })
    .await;
    post_all(&app, &events(), 9).await;
    let by_order = settled_stats(&app, "group_by=callback.order_id").await;
    assert_eq!(by_order["groups"].as_array().unwrap().len(), 5);
    assert_eq!(by_order["fields"], json!(["campaign", "order_id"]));
}
