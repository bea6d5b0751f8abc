//! Opt-outs (contract section 8.2): Meta's user_preferences, BIK's optedOut and opt-out
//! keywords, kept per recipient in any order; `GET /v1/recipients/{recipient}`; rules that
//! skip an opted-out recipient, and timers an opt-out cancels.

use serde_json::{json, Value};

use crate::actions::all_in;
use crate::helpers::*;

/// The message of `meta/statuses-sent.json` and of `bik/status-*.json`, sent to
/// +91 90909 09090.
const CART: &str = "wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==";

/// A Meta `user_preferences` webhook: `wa_id` chose `value` at `at` (unix seconds).
fn preference(wa_id: &str, value: &str, at: i64) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "user_preferences",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": wa_id}],
            "user_preferences": [{"wa_id": wa_id, "detail": format!("User requested to {value} marketing messages"),
                "category": "marketing_messages", "value": value, "timestamp": at}]}}]}]})
    .to_string()
}

async fn recipient(app: &TestApp, raw: &str) -> Option<Value> {
    let resp = app
        .get(&format!("/v1/recipients/{}", encode_segment(raw)))
        .await;
    match resp.status().as_u16() {
        404 => None,
        200 => Some(resp.json().await.unwrap()),
        other => panic!("GET recipient answered {other}"),
    }
}

fn opt_outs(message: &Value) -> Vec<Value> {
    events_of(message, "opt_out")
}

#[tokio::test]
async fn a_meta_stop_opts_the_recipient_out_in_any_phone_form_and_names_its_latest_message() {
    let app = spawn_app().await;
    assert!(recipient(&app, "+919090909090").await.is_none(), "unknown");
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    let known = recipient(&app, "919090909090").await.unwrap();
    assert_eq!(known["opted_out"], false);
    assert_eq!(known["opted_out_at"], Value::Null);

    let stop = || fixture("meta/user-preferences.json");
    assert_eq!(counts(app.post_meta(stop()).await).await, (1, 0, 0, 0));
    assert_eq!(counts(app.post_meta(stop()).await).await, (0, 1, 0, 0));
    for form in ["+919090909090", "919090909090", "+91 90909 09090"] {
        let answer = recipient(&app, form).await.unwrap();
        assert_eq!(
            answer,
            json!({"recipient": "+919090909090", "recipient_e164": "+919090909090",
                "opted_out": true, "opted_out_at": "2026-11-21T10:05:00Z", "resumed_at": null,
                "source": "meta", "message_id": CART}),
            "{form}"
        );
    }
    let cart = app.message(CART).await.unwrap();
    assert_eq!(cart["opted_out_at"], "2026-11-21T10:05:00Z");
    assert_eq!(
        cart["status"], "sent",
        "an opt-out does not change the status"
    );
    let events = opt_outs(&cart);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["opt_out"],
        json!({"value": "stop", "source": "meta"})
    );

    // A resume later wins; a stop at the same instant as a resume wins the tie.
    let resume = preference("919090909090", "resume", 1_795_255_800);
    assert_eq!(counts(app.post_meta(resume).await).await, (1, 0, 0, 0));
    let answer = recipient(&app, "+919090909090").await.unwrap();
    assert_eq!(
        (
            &answer["opted_out"],
            &answer["resumed_at"],
            &answer["opted_out_at"]
        ),
        (
            &json!(false),
            &json!("2026-11-21T10:10:00Z"),
            &json!("2026-11-21T10:05:00Z")
        )
    );
    let tie = preference("919090909090", "stop", 1_795_255_800);
    assert_eq!(counts(app.post_meta(tie).await).await, (1, 0, 0, 0));
    assert_eq!(
        recipient(&app, "+919090909090").await.unwrap()["opted_out"],
        true
    );
}

