//! Forwarding, measured (run by `bench/forward.sh`): flowhook in this process (durable `sync`
//! store in a temporary directory, one HTTP worker, `store.backend` from the environment) with
//! two `[[forwards]]` to a local consumer, fed BIK `read` webhooks at a steady rate.
//!
//! `cargo run --release --example forward_lag -- <rate/s> <seconds> [outage seconds] [forward rate/s]`
//!
//! - Without an outage: the lag from a webhook's 200 to each forward's delivery of it.
//! - With one: the consumer answers 503 for the first `outage` seconds, then 200; one forward,
//!   limited to `forward rate` calls per second, with the retry schedule 1, 2, 4, ... 64 s. It
//!   reports whether every accepted event was delivered, how long the backlog took to drain
//!   once the consumer was back, and the most deliveries the consumer got in one second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowhook::config::{ForwardEvent, ForwardSettings, Secret, Settings, StoreBackend};
use flowhook::startup::Application;
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SECRET: &str = "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRlc3RzIQ==";

/// (forward path, message id) -> when delivered.
type Seen = Arc<Mutex<HashMap<(String, String), Instant>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let outage: u64 = args.next().map_or(Ok(0), |a| a.parse())?;
    let forward_rate: f64 = args.next().map_or(Ok(200.0), |a| a.parse())?;

    let received: Seen = Arc::default();
    let up = Arc::new(AtomicBool::new(outage == 0));
    let mock = MockServer::start().await;
    let (seen, up_now) = (Arc::clone(&received), Arc::clone(&up));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |req: &Request| {
            if !up_now.load(Ordering::Relaxed) {
                return ResponseTemplate::new(503);
            }
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if let Some(id) = body["message_id"].as_str() {
                let key = (req.url.path().to_owned(), id.to_owned());
                seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
            }
            ResponseTemplate::new(200)
        })
        .mount(&mock)
        .await;

    let dir = tempfile::tempdir()?;
    let paths: Vec<&str> = if outage > 0 {
        vec!["/a"]
    } else {
        vec!["/a", "/b"]
    };
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 1;
    settings.store.path = dir.path().join("store");
    if std::env::var("FLOWHOOK__STORE__BACKEND").as_deref() == Ok("fjall") {
        settings.store.backend = StoreBackend::Fjall;
    }
    settings.api.token = Secret::new("bench-token");
    settings.providers.bik.basic_auth = vec![Secret::new("bench-key")];
    settings.log.level = "warn".into();
    settings.forwards = paths
        .iter()
        .map(|path| ForwardSettings {
            name: path.trim_start_matches('/').into(),
            url: format!("{}{path}", mock.uri()),
            secret: Some(Secret::new(SECRET)),
            events: ForwardEvent::all(),
            when: Default::default(),
            timeout_ms: 5_000,
            max_in_flight: 32,
            rate_per_second: if outage > 0 { forward_rate } else { 0.0 },
        })
        .collect();
    if outage > 0 {
        settings.dispatch.retry_schedule_seconds = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
    }
    let app = Application::build(settings).await?;
    let address = format!("http://127.0.0.1:{}/webhooks/bik", app.port());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    // Idle pooled connections are dropped before actix's 5 s keep-alive ends (hyper #2136).
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(4))
        .build()?;
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    if outage > 0 {
        let up = Arc::clone(&up);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(outage)).await;
            up.store(true, Ordering::Relaxed);
        });
    }
    let mut posts = Vec::with_capacity(total as usize);
    for i in 0..total {
        ticker.tick().await;
        let (client, address, accepted) = (client.clone(), address.clone(), accepted.clone());
        posts.push(tokio::spawn(async move {
            let id = format!("wamid.FWD{i:08}==");
            let body = format!(
                r#"[{{"eventName":"message-status-update","id":"e{i}","eventInfo":{{"messageId":"{id}","createdAt":"2026-11-21T10:00:00.000Z","channelId":"whatsapp","status":"read","assetValue":"+919090909090","callbackData":"{{\"order_id\":\"O{i}\",\"campaign\":\"bench\"}}"}}}}]"#
            );
            let resp = client
                .post(&address)
                .header("Authorization", "Basic bench-key")
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    accepted.lock().unwrap().insert(id, Instant::now());
                    false
                }
                _ => true,
            }
        }));
    }
    let mut errors = 0;
    for post in posts {
        errors += usize::from(post.await?);
    }
    let sent_for = started.elapsed();
    let expected = accepted.lock().unwrap().len() * paths.len();
    // Wait for every delivery: the backlog of an outage takes its time at the forward's rate.
    let wait = Duration::from_secs(if outage > 0 { 300 } else { 30 });
    let deadline = Instant::now() + wait;
    while received.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop(true).await;
    let _ = server.await;

    let accepted = accepted.lock().unwrap();
    let received = received.lock().unwrap();
    println!(
        "webhooks: {total} at {rate}/s ({:.1} s), errors: {errors}; forwards: {}",
        sent_for.as_secs_f64(),
        paths.len()
    );
    println!(
        "deliveries received: {} of {expected} (every accepted event, each forward)",
        received.len()
    );
    if outage == 0 {
        let mut lags: Vec<f64> = received
            .iter()
            .filter_map(|((_, id), got)| {
                let at = accepted.get(id)?;
                // A delivery may land before its webhook's 200 reaches the client.
                Some(got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        if !lags.is_empty() {
            let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
            println!(
                "lag accepted -> delivered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                pct(0.5),
                pct(0.99),
                lags[lags.len() - 1]
            );
        }
    } else {
        let back = started + Duration::from_secs(outage);
        let mut per_second: HashMap<u64, usize> = HashMap::new();
        let mut last = back;
        for got in received.values() {
            last = last.max(*got);
            *per_second
                .entry(got.saturating_duration_since(started).as_secs())
                .or_default() += 1;
        }
        let peak = per_second.values().max().copied().unwrap_or(0);
        println!(
            "consumer down for the first {outage} s; backlog drained {:.1} s after it was back; \
             at most {peak} deliveries in one second (forward rate_per_second {forward_rate})",
            last.saturating_duration_since(back).as_secs_f64()
        );
    }
    Ok(())
}
