//! Replies (contract section 8.1): a customer message lands on the business message it
//! answers, by its context, else by the sender's latest message within the reply window.

use serde_json::{json, Value};

use crate::actions::all_in;
use crate::helpers::*;

const CART: &str = "wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==";
const BUTTON: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAEhggQlVUVE9OUkVQTFkxMjM0NTY3ODkwQUJDREVGAA==";
const TEXT: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAEhggVEVYVFJFUExZMTIzNDU2Nzg5MEFCQ0RFRkdIAA==";

fn replies(message: &Value) -> Vec<Value> {
    events_of(message, "reply")
}

#[tokio::test]
async fn a_meta_reply_lands_on_the_message_it_names_and_a_retry_is_a_duplicate() {
    let app = spawn_app().await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    let replies_body = || fixture("meta/message-button-reply.json");
    // The button reply names the cart message; the text after it has no context and lands on
    // the sender's latest message, the same one.
    assert_eq!(
        counts(app.post_meta(replies_body()).await).await,
        (2, 0, 0, 0)
    );
    assert_eq!(
        counts(app.post_meta(replies_body()).await).await,
        (0, 2, 0, 0)
    );

    let cart = app.message(CART).await.unwrap();
    assert_eq!(cart["status"], "sent", "a reply does not change the status");
    assert_eq!(cart["replied_at"], "2026-11-21T10:10:00Z");
    let replies = replies(&cart);
    assert_eq!(
        replies[0]["reply"],
        json!({"message_id": BUTTON, "type": "button", "text": "Buy now", "payload": "BUY_NOW"})
    );
    assert_eq!(replies[0]["event_id"], BUTTON);
    assert_eq!(
        replies[1]["reply"],
        json!({"message_id": TEXT, "type": "text", "text": "Is it in stock?", "payload": null})
    );
}

#[tokio::test]
async fn a_reply_with_no_message_to_answer_is_ignored() {
    let app = spawn_app().await;
    let body = fixture("meta/message-button-reply.json");
    assert_eq!(counts(app.post_meta(body).await).await, (0, 0, 2, 0));
    assert!(app.message(BUTTON).await.is_none());
}

#[tokio::test]
async fn a_bik_incoming_message_lands_on_the_senders_latest_message() {
    let app = spawn_app().await;
    app.post_bik(fixture("bik/status-sent.json")).await;
    let incoming = fixture("bik/incoming-message.json");
    assert_eq!(counts(app.post_bik(incoming).await).await, (1, 0, 0, 0));
    let sent: Value = serde_json::from_str(&fixture("bik/status-sent.json")).unwrap();
    let id = sent[0]["eventInfo"]["messageId"].as_str().unwrap();
    let message = app.message(id).await.unwrap();
    let replies = replies(&message);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["reply"]["text"], "Hi");
    assert_eq!(replies[0]["reply"]["type"], "text");
}

#[tokio::test]
async fn a_replied_message_counts_as_read_in_its_campaigns_funnel() {
    let app = spawn_app().await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    app.post_meta(fixture("meta/message-button-reply.json"))
        .await;
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    let cart = group(&stats, "abandoned_cart");
    assert_eq!(
        (
            &cart["replied"],
            &cart["read"],
            &cart["delivered"],
            &cart["sent"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(1)),
        "{cart}"
    );
}

/// A Meta webhook with one text message from `from`, sent `at` (unix seconds), no context.
fn meta_text(id: &str, from: &str, at: i64, text: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
            "messages": [{"from": from, "id": id, "timestamp": at.to_string(), "type": "text",
                "text": {"body": text}}]}}]}]})
    .to_string()
}

