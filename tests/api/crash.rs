//! The real binary, killed with SIGKILL in the middle of a stream of webhooks that trigger
//! follow-ups against a target that fails its first calls, then restarted on the same store.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{json, Value};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::process::{free_port, start};

const WEBHOOKS: usize = 3000;
const KILL_AFTER: usize = 1200;
const MAX_IN_FLIGHT: usize = 8;
const FAIL_FIRST: usize = 300;

/// Fails the first `FAIL_FIRST` calls with 503, then answers 200; records every call as
/// (message id, idempotency key, answered 200).
#[derive(Clone, Default)]
struct Target {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String, bool)>>>,
}

impl Respond for Target {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let ok = n >= FAIL_FIRST;
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.seen.lock().unwrap().push((
            body["message"].as_str().unwrap_or_default().to_owned(),
            key,
            ok,
        ));
        ResponseTemplate::new(if ok { 200 } else { 503 })
    }
}

/// Writes a config for a real process on a free port with one `http.post` rule on `read` to
/// `{mock}/hook`; returns its path and the base URL.
fn write_config(dir: &Path, mock: &str, extra: &str) -> (std::path::PathBuf, String) {
    let port = free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
workers = 2
[store]
path = "{store}"
durability = "sync"
[api]
token = "{API_TOKEN}"
[providers.bik]
basic_auth = ["{BIK_KEY}"]
[targets.http]
max_in_flight = {MAX_IN_FLIGHT}
rate_per_second = 0
timeout_ms = 5000
[log]
level = "info"
{extra}
[[rules]]
name = "hook"
on = "status"
statuses = ["read"]
action = "http.post"
[rules.params]
url = "{mock}/hook"
body = {{ message = "{{{{message_id}}}}", order = "{{{{callback.order_id}}}}" }}
"#,
            store = dir.join("store").display(),
        ),
    )
    .unwrap();
    (config, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_loses_no_acknowledged_webhook_and_no_follow_up() {
    let started = Instant::now();
    let mock = MockServer::start().await;
    let target = Target::default();
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(target.clone())
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (config, address) = write_config(
        dir.path(),
        &mock.uri(),
        "[dispatch]\nretry_schedule_seconds = [0.05, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]\njitter = 0.1",
    );
    let log = dir.path().join("flowhook.log");
    let mut process = start(&config, &address, &log).await;

    // A stream of webhooks, 32 at a time; SIGKILL once KILL_AFTER have been acknowledged.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let killed = Arc::new(Mutex::new(false));
    let now = Utc::now();
    let pid = process.0.id();
    futures_util::stream::iter(0..WEBHOOKS)
        .for_each_concurrent(32, |i| {
            let (client, address, acked, killed) = (
                client.clone(),
                address.clone(),
                acked.clone(),
                killed.clone(),
            );
            async move {
                let id = format!("wamid.CRASH{i:05}==");
                let body = bik_status(&id, "read", now, &json!({"order_id": format!("O{i}")}));
                let resp = client
                    .post(format!("{address}/webhooks/bik"))
                    .header("Authorization", format!("Basic {BIK_KEY}"))
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if matches!(&resp, Ok(r) if r.status().as_u16() == 200) {
                    let mut acked = acked.lock().unwrap();
                    acked.push(id);
                    let mut killed = killed.lock().unwrap();
                    if acked.len() >= KILL_AFTER && !*killed {
                        *killed = true;
                        // SIGKILL: no handler, no flush, nothing graceful.
                        let status = Command::new("kill").args(["-9", &pid.to_string()]).status();
                        assert!(status.unwrap().success());
                    }
                }
            }
        })
        .await;
    let _ = process.0.wait();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} acknowledged",
        acked.len()
    );
    let calls_before_restart = target.calls.load(Ordering::SeqCst);

    eprintln!("crash test: killed at {:?}", started.elapsed());
    let process = start(&config, &address, &log).await;
    eprintln!("crash test: restarted at {:?}", started.elapsed());
    // Every acknowledged webhook is in the store.
    let api = |path: String| {
        client
            .get(format!("{address}{path}"))
            .bearer_auth(API_TOKEN)
            .send()
    };
    for id in &acked {
        let resp = api(format!("/v1/messages/{}", encode_segment(id)))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "acknowledged {id} was lost");
    }
    eprintln!("crash test: checked at {:?}", started.elapsed());
    // Every follow-up they triggered is eventually delivered.
    let deadline = Instant::now() + Duration::from_secs(40);
    let acked_set: HashSet<&String> = acked.iter().collect();
    loop {
        let delivered: HashSet<String> = target
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(id, _, _)| id.clone())
            .collect();
        let missing = acked_set
            .iter()
            .filter(|id| !delivered.contains(**id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged webhooks never got their follow-up; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = target.seen.lock().unwrap().clone();
    let mut keys: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut successes: HashMap<&str, usize> = HashMap::new();
    for (id, key, ok) in &seen {
        keys.entry(id).or_default().insert(key);
        if *ok {
            *successes.entry(id).or_default() += 1;
        }
    }
    assert!(
        keys.values().all(|k| k.len() == 1),
        "one Idempotency-Key per follow-up"
    );
    let repeated = successes.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= MAX_IN_FLIGHT,
        "{repeated} follow-ups were delivered twice; only calls in flight at the kill may be"
    );
    let page: Value = api("/v1/actions?state=delivered&limit=1".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["actions"][0]["state"], "delivered");
    drop(process);
    eprintln!(
        "crash test: {} acknowledged of {WEBHOOKS}, {calls_before_restart} calls before the kill, \
         {} calls in all, {repeated} delivered twice, {:?}",
        acked.len(),
        seen.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_call_in_flight_finish_and_exits_0() {
    let mock = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |_: &Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(200).set_delay(Duration::from_millis(1500))
        })
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (config, address) = write_config(dir.path(), &mock.uri(), "");
    let log = dir.path().join("flowhook.log");
    let mut process = start(&config, &address, &log).await;
    let client = reqwest::Client::new();
    let id = "wamid.SIGTERM==";
    let resp = client
        .post(format!("{address}/webhooks/bik"))
        .header("Authorization", format!("Basic {BIK_KEY}"))
        .body(bik_status(
            id,
            "read",
            Utc::now(),
            &json!({"order_id": "O1"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = process.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || process.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "log: {}",
        std::fs::read_to_string(&log).unwrap()
    );

    let _process = start(&config, &address, &log).await;
    let message: Value = client
        .get(format!("{address}/v1/messages/{}", encode_segment(id)))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let action = &message["actions"][0];
    assert_eq!(
        action["state"], "delivered",
        "finished before the exit: {action}"
    );
    assert_eq!(action["attempts"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "not sent again after the restart"
    );
}

/// What SIGKILL leaves of acknowledged webhooks: all of them with `sync`; with `relaxed` and a
/// flush interval longer than the test, the ones not flushed yet are gone. That the second
/// loses some is what shows this kind of test can tell a `sync` that waits for the disk from
/// one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_what_sync_acknowledged_and_drops_what_relaxed_had_not_flushed() {
    const N: usize = 20;
    let mut kept = Vec::new();
    for durability in ["sync", "relaxed"] {
        let dir = tempfile::tempdir().unwrap();
        let (config, address) = write_config(dir.path(), "http://127.0.0.1:9", "");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "durability = \"sync\"",
            &format!("durability = \"{durability}\"\nrelaxed_flush_ms = 600000"),
        );
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("flowhook.log");
        let mut process = start(&config, &address, &log).await;
        let client = reqwest::Client::new();
        let now = Utc::now();
        let ids: Vec<String> = (0..N).map(|i| format!("wamid.KILL{i:03}==")).collect();
        for id in &ids {
            let body = bik_status(id, "delivered", now, &json!({}));
            let resp = crate::process::post_bik_to(&client, &address, body).await;
            assert_eq!(resp.status().as_u16(), 200);
        }
        process.0.kill().unwrap(); // SIGKILL: no flush on the way out
        process.0.wait().unwrap();
        let _process = start(&config, &address, &log).await;
        let mut found = 0;
        for id in &ids {
            found += usize::from(crate::process::has_message(&client, &address, id).await);
        }
        kept.push(found);
    }
    assert_eq!(kept[0], N, "sync lost acknowledged webhooks: {kept:?}");
    assert!(
        kept[1] < N,
        "relaxed without a flush kept everything, so SIGKILL did not test durability: {kept:?}"
    );
}