#[tokio::test]
async fn a_stop_from_someone_flowhook_has_no_message_for_is_kept_for_them() {
    let app = spawn_app().await;
    // Meta's test numbers are not in the phone metadata: still the same recipient.
    let body = || preference("15551340563", "stop", 1_795_255_500);
    assert_eq!(counts(app.post_meta(body()).await).await, (1, 0, 0, 0));
    assert_eq!(counts(app.post_meta(body()).await).await, (0, 1, 0, 0));
    for form in ["+15551340563", "15551340563"] {
        let answer = recipient(&app, form).await.unwrap();
        assert_eq!(answer["opted_out"], true, "{form}");
        assert_eq!(answer["message_id"], Value::Null);
        assert_eq!(answer["recipient_e164"], "+15551340563");
    }
    // Another category says nothing flowhook keeps.
    let other = preference("15551340563", "stop", 1_795_255_600)
        .replace("marketing_messages", "utility_messages");
    assert_eq!(counts(app.post_meta(other).await).await, (0, 0, 1, 0));
}

/// The recipient's answer after posting `bodies` (BIK webhooks) in order.
async fn bik_answer(bodies: &[String]) -> (Value, Value) {
    let app = spawn_app().await;
    for body in bodies {
        assert_eq!(counts(app.post_bik(body.clone()).await).await.0, 1);
    }
    let answer = recipient(&app, "+919090909090").await.unwrap();
    (answer, app.message(CART).await.unwrap())
}

#[tokio::test]
async fn a_bik_opt_out_names_its_message_and_counts_whichever_comes_first() {
    let sent = fixture("bik/status-sent.json");
    let opted_out = fixture("bik/opted-out.json");
    let (after, message_after) = bik_answer(&[sent.clone(), opted_out.clone()]).await;
    let (before, message_before) = bik_answer(&[opted_out, sent]).await;
    assert_eq!(after, before, "the same answer in either order");
    assert_eq!(
        after,
        json!({"recipient": "+919090909090", "recipient_e164": "+919090909090",
            "opted_out": true, "opted_out_at": "2026-11-21T10:05:00Z", "resumed_at": null,
            "source": "bik", "message_id": CART})
    );
    assert_eq!(
        message_after["opted_out_at"],
        message_before["opted_out_at"]
    );
    let without_receipt = |m: &Value| {
        let mut events = opt_outs(m);
        events
            .iter_mut()
            .for_each(|e| e["received_at"] = Value::Null);
        events
    };
    assert_eq!(
        without_receipt(&message_after),
        without_receipt(&message_before)
    );
    assert_eq!(message_after["status"], "sent");
}

#[tokio::test]
async fn an_opt_out_keyword_reply_is_a_reply_and_a_stop() {
    let app = spawn_app().await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    let stop = |id: &str, text: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
            "field": "messages",
            "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
                "messages": [{"from": "919090909090", "id": id, "timestamp": "1795255900",
                    "type": "text", "text": {"body": text}, "context": {"from": "15550001111", "id": CART}}]}}]}]})
        .to_string()
    };
    // Not the whole text: only a reply.
    let chat = stop("wamid.CHAT==", "please stop sending these");
    assert_eq!(counts(app.post_meta(chat).await).await, (1, 0, 0, 0));
    assert_eq!(
        recipient(&app, "+919090909090").await.unwrap()["opted_out"],
        false
    );
    // " Stop " is the keyword: one reply counted, and the sender opted out.
    assert_eq!(
        counts(app.post_meta(stop("wamid.STOP==", " Stop ")).await).await,
        (1, 0, 0, 0)
    );
    assert_eq!(
        counts(app.post_meta(stop("wamid.STOP==", " Stop ")).await).await,
        (0, 1, 0, 0)
    );
    let answer = recipient(&app, "+919090909090").await.unwrap();
    assert_eq!(
        (
            &answer["opted_out"],
            &answer["source"],
            &answer["message_id"]
        ),
        (&json!(true), &json!("keyword"), &json!(CART))
    );
    let cart = app.message(CART).await.unwrap();
    assert_eq!(cart["opted_out_at"], "2026-11-21T10:11:40Z");
    assert_eq!(opt_outs(&cart)[0]["event_id"], "keyword:wamid.STOP==");
}

