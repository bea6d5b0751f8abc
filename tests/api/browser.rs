//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver by fantoccini): token prompt, funnel numbers, search, timeline, dead
//! letters and retry. Screenshots go to `target/ui-dashboard.png` and `target/ui-phone.png`.
//!
//! It needs the browser, so it is ignored by a plain `cargo test` (the reason shows in the
//! output); `cargo test -- --include-ignored` runs it, and fails if `chromium` or
//! `chromedriver` is missing. `.ci/run` installs both and runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::free_port;

struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Replaces the text of an input.
async fn fill(c: &Client, css: &str, text: &str) {
    let input = c.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

/// Waits until the element's text satisfies `ok`; returns it.
async fn text_of(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(element) = c.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if ok(&text) {
                    return text;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed the expected text"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FAILED_131047: &str = "wamid.HBgMOTE5MDkwOTA5MDkwFQIAERgSRkFJTDQ3REVGNDU2R0hJNzg5AA==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium and chromium-driver: `cargo test -- --include-ignored` (.ci/run installs them)"]
async fn the_dashboard_shows_funnels_finds_messages_and_retries_dead_letters() {
    let (Some(chromedriver), Some(chromium)) = (
        find_on_path("chromedriver"),
        find_on_path("chromium").or_else(|| find_on_path("chromium-browser")),
    ) else {
        panic!("the browser test needs chromium and chromedriver on PATH: apt-get install -y chromium chromium-driver");
    };

    let mock = ok_and_dead_target().await;
    let m = mock.uri();
    // The alert goes out even to a recipient who opted out of marketing (it is not marketing).
    let alert = post_rule("failed-alert", "failed", &format!("{m}/dead"), "message_id").replace(
        "statuses = [\"failed\"]\n",
        "statuses = [\"failed\"]\nskip_opted_out = false\n",
    );
    let rules = post_rule("cart-read", "read", &format!("{m}/ok"), "message_id")
        + &alert
        + crate::cost::RATE_CARD;
    let app = spawn_app_with_rules(&rules).await;
    // Meta statuses with per-message pricing, in a campaign of their own.
    counts(
        app.post_meta(fixture("meta/statuses-pricing-pmp.json"))
            .await,
    )
    .await;
    for f in [
        "status-sent",
        "status-delivered",
        "status-read",
        "link-click",
        "status-failed",
    ] {
        counts(app.post_bik(fixture(&format!("bik/{f}.json"))).await).await;
    }
    for (i, status) in ["delivered", "read", "sent"].iter().enumerate() {
        let id = format!("wamid.WINBACK{i}");
        let callback = json!({"campaign": "winback", "order_id": format!("W-{i}")});
        app.post_bik_status(&id, status, Utc::now(), &callback)
            .await;
    }
    // Meta failures with their codes, in a campaign of their own.
    let failures =
        fixture("meta/statuses-failed-errors.json").replace("abandoned_cart", "reengage");
    counts(app.post_meta(failures).await).await;
    // The customer answers the BIK fixtures' message with a button (its context names it).
    let mut reply: Value =
        serde_json::from_str(&fixture("meta/message-button-reply.json")).unwrap();
    reply["entry"][0]["changes"][0]["value"]["messages"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    assert_eq!(
        counts(app.post_meta(reply.to_string()).await).await,
        (1, 0, 0, 0)
    );
    // Then opts out of the campaign (BIK names the message).
    assert_eq!(
        counts(app.post_bik(fixture("bik/opted-out.json")).await).await,
        (1, 0, 0, 0)
    );

    let port = free_port();
    let _driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1100"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        match ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    c.goto(&format!("{}/ui", app.address)).await.unwrap();
    // Asked once for the token; a wrong one is refused with a message.
    c.wait().for_element(Locator::Css("#token")).await.unwrap();
    fill(&c, "#token", "wrong-token").await;
    click(&c, "#connect").await;
    text_of(&c, "#login-error", |t| t.contains("refused")).await;
    fill(&c, "#token", API_TOKEN).await;
    click(&c, "#connect").await;

    // Funnels, exactly as the stats API counts them.
    let card = r#"[data-value="abandoned_cart"]"#;
    let count = |stage: &str| format!(r#"{card} [data-testid="count-{stage}"]"#);
    text_of(&c, &count("sent"), |t| t == "2").await;
    assert_eq!(text_of(&c, &count("delivered"), |_| true).await, "1");
    assert_eq!(text_of(&c, &count("read"), |_| true).await, "1");
    assert_eq!(text_of(&c, &count("clicked"), |_| true).await, "1");
    assert_eq!(text_of(&c, &count("failed"), |_| true).await, "1");
    let winback = r#"[data-value="winback"] [data-testid="count-delivered"]"#;
    assert_eq!(text_of(&c, winback, |_| true).await, "2");
    // The estimated cost of a campaign's billable messages, at the rate card.
    let cost = r#"[data-value="summer_sale"] [data-testid="cost"]"#;
    assert_eq!(text_of(&c, cost, |_| true).await, "USD 0.0147 (2 billable)");
    text_of(&c, r#"[data-testid="live"]"#, |t| t.starts_with("live")).await;
    // The failed follow-up is in the dead letters.
    text_of(&c, "#dead tbody", |t| t.contains("failed-alert")).await;
    text_of(&c, "#recent tbody", |t| t.contains(FIXTURE_MESSAGE_ID)).await;
    let screenshot = c.screenshot().await.unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    // CARGO_TARGET_DIR may put the build elsewhere: the screenshot still goes here.
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("ui-dashboard.png"), screenshot).unwrap();

    // Search by order id finds both messages of the order; by message id opens the timeline.
    fill(&c, "#q", "ORD123").await;
    click(&c, "#search button").await;
    text_of(&c, "#results", |t| {
        t.contains(FIXTURE_MESSAGE_ID) && t.contains("failed")
    })
    .await;
    fill(&c, "#q", FIXTURE_MESSAGE_ID).await;
    click(&c, "#search button").await;
    text_of(&c, r#"[data-testid="timeline-id"]"#, |t| {
        t == FIXTURE_MESSAGE_ID
    })
    .await;
    text_of(&c, "#timeline", |t| {
        t.contains("cart-read") && t.contains("delivered")
    })
    .await;

    // Replies and opt-outs: counted per campaign, and shown in the message's timeline.
    let replied = r#"[data-value="abandoned_cart"] [data-testid="count-replied"]"#;
    text_of(&c, replied, |t| t == "1").await;
    let opted_out = r#"[data-value="abandoned_cart"] [data-testid="count-opted-out"]"#;
    text_of(&c, opted_out, |t| t == "1").await;
    fill(&c, "#q", FIXTURE_MESSAGE_ID).await;
    click(&c, "#search button").await;
    text_of(&c, "#timeline", |t| {
        t.contains("reply (button)")
            && t.contains("“Buy now”")
            && t.contains("payload BUY_NOW")
            && t.contains("opt-out: stop (bik)")
    })
    .await;
    text_of(&c, r#"[data-testid="opted-out"]"#, |t| {
        t.contains("opted out")
    })
    .await;

    // Failures show the provider's code, in the funnel's list and on the message.
    let reasons = r#"[data-value="reengage"] [data-testid="failure-reason"]"#;
    text_of(&c, reasons, |t| {
        t.starts_with("130472 ") && t.ends_with("(1)")
    })
    .await;
    fill(&c, "#q", FAILED_131047).await;
    click(&c, "#search button").await;
    text_of(&c, r#"[data-testid="failure"]"#, |t| {
        t.starts_with("131047 Re-engagement message") && t.contains("24 hours")
    })
    .await;
    text_of(&c, "#timeline .detail", |t| t.starts_with("131047")).await;

    // Retry from the dead letters: the action is attempted again (and dies again).
    click(&c, "#dead tbody button").await;
    text_of(&c, "#dead tbody tr td:nth-child(4)", |t| t == "2").await;

    c.set_window_size(390, 1400).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(target.join("ui-phone.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();
}
