//! Rules and the outbox against a real local HTTP mock: the exact request of every action,
//! retries, Retry-After, final failures, rate limits, skips, at-most-once, timers, the
//! actions API and graceful stops.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;

/// Answers from a script, then `then` forever, and records when each request came.
#[derive(Clone)]
pub(crate) struct Script {
    replies: Arc<Mutex<VecDeque<ResponseTemplate>>>,
    then: ResponseTemplate,
    seen: Arc<Mutex<Vec<(Instant, Request)>>>,
}

impl Script {
    fn new(replies: Vec<ResponseTemplate>, then: ResponseTemplate) -> Self {
        Self {
            replies: Arc::new(Mutex::new(replies.into())),
            then,
            seen: Arc::default(),
        }
    }

    pub(crate) fn ok() -> Self {
        Self::new(
            Vec::new(),
            ResponseTemplate::new(200).set_body_json(json!({"status": 200, "success": true})),
        )
    }

    pub(crate) fn requests(&self) -> Vec<(Instant, Request)> {
        self.seen.lock().unwrap().clone()
    }

    async fn mount_at(&self, server: &MockServer, at: &str) {
        Mock::given(path(at))
            .respond_with(self.clone())
            .mount(server)
            .await;
    }

    pub(crate) async fn mount(&self, server: &MockServer) {
        Mock::given(method("POST"))
            .respond_with(self.clone())
            .mount(server)
            .await;
    }
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.seen
            .lock()
            .unwrap()
            .push((Instant::now(), request.clone()));
        self.replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.then.clone())
    }
}

const CART: &str = r#"{"order_id":"ORD123","campaign":"abandoned_cart","qty":2}"#;

fn cart() -> Value {
    serde_json::from_str(CART).unwrap()
}

/// A config with one `http.post` rule on `statuses` to `{mock}/hook`, fast retries.
fn hook_rule(mock: &str, statuses: &str, extra: &str) -> String {
    format!(
        r#"
[dispatch]
retry_schedule_seconds = [0.05, 0.05]
jitter = 0.0
{extra}

[[rules]]
name = "hook"
on = "status"
statuses = {statuses}
action = "http.post"
[rules.params]
url = "{mock}/hook"
body = {{ message = "{{{{message_id}}}}", order = "{{{{callback.order_id}}}}" }}
"#
    )
}

/// One `http.post` rule on `read` per name, each posting to `{mock}/<name>`.
fn hooks(mock: &str, schedule: &str, names: &[&str]) -> String {
    let mut config = format!("[dispatch]\nretry_schedule_seconds = {schedule}\njitter = 0.0\n");
    for name in names {
        config.push_str(&format!(
            "[[rules]]\nname = \"{name}\"\non = \"status\"\nstatuses = [\"read\"]\n\
             action = \"http.post\"\nparams = {{ url = \"{mock}/{name}\", body = {{ a = 1 }} }}\n"
        ));
    }
    config
}

/// Posts a BIK `read` for `id` with the cart callback data, asserting 200.
async fn post_read(app: &TestApp, id: &str) {
    app.post_bik_status(id, "read", Utc::now(), &cart()).await;
}

fn header<'a>(req: &'a Request, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

pub(crate) fn body(req: &Request) -> Value {
    serde_json::from_slice(&req.body).expect("JSON body")
}

fn by_rule<'a>(actions: &'a [Value], rule: &str) -> &'a Value {
    actions
        .iter()
        .find(|a| a["rule"] == rule)
        .unwrap_or_else(|| panic!("no action for rule {rule} in {actions:#?}"))
}

pub(crate) fn all_in(state: &'static str, n: usize) -> impl Fn(&[Value]) -> bool {
    move |a: &[Value]| a.len() == n && a.iter().all(|x| x["state"] == state)
}

