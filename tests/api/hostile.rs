//! A table of hostile requests across every route. Each must get the right 4xx (or a 200 that
//! quarantines what it cannot use) with a clear message: never a 500, never a hang, and
//! nothing stored from what was refused.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use crate::helpers::*;

/// What a case must get back.
enum Expect {
    /// This status, with this text in `errors[0].message` (or the body).
    Error(u16, &'static str),
    /// 200 with these (accepted, duplicates, ignored, rejected).
    Counts(u64, u64, u64, u64),
    /// This status; the body is not checked (e.g. a 200 listing).
    Status(u16),
}

fn bik_event(id: &str, status: &str) -> Value {
    json!({"eventName": "message-status-update", "id": format!("hostile-{id}-{status}"),
        "eventInfo": {"messageId": id, "status": status, "createdAt": "2026-11-21T10:00:00Z",
            "assetValue": "+919000000000", "callbackData": "{\"campaign\":\"hostile\"}"}})
}

fn meta_body(timestamp: &str) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "statuses": [{"id": "wamid.META-HOSTILE",
            "status": "sent", "timestamp": timestamp, "recipient_id": "919000000000"}]}}]}]})
    .to_string()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_4xx_and_store_nothing() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 4 * 1024 * 1024).await;
    let a = app.address.clone();
    let c = &app.client;
    let bik = |body: Vec<u8>| {
        c.post(format!("{a}/webhooks/bik"))
            .header("Authorization", format!("Basic {BIK_KEY}"))
            .header("Content-Type", "application/json")
            .body(body)
    };
    let meta = |body: String, signature: Option<String>| {
        let mut r = c.post(format!("{a}/webhooks/meta")).body(body);
        if let Some(s) = signature {
            r = r.header("X-Hub-Signature-256", s);
        }
        r
    };
    let generic = |body: String, id: Option<&str>, ts: i64, sig: Option<String>| {
        let mut r = c.post(format!("{a}/webhooks/generic")).body(body.clone());
        if let Some(id) = id {
            r = r.header("webhook-id", id);
        }
        r = r.header("webhook-timestamp", ts.to_string());
        let sig = sig.unwrap_or_else(|| sign_generic(GENERIC_SECRET, id.unwrap_or(""), ts, &body));
        r.header("webhook-signature", sig)
    };
    let api = |path: &str| c.get(format!("{a}{path}")).bearer_auth(API_TOKEN);
    let now = Utc::now().timestamp();
    let signed_meta = |body: String| {
        let sig = flowhook::providers::meta::sign(body.as_bytes(), META_SECRET);
        meta(body, Some(sig))
    };
    let valid_generic = |body: String| generic(body, Some("wh-hostile"), now, None);
    let event = bik_event("wamid.H1", "read");
    let ten_thousand: Vec<Value> = (0..10_000)
        .map(|i| bik_event(&format!("wamid.BATCH{i}"), "sent"))
        .collect();
    let huge_callback = json!([{"eventName": "message-status-update", "id": "huge-cb",
        "eventInfo": {"messageId": "wamid.HUGECB", "status": "sent",
            "createdAt": "2026-11-21T10:00:00Z", "callbackData": "x".repeat(200_000)}}]);

    let cases: Vec<(&str, reqwest::RequestBuilder, Expect)> = vec![
        // --- BIK: body shape
        ("truncated JSON", bik(br#"[{"eventName":"message-status-update""#.to_vec()), Expect::Error(400, "not valid JSON")),
        ("empty body", bik(Vec::new()), Expect::Error(400, "not valid JSON")),
        ("invalid UTF-8", bik(vec![b'[', 0xff, 0xfe, b']']), Expect::Error(400, "not valid JSON")),
        ("deep nesting", bik(nested(100_000).into_bytes()), Expect::Error(400, "recursion limit")),
        ("huge number", bik(br#"[{"eventName":"message-status-update","eventInfo":{"messageId":"wamid.NUM","status":"sent","createdAt":1e400}}]"#.to_vec()), Expect::Error(400, "number out of range")),
        ("over max_body_bytes", bik(vec![b' '; 5 * 1024 * 1024]), Expect::Error(413, "larger than")),
        ("JSON null", bik(b"null".to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("JSON string", bik(br#""hello""#.to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("empty array", bik(b"[]".to_vec()), Expect::Counts(0, 0, 0, 0)),
        ("wrong types", bik(br#"[{"eventName":"message-status-update","eventInfo":{"messageId":42,"status":["read"],"createdAt":true}}]"#.to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("eventName not a string", bik(br#"[{"eventName":5,"eventInfo":{}}]"#.to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("no eventName", bik(br#"[{"eventInfo":{"messageId":"wamid.X"}}]"#.to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("message id with NUL", bik(json!([bik_event("wamid.\u{0}NUL", "read")]).to_string().into_bytes()), Expect::Counts(0, 0, 0, 1)),
        ("message id of 10 KB", bik(json!([bik_event(&"w".repeat(10_000), "read")]).to_string().into_bytes()), Expect::Counts(0, 0, 0, 1)),
        ("timestamp garbage", bik(br#"[{"eventName":"message-status-update","eventInfo":{"messageId":"wamid.TS","status":"sent","createdAt":"yesterday"}}]"#.to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("timestamp out of range", bik(br#"[{"eventName":"message-status-update","eventInfo":{"messageId":"wamid.TS2","status":"sent","createdAt":"99999-01-01T00:00:00Z"}}]"#.to_vec()), Expect::Counts(0, 0, 0, 1)),
        ("duplicate keys", bik(br#"[{"eventName":"incoming-message","eventName":"message-status-update","eventInfo":{"messageId":"wamid.DUPKEY","status":"sent","createdAt":"2026-11-21T10:00:00Z"}}]"#.to_vec()), Expect::Counts(1, 0, 0, 0)),
        ("wrong content type", bik(json!([event]).to_string().into_bytes()).header("Content-Type", "text/plain"), Expect::Counts(1, 0, 0, 0)),
        ("enormous callbackData", bik(huge_callback.to_string().into_bytes()), Expect::Counts(1, 0, 0, 0)),
        ("unicode phone number", bik(json!([{"eventName": "message-status-update", "id": "uni", "eventInfo": {"messageId": "wamid.UNICODE", "status": "sent", "createdAt": "2026-11-21T10:00:00Z", "assetValue": "+٩١٩٠٠٠٠٠٠٠٠٠ 📱"}}]).to_string().into_bytes()), Expect::Counts(1, 0, 0, 0)),
        ("path traversal in id", bik(json!([bik_event("../../etc/passwd", "sent")]).to_string().into_bytes()), Expect::Counts(1, 0, 0, 0)),
        ("SQL and shell in fields", bik(json!([bik_event("x'; DROP TABLE messages;-- $(rm -rf /) `id`", "sent")]).to_string().into_bytes()), Expect::Counts(1, 0, 0, 0)),
        ("10,000-event batch", bik(Value::Array(ten_thousand).to_string().into_bytes()), Expect::Counts(10_000, 0, 0, 0)),
        // --- BIK: auth
        ("no Authorization", c.post(format!("{a}/webhooks/bik")).body("[]"), Expect::Error(401, "Authorization")),
        ("garbled Authorization", c.post(format!("{a}/webhooks/bik")).header("Authorization", "Basic %%%").body("[]"), Expect::Error(401, "Authorization")),
        ("Bearer instead of Basic", c.post(format!("{a}/webhooks/bik")).header("Authorization", format!("Bearer {BIK_KEY}")).body("[]"), Expect::Error(401, "Authorization")),
        ("non-ASCII Authorization", c.post(format!("{a}/webhooks/bik")).header("Authorization", reqwest::header::HeaderValue::from_bytes(b"Basic \xff\xfe").unwrap()).body("[]"), Expect::Error(401, "Authorization")),
        ("wrong method", c.put(format!("{a}/webhooks/bik")).body("[]"), Expect::Error(405, "method not allowed")),
        // --- Meta
        ("meta: no signature", meta(meta_body("1795255200"), None), Expect::Error(401, "X-Hub-Signature-256")),
        ("meta: garbled signature", meta(meta_body("1795255200"), Some("sha256=zz".into())), Expect::Error(401, "X-Hub-Signature-256")),
        ("meta: sha1 scheme", meta(meta_body("1795255200"), Some(format!("sha1={}", "0".repeat(40)))), Expect::Error(401, "X-Hub-Signature-256")),
        ("meta: signature of another body", meta(meta_body("1795255200"), Some(flowhook::providers::meta::sign(b"{}", META_SECRET))), Expect::Error(401, "X-Hub-Signature-256")),
        ("meta: signed but truncated JSON", signed_meta("{\"entry\":[".into()), Expect::Error(400, "not valid JSON")),
        ("meta: statuses not a list", signed_meta(json!({"entry": [{"changes": [{"value": {"statuses": "read"}}]}]}).to_string()), Expect::Counts(0, 0, 0, 1)),
        ("meta: huge timestamp", signed_meta(meta_body("99999999999999999999")), Expect::Counts(0, 0, 0, 1)),
        ("meta: handshake with a wrong token", c.get(format!("{a}/webhooks/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")), Expect::Error(403, "verify_token")),
        // --- Generic (Standard Webhooks)
        ("generic: no webhook-id", generic("{}".into(), None, now, None), Expect::Error(401, "webhook-id")),
        ("generic: stale timestamp", generic("{}".into(), Some("wh-old"), now - 3600, None), Expect::Error(401, "timestamp")),
        ("generic: future timestamp", generic("{}".into(), Some("wh-future"), now + 3600, None), Expect::Error(401, "timestamp")),
        ("generic: v2 scheme", generic("{}".into(), Some("wh-v2"), now, Some("v2,abc".into())), Expect::Error(401, "signature")),
        ("generic: garbage signature", generic("{}".into(), Some("wh-g"), now, Some("v1,!!!".into())), Expect::Error(401, "signature")),
        ("generic: signed empty body", valid_generic(String::new()), Expect::Error(400, "not valid JSON")),
        ("generic: unknown type", valid_generic(json!({"type": "message.unknown", "message_id": "wamid.G"}).to_string()), Expect::Counts(0, 0, 1, 0)),
        ("generic: bad timestamp in body", valid_generic(json!({"type": "message.status", "message_id": "wamid.G2", "status": "read", "timestamp": "soon"}).to_string()), Expect::Counts(0, 0, 0, 1)),
        // --- Status and actions API
        ("API: no token", c.get(format!("{a}/v1/messages?order=recent")), Expect::Error(401, "Bearer")),
        ("API: wrong token", c.get(format!("{a}/v1/messages?order=recent")).bearer_auth("nope"), Expect::Error(401, "Bearer")),
        ("API: limit 0", api("/v1/messages?order=recent&limit=0"), Expect::Error(400, "limit")),
        ("API: limit too big", api("/v1/messages?order=recent&limit=99999999999999999999999"), Expect::Error(400, "limit")),
        ("API: garbage cursor", api("/v1/messages?callback.order_id=x&cursor=%%%"), Expect::Error(400, "")),
        ("API: cursor from elsewhere", api("/v1/messages?callback.order_id=x&cursor=AAAA"), Expect::Error(400, "cursor")),
        ("API: traversal in message id", api("/v1/messages/..%2F..%2Froot%2F.ssh%2Fid_rsa"), Expect::Error(404, "no message")),
        ("API: unindexed field", api("/v1/messages?callback.password=x"), Expect::Error(400, "not indexed")),
        ("API: SQL in state filter", api("/v1/actions?state=%27%20OR%201%3D1--"), Expect::Error(400, "unknown state")),
        ("API: stats without group_by", api("/v1/stats"), Expect::Error(400, "group_by")),
        ("API: retry-all with broken JSON", c.post(format!("{a}/v1/actions/retry")).bearer_auth(API_TOKEN).body("{\"state\":"), Expect::Error(400, "body must be")),
        ("API: retry-all too large", c.post(format!("{a}/v1/actions/retry")).bearer_auth(API_TOKEN).body(vec![b' '; 5 * 1024 * 1024]), Expect::Error(413, "larger than")),
        ("API: retry of an unknown action", c.post(format!("{a}/v1/actions/..%2F..%2Fx/retry")).bearer_auth(API_TOKEN), Expect::Error(404, "no action")),
        ("API: listing works", api("/v1/rejected?limit=500"), Expect::Status(200)),
    ];
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());

    for (name, request, expect) in cases {
        let resp = tokio::time::timeout(Duration::from_secs(30), request.send())
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{name}: request failed: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 500, "{name}: 500 {body}");
        match expect {
            Expect::Status(s) => assert_eq!(status, s, "{name}: {body}"),
            Expect::Error(s, needle) => {
                assert_eq!(status, s, "{name}: {body}");
                let parsed: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{name}: error body is not JSON: {body}"));
                let message = parsed["errors"][0]["message"].as_str().unwrap_or_default();
                assert!(
                    message.to_lowercase().contains(&needle.to_lowercase()),
                    "{name}: {message:?} should mention {needle:?}"
                );
                assert_eq!(parsed["status"], s, "{name}");
            }
            Expect::Counts(accepted, duplicates, ignored, rejected) => {
                assert_eq!(status, 200, "{name}: {body}");
                let b: Value = serde_json::from_str(&body).unwrap();
                let got = (
                    b["accepted"].as_u64(),
                    b["duplicates"].as_u64(),
                    b["ignored"].as_u64(),
                    b["rejected"].as_u64(),
                );
                assert_eq!(
                    got,
                    (
                        Some(accepted),
                        Some(duplicates),
                        Some(ignored),
                        Some(rejected)
                    ),
                    "{name}"
                );
            }
        }
    }

    // Nothing from the refused requests is stored; what was accepted is, as sent.
    for refused in [
        "wamid.NUM",
        "wamid.META-HOSTILE",
        "wamid.TS",
        "wamid.TS2",
        "wamid.G2",
        "wamid.X",
    ] {
        assert!(app.message(refused).await.is_none(), "{refused} was stored");
    }
    assert!(
        app.message("wamid.H1").await.is_some(),
        "content type is not checked"
    );
    let unicode = app.message("wamid.UNICODE").await.unwrap();
    assert_eq!(unicode["recipient"], "+٩١٩٠٠٠٠٠٠٠٠٠ 📱");
    let traversal = app.message("../../etc/passwd").await.unwrap();
    assert_eq!(traversal["status"], "sent");
    let sql = app
        .message("x'; DROP TABLE messages;-- $(rm -rf /) `id`")
        .await
        .unwrap();
    assert_eq!(sql["status"], "sent");
    let huge = app.message("wamid.HUGECB").await.unwrap();
    assert!(huge["callback_data_error"]
        .as_str()
        .unwrap()
        .contains("longer than"));
    assert!(app.message("wamid.BATCH9999").await.is_some());
    let quarantined: Value = app.get_json("/v1/rejected?limit=500").await;
    assert!(quarantined["rejected"].as_array().unwrap().len() >= 10);
}
