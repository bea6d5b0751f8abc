//! What real Meta, BIK and Standard Webhooks senders send is kept as a user needs it afterwards:
//! failure codes and words, recipients in any common form, business-scoped user ids, group
//! participants, `played`, free-text callback data, unpadded secrets, byte-order marks.
//! The fixtures' sources are listed in `tests/fixtures/README.md`.

use serde_json::{json, Value};

use crate::helpers::*;

const FAILED_131047: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSRkFJTDQ3REVGNDU2R0hJNzg5AA==";
const FAILED_131049: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSRkFJTDQ5REVGNDU2R0hJNzg5AA==";
const GROUP: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSR1JPVVAxREVGNDU2R0hJNzg5AA==";
const BSUID_MESSAGE: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSQlNVSUQxREVGNDU2R0hJNzg5AA==";
const BSUID: &str = "US.13491208655302741918";
const VOICE: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSVk9JQ0UxREVGNDU2R0hJNzg5AA==";

fn events(m: &Value) -> &Vec<Value> {
    m["events"].as_array().expect("a timeline")
}

#[tokio::test]
async fn meta_failures_keep_their_code_and_every_word_without_repeats() {
    let app = spawn_app().await;
    assert_eq!(
        counts(
            app.post_meta(fixture("meta/statuses-failed-errors.json"))
                .await
        )
        .await,
        (3, 0, 0, 0)
    );
    let m = app.message(FAILED_131047).await.unwrap();
    assert_eq!(m["status"], "failed");
    assert_eq!(m["failure_code"], "131047");
    assert_eq!(
        m["failure_reason"],
        "Re-engagement message: Message failed to send because more than 24 hours have passed \
         since the customer last replied to this number."
    );
    assert_eq!(events(&m)[0]["failure_code"], "131047");
    assert_eq!(events(&m)[0]["failure_reason"], m["failure_reason"]);
    let other = app.message(FAILED_131049).await.unwrap();
    assert_eq!(other["failure_code"], "131049");
    assert!(other["failure_reason"].as_str().unwrap().starts_with(
        "This message was not delivered to maintain healthy ecosystem engagement. In order"
    ));
}

#[tokio::test]
async fn a_later_delivery_clears_the_message_failure_but_the_timeline_keeps_it() {
    let app = spawn_app().await;
    counts(
        app.post_meta(fixture("meta/statuses-failed-errors.json"))
            .await,
    )
    .await;
    let delivered = fixture("meta/statuses-played.json")
        .replace(VOICE, FAILED_131047)
        .replace("1795255260", "1795255300");
    counts(app.post_meta(delivered).await).await;
    let m = app.message(FAILED_131047).await.unwrap();
    assert_eq!(m["status"], "played");
    assert_eq!(m["failure_code"], Value::Null);
    assert_eq!(m["failure_reason"], Value::Null);
    let failed: Vec<&Value> = events(&m)
        .iter()
        .filter(|e| e["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["failure_code"], "131047");
    assert!(failed[0]["failure_reason"]
        .as_str()
        .unwrap()
        .contains("24 hours"));
}

#[tokio::test]
async fn bik_failures_keep_their_reason_on_each_failed_event() {
    let app = spawn_app().await;
    let body = fixture("bik/status-failed-coded.json");
    let (accepted, ..) = counts(app.post_bik(body.clone()).await).await;
    assert!(accepted >= 2);
    let first: Value = serde_json::from_str(&body).unwrap();
    let id = first[0]["eventInfo"]["messageId"].as_str().unwrap();
    let m = app.message(id).await.unwrap();
    assert_eq!(m["status"], "failed");
    assert!(m["failure_reason"].as_str().unwrap().contains("24 hours"));
    assert_eq!(m["recipient_e164"], "+919090909090");
}

#[tokio::test]
async fn stats_group_failures_by_code() {
    let app = spawn_app().await;
    counts(
        app.post_meta(fixture("meta/statuses-failed-errors.json"))
            .await,
    )
    .await;
    // A second 131047 on another message, and one failure without a code.
    let again = fixture("meta/statuses-failed-errors.json").replace("wamid.HBgM", "wamid.XBgM");
    counts(app.post_meta(again).await).await;
    let uncoded = json!({"type": "message.status", "message_id": "no-code", "status": "failed",
        "timestamp": 1_795_255_210, "callback_data": {"campaign": "abandoned_cart"},
        "failure_reason": "blocked"});
    counts(app.post_generic("wh-no-code", uncoded.to_string()).await).await;
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    let group = &stats["groups"][0];
    assert_eq!(group["value"], "abandoned_cart");
    assert_eq!(group["failed"], 7);
    let reasons = group["top_failure_reasons"].as_array().unwrap();
    let summary: Vec<(Value, i64)> = reasons
        .iter()
        .map(|r| (r["code"].clone(), r["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("130472"), 2),
            (json!("131047"), 2),
            (json!("131049"), 2),
            (Value::Null, 1)
        ]
    );
    assert!(reasons[1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("Re-engagement message"));
}

#[tokio::test]
async fn a_recipient_is_found_however_its_number_is_written() {
    let app = spawn_app().await;
    counts(app.post_meta(fixture("meta/statuses-sent.json")).await).await;
    counts(app.post_bik(fixture("bik/status-failed-coded.json")).await).await;
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["recipient"], "919090909090", "kept as Meta sent it");
    assert_eq!(m["recipient_e164"], "+919090909090");
    for written in [
        "919090909090",
        "%2B919090909090",
        "%2B91%2090909%2009090",
        "0091-90909-09090",
    ] {
        let page = app
            .get_json(&format!("/v1/messages?recipient={written}"))
            .await;
        let ids: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&FIXTURE_MESSAGE_ID), "{written}: {ids:?}");
        assert!(ids.len() >= 3, "BIK's +91 messages too, {written}: {ids:?}");
    }
}

#[tokio::test]
async fn a_status_addressed_to_a_business_scoped_user_id_keeps_it_and_is_found_by_it() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_meta(fixture("meta/statuses-bsuid.json")).await).await,
        (3, 0, 0, 0)
    );
    let m = app.message(BSUID_MESSAGE).await.unwrap();
    assert_eq!(m["recipient_user_id"], BSUID);
    assert_eq!(m["recipient"], Value::Null);
    assert_eq!(m["recipient_e164"], Value::Null);
    assert_eq!(m["status"], "read");
    let page = app
        .get_json(&format!("/v1/messages?recipient={BSUID}"))
        .await;
    assert_eq!(page["messages"][0]["message_id"], BSUID_MESSAGE);
}

