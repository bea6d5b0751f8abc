use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn the_status_api_needs_the_bearer_token() {
    let app = spawn_app().await;
    for path in ["/v1/messages/x", "/v1/messages?recipient=1", "/v1/rejected"] {
        let url = format!("{}{path}", app.address);
        assert_error(app.client.get(&url).send().await.unwrap(), 401, "missing").await;
        assert_error(
            app.client
                .get(&url)
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap(),
            401,
            "invalid",
        )
        .await;
        assert_error(
            app.client
                .get(&url)
                .basic_auth("u", Some(API_TOKEN))
                .send()
                .await
                .unwrap(),
            401,
            "",
        )
        .await;
    }
}

#[tokio::test]
async fn an_unknown_message_is_404_in_the_error_shape() {
    let app = spawn_app().await;
    assert_error(
        app.get("/v1/messages/wamid.nothing").await,
        404,
        "no message",
    )
    .await;
}

#[tokio::test]
async fn ids_holding_slash_plus_and_equals_are_found_when_percent_encoded() {
    let app = spawn_app().await;
    let id = "wamid.HBgM/ab+cd/ef==";
    counts(
        app.post_generic(
            "msg_enc",
            generic_status(id, "sent", 1_795_255_200, Value::Null),
        )
        .await,
    )
    .await;
    for path in [
        "/v1/messages/wamid.HBgM%2Fab%2Bcd%2Fef%3D%3D".to_owned(),
        "/v1/messages/wamid.HBgM%2fab%2bcd%2fef%3d%3d".to_owned(),
        "/v1/messages/wamid.HBgM/ab+cd/ef==".to_owned(),
        "/v1/messages/wamid.HBgM%2Fab+cd/ef%3D=".to_owned(),
    ] {
        let resp = app.get(&path).await;
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["message_id"],
            id,
            "{path}"
        );
    }
}

