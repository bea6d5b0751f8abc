use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_subscription_handshake_echoes_the_challenge_for_the_right_token_only() {
    let app = spawn_app().await;
    let url = |token: &str| {
        format!(
            "{}/webhooks/meta?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444",
            app.address
        )
    };
    let ok = app.client.get(url(META_VERIFY_TOKEN)).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_error(
        app.client.get(url("wrong")).send().await.unwrap(),
        403,
        "verify_token",
    )
    .await;
    let no_mode = format!(
        "{}/webhooks/meta?hub.verify_token={META_VERIFY_TOKEN}&hub.challenge=1",
        app.address
    );
    assert_eq!(
        app.client
            .get(no_mode)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
}

#[tokio::test]
async fn signed_meta_statuses_are_stored_and_merge_with_bik_events_for_the_same_message() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_meta(fixture("meta/statuses-sent.json")).await).await,
        (1, 0, 0, 0)
    );
    assert_eq!(
        counts(
            app.post_meta(fixture("meta/statuses-delivered-read.json"))
                .await
        )
        .await,
        (2, 0, 0, 0)
    );
    let m = app.message(FIXTURE_MESSAGE_ID).await.unwrap();
    assert_eq!(m["status"], "read");
    assert_eq!(m["provider"], "meta");
    assert_eq!(m["recipient"], "919090909090");
    assert_eq!(m["sent_at"], "2026-11-21T10:00:00Z");
    assert_eq!(m["read_at"], "2026-11-21T10:05:00Z");
    assert_eq!(m["callback_data"]["campaign"], "abandoned_cart");
    // The BIK click for the same wamid joins the same timeline.
    counts(app.post_bik(fixture("bik/link-click.json")).await).await;
    assert_eq!(
        app.message(FIXTURE_MESSAGE_ID).await.unwrap()["events"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn a_meta_failure_keeps_the_error_code_and_its_words_as_reason() {
    let app = spawn_app().await;
    counts(app.post_meta(fixture("meta/statuses-failed.json")).await).await;
    let m = app
        .message("wamid.METAFAILED000000000000000000000000000000001")
        .await
        .unwrap();
    assert_eq!(
        (m["status"].as_str(), m["failure_reason"].as_str()),
        (
            Some("failed"),
            Some("Message undeliverable: Receiver is incapable of receiving this message")
        )
    );
    assert_eq!(m["failure_code"], "131026");
}

#[tokio::test]
async fn inbound_chat_messages_are_ignored() {
    let app = spawn_app().await;
    assert_eq!(
        counts(app.post_meta(fixture("meta/inbound-message.json")).await).await,
        (0, 0, 1, 0)
    );
}

#[tokio::test]
async fn meta_posts_with_a_bad_signature_are_rejected_and_not_stored() {
    let app = spawn_app().await;
    let body = fixture("meta/statuses-sent.json");
    let other_secret = flowhook::providers::meta::sign(body.as_bytes(), "not-the-secret");
    let over_other_body = flowhook::providers::meta::sign(b"{}", META_SECRET);
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing X-Hub-Signature-256"),
        (Some(&other_secret), "invalid"),
        (Some(&over_other_body), "invalid"),
        (Some("sha256=nothex"), "malformed"),
        (
            Some("sha1=0329a06b62cd16b33eb6792be8c60b158d89a2ee"),
            "malformed",
        ),
    ];
    for (signature, needle) in cases {
        assert_error(
            app.post_meta_with_signature(body.clone(), signature).await,
            401,
            needle,
        )
        .await;
    }
    assert!(app.message(FIXTURE_MESSAGE_ID).await.is_none());
}

#[tokio::test]
async fn the_signature_is_checked_over_the_raw_bytes_not_re_serialized_json() {
    let app = spawn_app().await;
    // Meta escapes non-ASCII; re-serializing would turn \u00e9 into é and break the HMAC.
    let body = fixture("meta/statuses-failed.json").replace(
        "Message undeliverable\",\n                    \"message\"",
        "Message non d\\u00e9livrable\",\n                    \"message\"",
    );
    assert!(body.contains("\\u00e9"));
    assert_eq!(counts(app.post_meta(body).await).await, (1, 0, 0, 0));
    let m = app
        .message("wamid.METAFAILED000000000000000000000000000000001")
        .await
        .unwrap();
    assert_eq!(
        m["failure_reason"],
        "Message non délivrable: Message undeliverable: Receiver is incapable of receiving this message"
    );
}

#[tokio::test]
async fn the_shared_meta_signature_vector_verifies_over_http() {
    let vector: Value = serde_json::from_str(&fixture("meta/signature-vector.json")).unwrap();
    let secret = vector["secret"].as_str().unwrap().to_owned();
    let app = spawn_app_with(|s| {
        s.providers
            .meta
            .app_secrets
            .push(flowhook::config::Secret::new(secret))
    })
    .await;
    // The vector's body ("test") is signed right but is not JSON: past verification, so 400.
    let resp = app
        .post_meta_with_signature(vector["body"].as_str().unwrap(), vector["header"].as_str())
        .await;
    assert_error(resp, 400, "not valid JSON").await;
}

#[tokio::test]
async fn a_body_without_entries_is_quarantined_not_dropped() {
    let app = spawn_app().await;
    assert_eq!(
        counts(
            app.post_meta(r#"{"object":"whatsapp_business_account"}"#)
                .await
        )
        .await,
        (0, 0, 0, 1)
    );
    let page: Value = app.get_json("/v1/rejected").await;
    assert!(page["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("entry[] is missing"));
}