#[tokio::test]
async fn every_action_makes_exactly_the_contract_request() {
    let mock = MockServer::start().await;
    let script = Script::ok();
    script.mount(&mock).await;
    let m = mock.uri();
    let config = format!(
        r#"
[targets.bik]
base_url = "{m}/bik/"
auth_token = "bik-token"
[targets.engati]
base_url = "{m}/engati"
customer_id = "cust 1"
bot_key = "bot1"
api_key = "engati-key"
[targets.botika]
base_url = "{m}/botika"
api_token = "botika-token"

[[rules]]
name = "flow"
on = "status"
statuses = ["read"]
when = {{ "callback.campaign" = "abandoned_cart", "channel" = ["whatsapp", "rcs"] }}
action = "bik.initiate_flow"
[rules.params]
flow_id = "cart_followup"
medium = "whatsapp"
phone_number = "{{{{recipient}}}}"
node_name = "start"
carry_payload = {{ order_id = ["{{{{callback.order_id}}}}"], qty = "{{{{callback.qty}}}}" }}
payload = {{ checkoutId = "{{{{callback.order_id}}}}", phoneNumber = "{{{{recipient}}}}", abandonedCart = {{ id = "cart-1", phoneNumber = "{{{{recipient}}}}", converted = false, cartPrice = 1000, partnersData = {{ id = "p1", source = "shopify" }}, cart = [{{ name = "Shoe", price = 1000, quantity = "{{{{callback.qty}}}}", productId = 11 }}] }} }}

[[rules]]
name = "event"
on = "status"
statuses = ["read"]
action = "bik.send_event"
[rules.params]
event_name = "cartRead"
phone_number = "{{{{recipient}}}}"
is_migration = false
event_properties = {{ orderId = "{{{{callback.order_id}}}}", status = "{{{{status}}}}", at = "{{{{event.at}}}}" }}

[[rules]]
name = "message"
on = "status"
statuses = ["read"]
action = "bik.send_message"
[rules.params]
medium = "whatsapp"
contact_identifier = "{{{{recipient}}}}"
type = "text"
business_phone_number = "+911234"
payload = {{ text = "Still thinking about order {{{{callback.order_id}}}}?" }}
callback_data = {{ campaign = "{{{{callback.campaign}}}}" }}

[[rules]]
name = "engati"
on = "status"
statuses = ["read"]
action = "engati.trigger_flow"
[rules.params]
flow_key = "reengage"
channel = "whatsapp"
phone_no = "{{{{recipient}}}}"
attributes = {{ order_id = "{{{{callback.order_id}}}}" }}

[[rules]]
name = "botika"
on = "status"
statuses = ["read"]
action = "botika.send_flow"
[rules.params]
to = "{{{{recipient}}}}"
reply_message_id = "{{{{message_id}}}}"
flow = {{ id = "flow-9", token = "tok", text = "Open", screen = "START", param = {{ body = "Order {{{{callback.order_id}}}}" }} }}

[[rules]]
name = "hook"
on = "status"
statuses = ["read"]
action = "http.post"
[rules.params]
url = "{m}/hook/{{{{callback.order_id}}}}"
body = {{ message = "{{{{message_id}}}}", order = "{{{{callback.order_id}}}}", qty = "{{{{callback.qty}}}}" }}
headers = {{ X-Tenant = "t1" }}
secret = "{GENERIC_SECRET}"
"#
    );
    let app = spawn_app_with_rules(&config).await;
    let at = chrono::DateTime::from_timestamp(1_795_255_200, 0).unwrap();
    let id = "wamid.ALL/+==";
    app.post_bik_status(id, "read", at, &cart()).await;
    let actions = app.wait_for_actions(id, all_in("delivered", 6)).await;

    let requests = script.requests();
    assert_eq!(requests.len(), 6, "one call per rule");
    let find = |path: &str| {
        requests
            .iter()
            .map(|(_, r)| r)
            .find(|r| r.url.path() == path)
            .unwrap_or_else(|| panic!("no request to {path}"))
    };
    let check = |req: &Request, rule: &str, auth: Option<&str>| {
        assert_eq!(req.method.as_str(), "POST");
        assert_eq!(header(req, "content-type"), "application/json");
        assert_eq!(
            header(req, "idempotency-key"),
            by_rule(&actions, rule)["id"]
        );
        match auth {
            Some(auth) => assert_eq!(header(req, "authorization"), auth),
            None => assert!(req.headers.get("authorization").is_none()),
        }
    };
    let phone = "+919090909090";

    let r = find("/bik/integrations/bikPlatformFunctions-initiateFlow");
    check(r, "flow", Some("Basic bik-token"));
    assert_eq!(
        body(r),
        json!({"medium": "whatsapp", "flowId": "cart_followup", "phoneNumber": phone,
            "nodeName": "start", "carryPayload": {"order_id": ["ORD123"], "qty": ["2"]},
            "payload": {"checkoutId": "ORD123", "phoneNumber": phone, "abandonedCart": {
                "id": "cart-1", "phoneNumber": phone, "converted": false, "cartPrice": 1000,
                "partnersData": {"id": "p1", "source": "shopify"},
                "cart": [{"name": "Shoe", "price": 1000, "quantity": 2, "productId": 11}]}}})
    );

    let r = find("/bik/integrations/bikPlatformFunctions-events/sendEvent");
    check(r, "event", Some("Basic bik-token"));
    assert_eq!(
        body(r),
        json!({"event": {"eventName": "cartRead", "phoneNumber": phone, "isMigration": false,
            "eventProperties": {"orderId": "ORD123", "status": "read", "at": "2026-11-21T10:00:00Z"}}})
    );

    let r = find("/bik/integrations/bikPlatformFunctions-messages/v2/sendMessage");
    check(r, "message", Some("Basic bik-token"));
    assert_eq!(
        body(r),
        json!({"medium": "whatsapp", "contactIdentifier": phone, "type": "text",
            "businessPhoneNumber": "+911234",
            "payload": {"text": "Still thinking about order ORD123?"},
            "callbackData": format!(r#"{{"campaign":"abandoned_cart","parent_message_id":"{id}","rule":"message"}}"#)})
    );

    let r = find("/engati/bot-api/v2.0/customer/cust%201/bot/bot1/flow/reengage");
    check(r, "engati", Some("Basic engati-key"));
    assert_eq!(
        String::from_utf8(r.body.clone()).unwrap(),
        format!(r#"{{"user.channel":"whatsapp","user.phone_no":"{phone}","order_id":"ORD123"}}"#)
    );

    let r = find("/botika/api/whatsapp/v1/messages");
    check(r, "botika", Some("Bearer botika-token"));
    assert_eq!(
        body(r),
        json!({"to": phone, "reply_message_id": id, "type": "flow", "flow": {"id": "flow-9",
            "token": "tok", "text": "Open", "screen": "START", "param": {"body": "Order ORD123"}}})
    );

    let r = find("/hook/ORD123");
    check(r, "hook", None);
    assert_eq!(body(r), json!({"message": id, "order": "ORD123", "qty": 2}));
    assert_eq!(header(r, "x-tenant"), "t1");
    let webhook_id = header(r, "webhook-id");
    assert_eq!(webhook_id, by_rule(&actions, "hook")["id"]);
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap();
    let expected = sign_generic(
        GENERIC_SECRET,
        webhook_id,
        ts,
        std::str::from_utf8(&r.body).unwrap(),
    );
    assert_eq!(header(r, "webhook-signature"), expected);

    for a in &actions {
        assert_eq!(a["attempts"], 1);
        assert_eq!(a["last_error"], Value::Null);
        assert!(a["completed_at"].is_string());
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_idempotency_key_until_success() {
    let mock = MockServer::start().await;
    let script = Script::new(
        vec![ResponseTemplate::new(500), ResponseTemplate::new(503)],
        ResponseTemplate::new(200),
    );
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["read"]"#, "")).await;
    let id = "wamid.RETRY==";
    post_read(&app, id).await;
    let actions = app.wait_for_actions(id, all_in("delivered", 1)).await;
    assert_eq!(actions[0]["attempts"], 3);
    let keys: Vec<String> = script
        .requests()
        .iter()
        .map(|(_, r)| header(r, "idempotency-key").to_owned())
        .collect();
    assert_eq!(keys, vec![actions[0]["id"].as_str().unwrap().to_owned(); 3]);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mock = MockServer::start().await;
    let script = Script::new(
        vec![ResponseTemplate::new(429).insert_header("Retry-After", "1")],
        ResponseTemplate::new(200),
    );
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["read"]"#, "")).await;
    let id = "wamid.LATER==";
    post_read(&app, id).await;
    app.wait_for_actions(id, all_in("delivered", 1)).await;
    let seen = script.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].0 - seen[0].0;
    // The schedule says 50 ms; the answer said 1 s.
    assert!(gap >= Duration::from_millis(990), "retried after {gap:?}");
}

#[tokio::test]
async fn retry_after_zero_does_not_shorten_the_schedule() {
    let mock = MockServer::start().await;
    let script = Script::new(
        vec![
            ResponseTemplate::new(429).insert_header("Retry-After", "0"),
            ResponseTemplate::new(503).insert_header("Retry-After", "0"),
        ],
        ResponseTemplate::new(200),
    );
    script.mount(&mock).await;
    let rules = hook_rule(&mock.uri(), r#"["read"]"#, "").replace("[0.05, 0.05]", "[0.4, 0.4]");
    let app = spawn_app_with_rules(&rules).await;
    let id = "wamid.NOWPLEASE==";
    post_read(&app, id).await;
    app.wait_for_actions(id, all_in("delivered", 1)).await;
    let seen = script.requests();
    assert_eq!(seen.len(), 3);
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // "Retry-After: 0" is not a reason to retry sooner than the schedule's 400 ms.
        assert!(gap >= Duration::from_millis(390), "retried after {gap:?}");
    }
}

#[tokio::test]
async fn a_client_error_is_final_and_keeps_the_answer_until_retried_by_hand() {
    let mock = MockServer::start().await;
    let script = Script::new(
        vec![ResponseTemplate::new(422).set_body_json(json!({"error": "bad phone"}))],
        ResponseTemplate::new(200),
    );
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["read"]"#, "")).await;
    let id = "wamid.DEAD==";
    post_read(&app, id).await;
    let actions = app.wait_for_actions(id, all_in("dead", 1)).await;
    let dead = &actions[0];
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["last_status"], 422);
    assert_eq!(dead["last_error"], "HTTP 422");
    assert!(dead["last_response"]
        .as_str()
        .unwrap()
        .contains("bad phone"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(script.requests().len(), 1, "a 4xx is not retried");

    let listed: Value = app.get_json("/v1/actions?state=dead&rule=hook").await;
    assert_eq!(listed["actions"][0]["id"], dead["id"]);
    let action_id = dead["id"].as_str().unwrap();
    let resp = app
        .post_api(&format!("/v1/actions/{action_id}/retry"), json!({}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let actions = app.wait_for_actions(id, all_in("delivered", 1)).await;
    assert_eq!(actions[0]["attempts"], 2);
    assert_error(
        app.post_api(&format!("/v1/actions/{action_id}/retry"), json!({}))
            .await,
        409,
        "only dead or retrying",
    )
    .await;
    assert_error(
        app.post_api("/v1/actions/act_nope/retry", json!({})).await,
        404,
        "no action",
    )
    .await;
}

#[tokio::test]
async fn a_failure_reported_in_a_200_body_is_a_failure() {
    let mock = MockServer::start().await;
    let rejected = Script::new(
        Vec::new(),
        ResponseTemplate::new(200).set_body_json(json!({"status": 400, "errors": [{"message": "'eventProperties.variantId' is required"}]})),
    );
    let unsure = Script::new(
        Vec::new(),
        ResponseTemplate::new(200).set_body_json(json!({"success": false})),
    );
    rejected.mount_at(&mock, "/rejected").await;
    unsure.mount_at(&mock, "/unsure").await;
    let config = hooks(&mock.uri(), "[0.05, 0.05]", &["rejected", "unsure"]);
    let app = spawn_app_with_rules(&config).await;
    let id = "wamid.BODY==";
    post_read(&app, id).await;
    let actions = app.wait_for_actions(id, all_in("dead", 2)).await;
    // status 400 in the body: final at once.
    let r = by_rule(&actions, "rejected");
    assert_eq!(r["attempts"], 1);
    assert!(
        r["last_error"].as_str().unwrap().contains("status 400"),
        "{r}"
    );
    assert!(r["last_response"].as_str().unwrap().contains("variantId"));
    // success: false without a status: retried through the schedule (two retries), then dead.
    let u = by_rule(&actions, "unsure");
    assert_eq!(u["attempts"], 3);
    assert!(
        u["last_error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 3 attempts"),
        "{u}"
    );
    assert_eq!((rejected.requests().len(), unsure.requests().len()), (1, 3));
}

#[tokio::test]
async fn the_rate_limit_spaces_calls() {
    let mock = MockServer::start().await;
    let script = Script::ok();
    script.mount(&mock).await;
    let limits = "[targets.http]\nrate_per_second = 5\nmax_in_flight = 8";
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["read"]"#, limits)).await;
    let ids: Vec<String> = (0..6).map(|i| format!("wamid.RATE{i}==")).collect();
    for id in &ids {
        post_read(&app, id).await;
    }
    for id in &ids {
        app.wait_for_actions(id, all_in("delivered", 1)).await;
    }
    let mut times: Vec<Instant> = script.requests().iter().map(|(t, _)| *t).collect();
    times.sort();
    assert_eq!(times.len(), 6);
    // Starts are 200 ms apart; arrivals jitter a little (the first call also connects).
    let span = times[5] - times[0];
    assert!(
        span >= Duration::from_millis(950),
        "6 calls within {span:?} at 5/s"
    );
    // No call comes before its slot. A call can arrive late on a busy machine, so the one
    // after it may arrive sooner than 200 ms after it: that is not a burst.
    for (slot, at) in times.iter().enumerate().skip(2) {
        let since = *at - times[1];
        assert!(
            since >= Duration::from_millis(200 * (slot as u64 - 1) - 80),
            "call {slot} came {since:?} after call 1 at 5/s"
        );
    }
}

#[tokio::test]
async fn a_template_naming_a_missing_field_skips_the_action() {
    let mock = MockServer::start().await;
    let script = Script::ok();
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["read"]"#, "")).await;
    let id = "wamid.SKIP==";
    app.post_bik_status(id, "read", Utc::now(), &json!({"campaign": "c"}))
        .await;
    let actions = app.wait_for_actions(id, all_in("skipped", 1)).await;
    assert_eq!(actions[0]["last_error"], "missing field: callback.order_id");
    assert_eq!(actions[0]["attempts"], 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(script.requests().is_empty());
}

#[tokio::test]
async fn a_rule_fires_once_per_message_under_duplicates_and_later_matches() {
    let mock = MockServer::start().await;
    let script = Script::ok();
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["delivered", "read"]"#, "")).await;
    let id = "wamid.ONCE==";
    let now = Utc::now();
    let delivered = bik_status(id, "delivered", now, &cart());
    let posts = (0..10).map(|_| app.post_bik(delivered.clone()));
    for resp in futures_util::future::join_all(posts).await {
        assert_eq!(resp.status().as_u16(), 200);
    }
    let read = bik_status(id, "read", now + chrono::Duration::seconds(5), &cart());
    counts(app.post_bik(read).await).await;
    app.wait_for_actions(id, all_in("delivered", 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(script.requests().len(), 1);
    let listed: Value = app.get_json("/v1/actions?rule=hook").await;
    assert_eq!(listed["actions"].as_array().unwrap().len(), 1);
}

fn timer(mock: &str) -> String {
    format!(
        r#"
[[rules]]
name = "unread"
on = "missing_status"
statuses = ["read"]
since = "delivered"
after_seconds = 1
action = "http.post"
[rules.params]
url = "{mock}/unread"
body = {{ message = "{{{{message_id}}}}", waited_since = "{{{{event.at}}}}" }}
"#
    )
}

#[tokio::test]
async fn a_missing_status_timer_fires_at_its_deadline() {
    let mock = MockServer::start().await;
    let script = Script::ok();
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&timer(&mock.uri())).await;
    let id = "wamid.UNREAD==";
    let delivered_at = Utc::now();
    app.post_bik_status(id, "delivered", delivered_at, &cart())
        .await;
    let pending = app.wait_for_actions(id, all_in("pending", 1)).await;
    let due = chrono::DateTime::parse_from_rfc3339(pending[0]["next_attempt_at"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        due.timestamp_millis(),
        delivered_at.timestamp_millis() + 1000
    );
    assert!(script.requests().is_empty(), "not before the deadline");
    app.wait_for_actions(id, all_in("delivered", 1)).await;
    let fired_at = Utc::now();
    assert!(fired_at >= delivered_at + chrono::Duration::seconds(1));
    let requests = script.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(body(&requests[0].1)["message"], id);
}

#[tokio::test]
async fn a_missing_status_timer_is_cancelled_when_the_status_arrives_and_survives_a_restart() {
    let mock = MockServer::start().await;
    let script = Script::ok();
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&timer(&mock.uri())).await;
    let (read_in_time, never_read) = ("wamid.READ==", "wamid.RESTART==");
    let now = Utc::now();
    app.post_bik_status(read_in_time, "delivered", now, &cart())
        .await;
    app.post_bik_status(never_read, "delivered", now, &cart())
        .await;
    app.post_bik_status(read_in_time, "read", now, &cart())
        .await;
    let cancelled = app
        .wait_for_actions(read_in_time, all_in("cancelled", 1))
        .await;
    assert!(cancelled[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
    // A restart before the deadline neither loses nor doubles the other timer.
    let app = app.restart().await;
    app.wait_for_actions(never_read, all_in("delivered", 1))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let paths: Vec<String> = script
        .requests()
        .iter()
        .map(|(_, r)| body(r)["message"].to_string())
        .collect();
    assert_eq!(paths, vec![format!("\"{never_read}\"")]);
    app.wait_for_actions(read_in_time, all_in("cancelled", 1))
        .await;
}

#[tokio::test]
async fn the_actions_api_filters_pages_and_requeues_in_bulk() {
    let mock = MockServer::start().await;
    let script = Script::new(
        (0..5).map(|_| ResponseTemplate::new(400)).collect(),
        ResponseTemplate::new(200),
    );
    script.mount(&mock).await;
    let app = spawn_app_with_rules(&hook_rule(&mock.uri(), r#"["read"]"#, "")).await;
    let ids: Vec<String> = (0..5).map(|i| format!("wamid.BULK{i}==")).collect();
    for id in &ids {
        post_read(&app, id).await;
    }
    for id in &ids {
        app.wait_for_actions(id, all_in("dead", 1)).await;
    }
    let page: Value = app.get_json("/v1/actions?state=dead&limit=2").await;
    assert_eq!(page["actions"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest: Value = app
        .get_json(&format!("/v1/actions?state=dead&limit=10&cursor={cursor}"))
        .await;
    assert_eq!(rest["actions"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_cursor"], Value::Null);
    let none: Value = app.get_json("/v1/actions?state=dead&rule=other").await;
    assert_eq!(none["actions"], json!([]));

    assert_error(
        app.get("/v1/actions?state=lost").await,
        400,
        "unknown state",
    )
    .await;
    assert_error(
        app.get("/v1/actions?colour=red").await,
        400,
        "unknown parameter",
    )
    .await;
    assert_error(
        app.post_api("/v1/actions/retry", json!({"state": "delivered"}))
            .await,
        400,
        "dead or retrying",
    )
    .await;
    assert_error(
        app.post_api("/v1/actions/retry", json!({"stat": "dead"}))
            .await,
        400,
        "unknown field",
    )
    .await;
    let unauthorized = app
        .client
        .post(format!("{}/v1/actions/retry", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    let other_rule: Value = app
        .post_api(
            "/v1/actions/retry",
            json!({"state": "dead", "rule": "other"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other_rule, json!({"requeued": 0}));
    let requeued: Value = app
        .post_api(
            "/v1/actions/retry",
            json!({"state": "dead", "rule": "hook"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(requeued, json!({"requeued": 5}));
    for id in &ids {
        app.wait_for_actions(id, all_in("delivered", 1)).await;
    }
    let delivered: Value = app.get_json("/v1/actions?state=delivered").await;
    assert_eq!(delivered["actions"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn a_graceful_stop_lets_calls_in_flight_finish_and_pending_ones_resume() {
    let mock = MockServer::start().await;
    let slow = Script::new(
        Vec::new(),
        ResponseTemplate::new(200).set_delay(Duration::from_millis(700)),
    );
    let flaky = Script::new(vec![ResponseTemplate::new(503)], ResponseTemplate::new(200));
    slow.mount_at(&mock, "/slow").await;
    flaky.mount_at(&mock, "/flaky").await;
    let config = hooks(&mock.uri(), "[1.5]", &["slow", "flaky"]);
    let app = spawn_app_with_rules(&config).await;
    let id = "wamid.STOP==";
    post_read(&app, id).await;
    // Wait until the slow call is in flight and the flaky one has failed once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.requests().is_empty() || flaky.requests().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let app = app.restart().await;
    let actions = app.message(id).await.unwrap()["actions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        by_rule(&actions, "slow")["state"],
        "delivered",
        "finished during the stop"
    );
    assert_eq!(by_rule(&actions, "flaky")["state"], "retrying");
    app.wait_for_actions(id, all_in("delivered", 2)).await;
    assert_eq!((slow.requests().len(), flaky.requests().len()), (1, 2));
}