#[tokio::test]
async fn opt_out_keywords_are_configurable() {
    let app = spawn_app_with(|s| s.store.opt_out_keywords = vec!["ALTO".into()]).await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    let reply = |id: &str, text: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
            "field": "messages", "value": {"messages": [{"from": "919090909090", "id": id,
                "timestamp": "1795255900", "type": "text", "text": {"body": text}}]}}]}]})
        .to_string()
    };
    app.post_meta(reply("wamid.S==", "STOP")).await;
    assert_eq!(
        recipient(&app, "+919090909090").await.unwrap()["opted_out"],
        false
    );
    app.post_meta(reply("wamid.A==", "alto")).await;
    assert_eq!(
        recipient(&app, "+919090909090").await.unwrap()["opted_out"],
        true
    );
}

/// A rule `name` on read that posts to `url` (plus `extra` TOML).
fn read_rule(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[rules]]
name = "{name}"
on = "status"
statuses = ["read"]
{extra}
action = "http.post"
[rules.params]
url = "{url}"
body = {{ message = "{{{{message_id}}}}" }}
"#
    )
}

#[tokio::test]
async fn a_rule_does_not_call_an_opted_out_recipient_unless_it_says_so() {
    let mock = ok_and_dead_target().await;
    let ok = format!("{}/ok", mock.uri());
    let rules = read_rule("read-followup", &ok, "")
        + &read_rule("transactional", &ok, "skip_opted_out = false");
    let app = spawn_app_with_rules(&rules).await;
    app.post_bik(fixture("bik/status-sent.json")).await;
    app.post_bik(fixture("bik/opted-out.json")).await;
    app.post_bik(fixture("bik/status-read.json")).await;
    let actions = app
        .wait_for_actions(CART, |a| {
            a.len() == 2 && a.iter().all(|a| a["state"] != "pending")
        })
        .await;
    let by_rule = |name: &str| actions.iter().find(|a| a["rule"] == name).unwrap().clone();
    let skipped = by_rule("read-followup");
    assert_eq!(
        (&skipped["state"], &skipped["last_error"]),
        (&json!("skipped"), &json!("opted_out"))
    );
    assert_eq!(by_rule("transactional")["state"], "delivered");
    // The skipped action made no call: the mock saw one request, the other rule's.
    let calls = mock.received_requests().await.unwrap();
    assert_eq!(calls.iter().filter(|r| r.url.path() == "/ok").count(), 1);
}

#[tokio::test]
async fn cancel_on_opt_out_ends_a_timer_the_opt_out_answers() {
    let mock = wiremock::MockServer::start().await;
    let rules = timer_rule(
        r#"["played"]"#,
        "sent",
        r#"cancel_on = ["opt_out"]"#,
        &mock.uri(),
    );
    let app = spawn_app_with_rules(&rules).await;
    let id = "wamid.TIMER==";
    app.post_bik_status(id, "sent", chrono::Utc::now(), &json!({"campaign": "c"}))
        .await;
    app.wait_for_actions(id, all_in("pending", 1)).await;
    let opted_out = fixture("bik/opted-out.json").replace(CART, id);
    assert_eq!(counts(app.post_bik(opted_out).await).await, (1, 0, 0, 0));
    let cancelled = app.wait_for_actions(id, all_in("cancelled", 1)).await;
    let reason = cancelled[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("opted out"), "{reason}");
}

#[tokio::test]
async fn a_campaign_counts_its_opted_out_messages() {
    let app = spawn_app().await;
    app.post_meta(fixture("meta/statuses-sent.json")).await;
    app.post_meta(fixture("meta/user-preferences.json")).await;
    let stats = app.get_json("/v1/stats?group_by=callback.campaign").await;
    let cart = group(&stats, "abandoned_cart");
    assert_eq!(cart["opted_out"], 1, "{cart}");
}