#[tokio::test]
async fn each_group_participant_status_is_its_own_event() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_meta(fixture("meta/statuses-group.json")).await).await,
        (3, 0, 0, 0),
        "two participants' reads at one second are two events"
    );
    assert_eq!(
        counts(app.post_meta(fixture("meta/statuses-group.json")).await).await,
        (0, 3, 0, 0),
        "a retried delivery is a duplicate per participant"
    );
    let m = app.message(GROUP).await.unwrap();
    let reads: Vec<&Value> = events(&m)
        .iter()
        .filter(|e| e["status"] == "read")
        .map(|e| &e["participant"])
        .collect();
    assert_eq!(reads, [&json!("919090909091"), &json!("919090909092")]);
    assert_eq!(m["status"], "read");
    assert_eq!(
        m["recipient_e164"],
        Value::Null,
        "a group id is not a phone number"
    );
}

#[tokio::test]
async fn played_ranks_above_read_and_equal_times_follow_the_status_rank() {
    let app = spawn_app().await;
    counts(app.post_meta(fixture("meta/statuses-played.json")).await).await;
    let m = app.message(VOICE).await.unwrap();
    assert_eq!(m["status"], "played");
    let order: Vec<&str> = events(&m)
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["delivered", "read", "played"]);
    assert_eq!(events(&m)[0]["at"], events(&m)[1]["at"]);
    // In the funnel, played counts as read and delivered.
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    let group = &stats["groups"][0];
    assert_eq!(
        (group["read"].as_i64(), group["delivered"].as_i64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn free_text_callback_data_is_kept_raw_without_an_error() {
    let app = spawn_app().await;
    counts(
        app.post_meta(fixture("meta/statuses-free-text-callback.json"))
            .await,
    )
    .await;
    let page = app.get_json("/v1/messages?recipient=919090909090").await;
    let by_raw = |raw: &str| -> Value {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["callback_data_raw"] == raw)
            .unwrap_or_else(|| panic!("no message with {raw:?}"))
            .clone()
    };
    for raw in ["1744434060", "some data"] {
        let m = by_raw(raw);
        assert_eq!(m["callback_data"], Value::Null, "{raw}");
        assert_eq!(m["callback_data_error"], Value::Null, "{raw}");
    }
    let broken = by_raw("{\"order_id\": ");
    assert!(broken["callback_data_error"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
}

#[tokio::test]
async fn a_standard_webhooks_secret_without_base64_padding_is_accepted() {
    let unpadded = GENERIC_SECRET.trim_end_matches('=').to_owned();
    assert_ne!(unpadded, GENERIC_SECRET);
    let app = spawn_app_with(|s| {
        s.providers.generic.secrets = vec![flowhook::config::Secret::new(unpadded)]
    })
    .await;
    let body = generic_status("unpadded", "sent", 1_795_255_200, json!(null));
    assert_eq!(
        counts(app.post_generic("wh-unpadded", body).await).await,
        (1, 0, 0, 0)
    );
}

#[tokio::test]
async fn a_byte_order_mark_before_the_json_is_accepted_and_signed_over_as_received() {
    let app = spawn_app().await;
    let bom = "\u{feff}";
    let bik = format!("{bom}{}", fixture("bik/status-sent.json"));
    assert_eq!(counts(app.post_bik(bik).await).await, (1, 0, 0, 0));
    // Meta's signature covers the mark too: signed without it, the body is refused.
    let body = format!("{bom}{}", fixture("meta/statuses-played.json"));
    let without_mark = flowhook::providers::meta::sign(
        fixture("meta/statuses-played.json").as_bytes(),
        META_SECRET,
    );
    assert_error(
        app.post_meta_with_signature(body.clone(), Some(&without_mark))
            .await,
        401,
        "invalid",
    )
    .await;
    assert_eq!(counts(app.post_meta(body).await).await, (3, 0, 0, 0));
}