#[tokio::test]
async fn a_reply_without_context_answers_only_a_message_first_seen_within_the_window() {
    let app = spawn_app_with(|s| s.store.reply_window_hours = 1.0).await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    let now = chrono::Utc::now().timestamp();
    // Two hours after the message was first seen: outside a one-hour window.
    let late = app
        .post_meta(meta_text(
            "wamid.LATE==",
            "919090909090",
            now + 7_200,
            "hello?",
        ))
        .await;
    assert_eq!(counts(late).await, (0, 0, 1, 0));
    // Within the hour, and written with a `+` and spaces: the same sender.
    let soon = app
        .post_meta(meta_text(
            "wamid.SOON==",
            "+91 90909 09090",
            now + 60,
            "thanks",
        ))
        .await;
    assert_eq!(counts(soon).await, (1, 0, 0, 0));
    let cart = app.message(CART).await.unwrap();
    assert_eq!(replies(&cart).len(), 1);
    assert_eq!(replies(&cart)[0]["reply"]["text"], "thanks");
}

/// A `missing_status` timer waiting for `statuses` since `delivered` (plus `extra` TOML) on a
/// delivered message; the customer then replies without quoting it. The reason the timer was
/// cancelled with, and the message.
async fn timer_answered(statuses: &str, extra: &str) -> (String, Value) {
    let mock = wiremock::MockServer::start().await;
    let rules = timer_rule(statuses, "delivered", extra, &mock.uri());
    let app = spawn_app_with_rules(&rules).await;
    let id = "wamid.REMIND==";
    let now = chrono::Utc::now();
    app.post_bik_status(id, "delivered", now, &json!({"campaign": "c"}))
        .await;
    app.wait_for_actions(id, all_in("pending", 1)).await;
    // The customer answers without quoting the message: it is their latest.
    let reply = meta_text("wamid.ANSWER==", "919090909090", now.timestamp() + 5, "ok");
    assert_eq!(counts(app.post_meta(reply).await).await, (1, 0, 0, 0));
    let cancelled = app.wait_for_actions(id, all_in("cancelled", 1)).await;
    let reason = cancelled[0]["last_error"].as_str().unwrap().to_owned();
    (reason, app.message(id).await.unwrap())
}

#[tokio::test]
async fn a_reply_cancels_a_reminder_waiting_for_read() {
    let (reason, message) = timer_answered(r#"["read"]"#, "").await;
    assert!(reason.contains("the customer replied"), "{reason}");
    assert_eq!(message["status"], "delivered");
}

#[tokio::test]
async fn cancel_on_reply_ends_a_timer_waiting_for_a_status_a_reply_does_not_imply() {
    let (reason, _) = timer_answered(r#"["played"]"#, r#"cancel_on = ["reply"]"#).await;
    assert!(reason.contains("cancel_on"), "{reason}");
}

#[tokio::test]
async fn a_reply_rule_fires_for_its_payloads_with_the_reply_in_its_template() {
    let mock = wiremock::MockServer::start().await;
    let script = crate::actions::Script::ok();
    script.mount(&mock).await;
    let rules = format!(
        r#"
[[rules]]
name = "buy-now"
on = "reply"
reply_payloads = ["BUY_NOW"]
action = "http.post"
[rules.params]
url = "{m}/buy"
body = {{ message = "{{{{message_id}}}}", said = "{{{{reply.text}}}}", payload = "{{{{reply.payload}}}}", kind = "{{{{reply.type}}}}" }}

[[rules]]
name = "other-button"
on = "reply"
reply_payloads = ["NOT_NOW"]
action = "http.post"
[rules.params]
url = "{m}/other"
body = {{ message = "{{{{message_id}}}}" }}
"#,
        m = mock.uri()
    );
    let app = spawn_app_with_rules(&rules).await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    app.post_meta(fixture("meta/message-button-reply.json"))
        .await;
    let actions = app.wait_for_actions(CART, all_in("delivered", 1)).await;
    assert_eq!(actions[0]["rule"], "buy-now");
    let requests = script.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        crate::actions::body(&requests[0].1),
        json!({"message": CART, "said": "Buy now", "payload": "BUY_NOW", "kind": "button"})
    );
}