#[tokio::test]
async fn messages_are_found_by_callback_field_and_recipient_across_pages() {
    let app = spawn_app().await;
    for i in 0..5 {
        let body = generic_status(
            &format!("page-{i}"),
            "sent",
            1_795_255_200,
            json!({"order_id": "ORD-P", "campaign": 7}),
        );
        counts(app.post_generic(&format!("msg_p{i}"), body).await).await;
    }
    counts(
        app.post_generic(
            "msg_other",
            generic_status("other", "sent", 1_795_255_200, json!({"order_id": "ORD-Q"})),
        )
        .await,
    )
    .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/messages?callback.order_id=ORD-P&limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app.get_json(&path).await;
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 2);
        assert!(
            messages.iter().all(|m| m.get("events").is_none()),
            "lists leave the timeline out"
        );
        seen.extend(
            messages
                .iter()
                .map(|m| m["message_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["page-0", "page-1", "page-2", "page-3", "page-4"]);

    let by_number: Value = app.get_json("/v1/messages?callback.campaign=7").await;
    assert_eq!(
        by_number["messages"].as_array().unwrap().len(),
        5,
        "numbers are indexed as their JSON text"
    );
    let by_recipient: Value = app
        .get_json("/v1/messages?recipient=%2B919000000001&limit=500")
        .await;
    assert_eq!(by_recipient["messages"].as_array().unwrap().len(), 6);
    assert_eq!(by_recipient["next_cursor"], Value::Null);
    let none: Value = app.get_json("/v1/messages?callback.order_id=NOPE").await;
    assert_eq!(none, json!({"messages": [], "next_cursor": null}));
}

#[tokio::test]
async fn bad_lookups_get_400_that_says_what_is_allowed() {
    let app = spawn_app().await;
    let cases = [
        (
            "/v1/messages?callback.coupon=X",
            "not indexed (store.index_callback_fields is [order_id, campaign])",
        ),
        (
            "/v1/messages",
            "exactly one of recipient, callback.order_id, callback.campaign",
        ),
        (
            "/v1/messages?recipient=1&callback.order_id=2",
            "exactly one",
        ),
        ("/v1/messages?phone=1", "unknown parameter"),
        ("/v1/messages?recipient=1&limit=0", "limit must be"),
        ("/v1/messages?recipient=1&limit=501", "limit must be"),
        ("/v1/messages?recipient=1&limit=ten", "limit must be"),
        ("/v1/messages?recipient=1&cursor=%%%", "cursor"),
        ("/v1/messages?recipient=1&cursor=b3RoZXI", "cursor"),
        ("/v1/rejected?limit=-1", "limit must be"),
        ("/v1/rejected?state=x", "unknown parameter"),
    ];
    for (path, needle) in cases {
        assert_error(app.get(path).await, 400, needle).await;
    }
}

#[tokio::test]
async fn callback_data_that_is_broken_json_or_too_long_is_kept_raw_and_flagged() {
    let app = spawn_app_with(|s| s.store.max_callback_bytes = 64).await;
    let cases = [
        ("cb-broken", json!("{\"order_id\": "), "not valid JSON"),
        (
            "cb-long",
            json!(format!("{{\"pad\":\"{}\"}}", "x".repeat(100))),
            "longer than 64 bytes",
        ),
    ];
    for (id, callback, reason) in cases {
        counts(
            app.post_generic(
                &format!("msg_{id}"),
                generic_status(id, "sent", 1_795_255_200, callback.clone()),
            )
            .await,
        )
        .await;
        let m = app.message(id).await.unwrap();
        assert_eq!(m["callback_data"], Value::Null, "{id}");
        assert_eq!(m["callback_data_raw"], callback, "{id}");
        assert!(
            m["callback_data_error"].as_str().unwrap().contains(reason),
            "{id}"
        );
    }
}

#[tokio::test]
async fn the_quarantine_pages_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..3 {
        let body = json!({"type": "message.status", "status": "sent", "timestamp": i});
        assert_eq!(
            counts(
                app.post_generic(&format!("msg_r{i}"), body.to_string())
                    .await
            )
            .await,
            (0, 0, 0, 1)
        );
    }
    let first: Value = app.get_json("/v1/rejected?limit=2").await;
    assert_eq!(first["rejected"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_json(&format!("/v1/rejected?limit=2&cursor={cursor}"))
        .await;
    let rest = second["rejected"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["provider"], "generic");
    assert_eq!(rest[0]["reason"], "message id is missing");
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let app = spawn_app().await;
    let get = |p: &str| app.client.get(format!("{}{p}", app.address)).send();
    assert_eq!(get("/healthz").await.unwrap().status().as_u16(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    assert_error(get("/nowhere").await.unwrap(), 404, "no such route").await;
    let wrong_method = app
        .client
        .delete(format!("{}/webhooks/bik", app.address))
        .send()
        .await
        .unwrap();
    assert_error(wrong_method, 405, "method not allowed").await;
}

#[tokio::test]
async fn a_long_timeline_is_summarized_past_the_cap_and_answered_in_part() {
    let app = spawn_app_with(|s| s.store.max_events_per_message = 300).await;
    let click = |n: i64| {
        json!({"type": "message.click", "message_id": "wamid.LONG==", "url": format!("https://shop/{n}"),
               "timestamp": 1_795_255_200 + n, "callback_data": {"campaign": "spam"}})
    };
    for part in 0..2 {
        let body = Value::Array((part * 200..part * 200 + 200).map(click).collect());
        let resp = app
            .post_generic(&format!("wh-long-{part}"), body.to_string())
            .await;
        assert_eq!(counts(resp).await, (200, 0, 0, 0));
    }
    let m = app.message("wamid.LONG==").await.unwrap();
    assert_eq!(m["events_total"], 400, "every distinct event counts");
    let events = m["events"].as_array().unwrap();
    assert_eq!(events.len(), 200, "the answer lists the first and last 100");
    assert_eq!(events[0]["url"], "https://shop/0");
    assert_eq!(events[199]["url"], "https://shop/399");
    assert!(m.get("summary").is_none());
    let listed = app.get_json("/v1/messages?callback.campaign=spam").await;
    assert_eq!(listed["messages"][0]["events_total"], 400);
}
