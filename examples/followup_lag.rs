//! Lag from "webhook accepted" (its 200 received) to "follow-up received" by a local target.
//!
//! Runs flowhook in-process (durable `sync` store in a temporary directory, one HTTP worker)
//! with one `http.post` rule on `read`, a local wiremock target, and posts BIK webhooks at a
//! steady rate. Run with `bench/followup-lag.sh` or
//! `cargo run --release --example followup_lag -- [rate per second] [seconds]`.
//!
//! With `FLOWHOOK_URL` set it posts to that instance instead (key `BIK_KEY`, default
//! `bench-key`), and its target listens on `MOCK_PORT`: the instance's rule on `read` must
//! post `{"message": "{{message_id}}"}` to `http://127.0.0.1:$MOCK_PORT/hook`
//! (`bench/run.sh` does this).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowhook::config::{Secret, Settings};
use flowhook::startup::Application;
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;

    let received: Seen = Arc::default();
    let external = std::env::var("FLOWHOOK_URL").ok();
    let mock = match std::env::var("MOCK_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        Some(port) => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            MockServer::builder().listener(listener).start().await
        }
        None => MockServer::start().await,
    };
    let seen = Arc::clone(&received);
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if let Some(id) = body["message"].as_str() {
                seen.lock().unwrap().insert(id.to_owned(), Instant::now());
            }
            ResponseTemplate::new(200)
        })
        .mount(&mock)
        .await;

    let dir = tempfile::tempdir()?;
    let key = std::env::var("BIK_KEY").unwrap_or_else(|_| "bench-key".into());
    let (address, stop) = match &external {
        Some(url) => (format!("{url}/webhooks/bik"), None),
        None => {
            let (address, handle, server) = in_process(&mock, &dir).await?;
            (address, Some((handle, server)))
        }
    };
    // actix closes a keep-alive connection after 5 idle seconds; a pooled connection kept longer
    // can be picked for a request just as the server closes it, and hyper then fails that
    // request (`IncompleteMessage`, hyper #2136) without it ever reaching flowhook. A real
    // provider retries such a request; here it would count as an error of flowhook's.
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(4))
        .build()?;
    let accepted: Seen = Arc::default();
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut posts = Vec::with_capacity(total as usize);
    let mut errors = 0usize;
    for i in 0..total {
        ticker.tick().await;
        let (client, address, accepted, key) = (
            client.clone(),
            address.clone(),
            accepted.clone(),
            key.clone(),
        );
        posts.push(tokio::spawn(async move {
            let id = format!("wamid.LAG{i:08}==");
            let body = format!(
                r#"[{{"eventName":"message-status-update","id":"e{i}","eventInfo":{{"messageId":"{id}","createdAt":"2026-11-21T10:00:00.000Z","channelId":"whatsapp","status":"read","assetValue":"+919090909090","callbackData":"{{\"order_id\":\"O{i}\",\"campaign\":\"bench\"}}"}}}}]"#
            );
            let resp = client
                .post(&address)
                .header("Authorization", format!("Basic {key}"))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    accepted.lock().unwrap().insert(id, Instant::now());
                    None
                }
                Ok(r) => Some(format!("answered {}", r.status())),
                Err(e) => Some(format!("{e:?}")),
            }
        }));
    }
    let mut why: Vec<String> = Vec::new();
    for post in posts {
        if let Some(reason) = post.await? {
            errors += 1;
            if why.len() < 3 {
                why.push(reason);
            }
        }
    }
    for reason in &why {
        eprintln!("a webhook failed: {reason}");
    }
    let sent_for = started.elapsed();
    // Wait for the follow-ups to land.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < accepted.lock().unwrap().len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some((handle, server)) = stop {
        handle.stop(true).await;
        let _ = server.await;
    }

    let accepted = accepted.lock().unwrap();
    let received = received.lock().unwrap();
    let mut lags: Vec<f64> = accepted
        .iter()
        .filter_map(|(id, at)| {
            let got = received.get(id)?;
            // A follow-up may land before its webhook's 200 reaches the client.
            Some(got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "webhooks: {total} at {rate}/s ({:.1} s), errors: {errors}",
        sent_for.as_secs_f64()
    );
    println!(
        "follow-ups received: {} of {} accepted",
        lags.len(),
        accepted.len()
    );
    if !lags.is_empty() {
        println!(
            "lag accepted -> follow-up received: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(0.5),
            pct(0.99),
            lags[lags.len() - 1]
        );
    }
    Ok(())
}

type Running = (
    String,
    actix_web::dev::ServerHandle,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// flowhook in this process, on a temporary sync store, with the rule posting to `mock`.
async fn in_process(mock: &MockServer, dir: &tempfile::TempDir) -> anyhow::Result<Running> {
    let rules = format!(
        r#"
[targets.http]
max_in_flight = 32
rate_per_second = 0
[[rules]]
name = "lag"
on = "status"
statuses = ["read"]
action = "http.post"
[rules.params]
url = "{}/hook"
body = {{ message = "{{{{message_id}}}}" }}
"#,
        mock.uri()
    );
    let parsed = Settings::from_toml_str(&rules)?;
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 1;
    settings.store.path = dir.path().join("store");
    settings.api.token = Secret::new("bench-token");
    settings.providers.bik.basic_auth = vec![Secret::new("bench-key")];
    settings.targets = parsed.targets;
    settings.rules = parsed.rules;
    settings.log.level = "warn".into();
    let app = Application::build(settings).await?;
    let address = format!("http://127.0.0.1:{}/webhooks/bik", app.port());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    Ok((address, handle, server))
}
