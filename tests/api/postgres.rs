//! What only the Postgres backend has: several instances on one database, a database that
//! goes away, moving data between the backends, schema versions. These need a real Postgres:
//! `scripts/test-postgres.sh` starts a throwaway cluster and runs them (CI does).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{json, Value};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::process::{free_port, post_bik_to, start, Process};

const NEEDS_POSTGRES: &str =
    "FLOWHOOK_TEST_POSTGRES is not set: run these with scripts/test-postgres.sh";

/// A fresh database on the test cluster.
async fn database() -> String {
    postgres_database().await.expect(NEEDS_POSTGRES)
}

/// A config for a real process on a free port on `database`, with an `http.post` rule on
/// `read` to `{target}/hook`; returns its path and the base URL.
fn write_config(
    dir: &Path,
    name: &str,
    database: &str,
    target: &str,
    extra: &str,
) -> (std::path::PathBuf, String) {
    let port = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
workers = 2
[store]
backend = "postgres"
purge_interval_seconds = 3600
[store.postgres]
url = "{database}"
max_connections = 8
[api]
token = "{API_TOKEN}"
[providers.bik]
basic_auth = ["{BIK_KEY}"]
[targets.http]
max_in_flight = 8
rate_per_second = 0
timeout_ms = 2000
[dispatch]
lease_seconds = 3
retry_schedule_seconds = [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
jitter = 0.1
[log]
level = "info"
{extra}
[[rules]]
name = "hook"
on = "status"
statuses = ["read"]
action = "http.post"
[rules.params]
url = "{target}/hook"
body = {{ message = "{{{{message_id}}}}" }}
"#
        ),
    )
    .unwrap();
    (config, format!("http://127.0.0.1:{port}"))
}

/// Answers after `delay`, recording every call as (message id, idempotency key).
#[derive(Clone)]
struct Target {
    delay: Duration,
    calls: Arc<Mutex<Vec<(String, String)>>>,
}

impl Target {
    async fn mount(delay: Duration) -> (MockServer, Target) {
        let mock = MockServer::start().await;
        let target = Target {
            delay,
            calls: Arc::default(),
        };
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(target.clone())
            .mount(&mock)
            .await;
        (mock, target)
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until every message in `ids` has been called for at least once.
    async fn wait_for(&self, ids: &HashSet<String>, within: Duration, log: &Path) {
        let deadline = Instant::now() + within;
        loop {
            let called: HashSet<String> = self.calls().into_iter().map(|(id, _)| id).collect();
            let missing = ids.iter().filter(|id| !called.contains(*id)).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} follow-ups were never called; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Respond for Target {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.calls
            .lock()
            .unwrap()
            .push((body["message"].as_str().unwrap_or_default().to_owned(), key));
        ResponseTemplate::new(200).set_delay(self.delay)
    }
}

async fn get_json(client: &reqwest::Client, address: &str, path: &str) -> Value {
    client
        .get(format!("{address}{path}"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn two_instances_share_the_work_and_the_survivor_delivers_what_a_killed_one_held() {
    const WEBHOOKS: usize = 120;
    let db = database().await;
    // Slow answers, so that the killed instance certainly holds calls in flight.
    let (mock, target) = Target::mount(Duration::from_millis(700)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("flowhook.log");
    let (config_a, a) = write_config(dir.path(), "a", &db, &mock.uri(), "");
    let (config_b, b) = write_config(dir.path(), "b", &db, &mock.uri(), "");
    let mut first = start(&config_a, &a, &log).await;
    let _second = start(&config_b, &b, &log).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let now = Utc::now();
    let ids: Vec<String> = (0..WEBHOOKS)
        .map(|i| format!("wamid.SHARE{i:04}=="))
        .collect();
    // The first half alternates between the two instances.
    for (i, id) in ids[..WEBHOOKS / 2].iter().enumerate() {
        let to = if i % 2 == 0 { &a } else { &b };
        let resp = post_bik_to(&client, to, bik_status(id, "read", now, &json!({}))).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
    // Kill the first while both are calling (each holds up to 8 calls of 700 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.calls().len() < 12 {
        assert!(Instant::now() < deadline, "no calls started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill = target.calls().len();
    // The rest goes to the survivor.
    for id in &ids[WEBHOOKS / 2..] {
        let resp = post_bik_to(&client, &b, bik_status(id, "read", now, &json!({}))).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
    let all: HashSet<String> = ids.iter().cloned().collect();
    target.wait_for(&all, Duration::from_secs(60), &log).await;
    // Every action is recorded as delivered by the survivor.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = get_json(&client, &b, "/v1/actions?state=delivered&limit=500").await;
        if page["actions"].as_array().unwrap().len() == WEBHOOKS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every action was recorded delivered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = target.calls();
    let mut keys: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut per_message: HashMap<&str, usize> = HashMap::new();
    for (id, key) in &calls {
        keys.entry(id).or_default().insert(key);
        *per_message.entry(id).or_default() += 1;
    }
    assert!(
        keys.values().all(|k| k.len() == 1),
        "one Idempotency-Key per follow-up"
    );
    let repeated: Vec<_> = per_message.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.len() <= 8,
        "only calls the killed instance held may be repeated, at most its 8 in flight: {repeated:?}"
    );
    eprintln!(
        "two instances: {} calls at the kill, {} in all, {} repeated after the lease",
        at_kill,
        calls.len(),
        repeated.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn an_event_posted_to_two_instances_at_once_is_accepted_once_and_its_rule_fires_once() {
    const MESSAGES: usize = 60;
    let db = database().await;
    let (mock, target) = Target::mount(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("flowhook.log");
    let timer = r#"
[[rules]]
name = "nudge"
on = "missing_status"
statuses = ["failed"]
since = "sent"
after_seconds = 1
action = "http.post"
[rules.params]
url = "TARGET/nudge"
body = { message = "{{message_id}}" }
"#
    .replace("TARGET", &mock.uri());
    let (config_a, a) = write_config(dir.path(), "a", &db, &mock.uri(), &timer);
    let (config_b, b) = write_config(dir.path(), "b", &db, &mock.uri(), &timer);
    let _first = start(&config_a, &a, &log).await;
    let _second = start(&config_b, &b, &log).await;
    let client = reqwest::Client::new();
    let now = Utc::now();
    let ids: Vec<String> = (0..MESSAGES)
        .map(|i| format!("wamid.TWICE{i:04}=="))
        .collect();
    // Each event goes to both instances at the same moment; a message's events (sent, then
    // read, with the same timestamp as Meta often sends them) race each other too.
    let totals = Arc::new(Mutex::new((0u64, 0u64)));
    futures_util::stream::iter(
        ids.iter()
            .flat_map(|id| ["sent", "read"].map(|status| (id.clone(), status))),
    )
    .for_each_concurrent(16, |(id, status)| {
        let (client, a, b, totals) = (client.clone(), a.clone(), b.clone(), totals.clone());
        async move {
            let body = bik_status(&id, status, now, &json!({"order_id": id}));
            let (x, y) = tokio::join!(
                post_bik_to(&client, &a, body.clone()),
                post_bik_to(&client, &b, body)
            );
            for resp in [x, y] {
                assert_eq!(resp.status().as_u16(), 200);
                let (accepted, duplicates, _, _) = counts(resp).await;
                let mut c = totals.lock().unwrap();
                c.0 += accepted;
                c.1 += duplicates;
            }
        }
    })
    .await;
    let (accepted, duplicates) = *totals.lock().unwrap();
    assert_eq!(accepted, 2 * MESSAGES as u64, "each event accepted once");
    assert_eq!(
        duplicates,
        2 * MESSAGES as u64,
        "and a duplicate for the other"
    );
    for id in &ids {
        let m = get_json(&client, &a, &format!("/v1/messages/{}", encode_segment(id))).await;
        assert_eq!(m["status"], "read", "{m}");
        assert_eq!(m["events"].as_array().unwrap().len(), 2, "{m}");
    }
    // The status rule fired once per message, and so did the timer (no failure came).
    let all: HashSet<String> = ids.iter().cloned().collect();
    target.wait_for(&all, Duration::from_secs(30), &log).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = target.calls();
    assert_eq!(
        calls.len(),
        2 * MESSAGES,
        "one status follow-up and one timer per message, from either instance"
    );
    let stats = get_json(&client, &b, "/v1/actions?state=delivered&limit=500").await;
    assert_eq!(stats["actions"].as_array().unwrap().len(), 2 * MESSAGES);
}

/// A TCP proxy in front of the test cluster that can be cut, to take the database away
/// from a running instance and give it back.
struct Proxy {
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16, upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { task }
    }

    /// Closes the listener and every connection through it.
    fn cut(self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn without_its_database_an_instance_is_not_ready_and_answers_503_never_200() {
    let db = database().await;
    let url = reqwest::Url::parse(&db).unwrap();
    let upstream = format!("127.0.0.1:{}", url.port().unwrap());
    let port = free_port();
    let mut through = url.clone();
    through.set_port(Some(port)).unwrap();
    let proxy = Proxy::start(port, upstream.clone()).await;
    let app = spawn_app_with(|s| {
        s.store.postgres.url = flowhook::config::Secret::new(through.as_str());
        s.store.postgres.connect_timeout_ms = 500;
    })
    .await;
    let body = || bik_status("wamid.AWAY==", "sent", Utc::now(), &json!({}));
    assert_eq!(app.post_bik(body()).await.status().as_u16(), 200);
    assert_eq!(app.get_public("/readyz").await.status().as_u16(), 200);

    proxy.cut();
    let ready = app.get_public("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);
    let why: Value = ready.json().await.unwrap();
    assert!(
        why["reason"].as_str().unwrap().contains("database"),
        "{why}"
    );
    let resp = app
        .post_bik(bik_status("wamid.AWAY2==", "sent", Utc::now(), &json!({})))
        .await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));

    // Back: ready again, and the refused event is accepted when the provider retries it.
    let _proxy = Proxy::start(port, upstream).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get_public("/readyz").await.status().as_u16() != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = app
        .post_bik(bik_status("wamid.AWAY2==", "sent", Utc::now(), &json!({})))
        .await;
    assert_eq!(counts(resp).await.0, 1);
}

/// Runs a `flowhook` subcommand on `config`, with `input` on stdin; returns its stdout, and
/// stderr when it fails.
fn cli(config: &Path, args: &[&str], input: Option<&Path>) -> Result<Vec<u8>, String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowhook"));
    command.arg("--config").arg(config).args(args);
    if let Some(input) = input {
        command.stdin(std::fs::File::open(input).unwrap());
    }
    let out = command.output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn export_from_sled_imports_into_postgres_and_back_unchanged() {
    let db = database().await;
    let (mock, _target) = Target::mount(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("flowhook.log");
    // A sled instance with messages, follow-ups and a quarantined event.
    let (pg_config, _) = write_config(dir.path(), "pg", &db, &mock.uri(), "");
    let sled_config = dir.path().join("sled.toml");
    let text = std::fs::read_to_string(&pg_config).unwrap().replace(
        "backend = \"postgres\"",
        &format!("path = \"{}\"", dir.path().join("store").display()),
    );
    std::fs::write(&sled_config, text).unwrap();
    let address = {
        let text = std::fs::read_to_string(&sled_config).unwrap();
        let bind = text.lines().find(|l| l.starts_with("bind")).unwrap();
        format!("http://{}", bind.split('"').nth(1).unwrap())
    };
    let process: Process = start(&sled_config, &address, &log).await;
    let client = reqwest::Client::new();
    let now = Utc::now();
    for i in 0..30 {
        let id = format!("wamid.MOVE{i:03}==");
        let status = if i % 3 == 0 { "read" } else { "delivered" };
        let body = bik_status(
            &id,
            status,
            now,
            &json!({"order_id": format!("O{i}"), "campaign": "c"}),
        );
        assert_eq!(
            post_bik_to(&client, &address, body).await.status().as_u16(),
            200
        );
    }
    let resp = post_bik_to(
        &client,
        &address,
        r#"{"event":"message-status","data":{}}"#.into(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    // An opt-out, kept on its message and for its recipient.
    let opted_out = crate::helpers::fixture("bik/opted-out.json").replace(
        "wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==",
        "wamid.MOVE000==",
    );
    let resp = post_bik_to(&client, &address, opted_out).await;
    assert_eq!(resp.status().as_u16(), 200);
    // Let the follow-ups be delivered, so actions in several states are moved.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(process);

    let from_sled = dir.path().join("sled.jsonl");
    std::fs::write(&from_sled, cli(&sled_config, &["export"], None).unwrap()).unwrap();
    cli(&pg_config, &["import"], Some(&from_sled)).unwrap();
    let from_pg = cli(&pg_config, &["export"], None).unwrap();
    let sled_text = std::fs::read_to_string(&from_sled).unwrap();
    for (n, (pg, sled)) in String::from_utf8(from_pg.clone())
        .unwrap()
        .lines()
        .zip(sled_text.lines())
        .enumerate()
    {
        assert_eq!(
            pg, sled,
            "line {n}: what Postgres exports is what sled exported"
        );
    }
    assert_eq!(
        (
            from_pg.len(),
            from_pg.iter().filter(|b| **b == b'\n').count()
        ),
        (sled_text.len(), sled_text.lines().count()),
        "{}",
        String::from_utf8_lossy(&from_pg)
    );
    let lines = from_pg
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(
        lines, 32,
        "30 messages, one quarantined event, one recipient's opt-out"
    );
    // A second import into the same database is refused.
    let again = cli(&pg_config, &["import"], Some(&from_sled)).unwrap_err();
    assert!(again.contains("empty"), "{again}");
    // And back into an empty sled store.
    let back_config = dir.path().join("back.toml");
    let text = std::fs::read_to_string(&sled_config)
        .unwrap()
        .replace("/store\"", "/back\"");
    std::fs::write(&back_config, text).unwrap();
    let pg_export = dir.path().join("pg.jsonl");
    std::fs::write(&pg_export, &from_pg).unwrap();
    cli(&back_config, &["import"], Some(&pg_export)).unwrap();
    assert_eq!(cli(&back_config, &["export"], None).unwrap(), from_pg);
    // The imported data is served: stats and lookups from the Postgres instance.
    let (_, pg_address) = write_config(dir.path(), "pg2", &db, &mock.uri(), "");
    let _pg = start(&dir.path().join("pg2.toml"), &pg_address, &log).await;
    let stats = get_json(&client, &pg_address, "/v1/stats?group_by=callback.campaign").await;
    assert_eq!(stats["groups"][0]["messages"], 30, "{stats}");
    let found = get_json(&client, &pg_address, "/v1/messages?callback.order_id=O3").await;
    assert_eq!(found["messages"][0]["status"], "read", "{found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn migrate_creates_the_schema_and_a_newer_one_is_refused() {
    let db = database().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), "pg", &db, "http://127.0.0.1:9", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_connections = 8",
        "max_connections = 8\nmigrate = false",
    );
    std::fs::write(&config, text).unwrap();
    // Without migrations applied, serve with migrate = false refuses and says what to run.
    let refused = cli(&config, &["check-store"], None).unwrap_err();
    assert!(refused.contains("flowhook migrate"), "{refused}");
    let said = String::from_utf8(cli(&config, &["migrate"], None).unwrap()).unwrap();
    assert!(said.contains("version 3"), "{said}");
    // Running it again changes nothing.
    cli(&config, &["migrate"], None).unwrap();
    cli(&config, &["check-store"], None).unwrap();
    // A newer flowhook's schema.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for command in ["migrate", "check-store"] {
        let refused = cli(&config, &[command], None).unwrap_err();
        assert!(refused.contains("newer flowhook"), "{command}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn retention_runs_on_one_instance_at_a_time() {
    let db = database().await;
    let app = spawn_app_with(|s| {
        s.store.postgres.url = flowhook::config::Secret::new(db.as_str());
    })
    .await;
    let resp = app
        .post_bik(bik_status("wamid.OLD==", "sent", Utc::now(), &json!({})))
        .await;
    assert_eq!(counts(resp).await.0, 1);
    // A second instance's store on the same database (the store, without its janitor: the
    // purge is called by hand below, with cutoffs a day ahead, so everything is expired).
    let mut settings = flowhook::config::StoreSettings {
        backend: flowhook::config::StoreBackend::Postgres,
        ..Default::default()
    };
    settings.postgres.url = flowhook::config::Secret::new(db.as_str());
    let other = flowhook::store::Store::open(&settings, Default::default())
        .await
        .unwrap();
    let later = Utc::now() + chrono::Duration::days(1);
    // A third instance is purging: it holds retention's advisory lock.
    let mut purging = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock(x'666c6f77686f6f6b'::int8)")
        .execute(&mut purging)
        .await
        .unwrap();
    let skipped = other.purge(later, later).await.unwrap();
    assert_eq!(
        skipped.messages, 0,
        "purged while another instance held the lock"
    );
    assert!(app.message("wamid.OLD==").await.is_some());
    sqlx::query("SELECT pg_advisory_unlock(x'666c6f77686f6f6b'::int8)")
        .execute(&mut purging)
        .await
        .unwrap();
    let purged = other.purge(later, later).await.unwrap();
    assert_eq!(purged.messages, 1);
    assert!(app.message("wamid.OLD==").await.is_none());
    other.close().await.unwrap();
}

/// Group commit: requests that arrive together share transactions, each still gets its own
/// answer, and one that cannot be written fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn requests_that_arrive_together_share_a_commit_and_a_bad_one_fails_alone() {
    let db = database().await;
    // A row Postgres refuses: a stand-in for any request whose write fails.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let app = spawn_app_with(|s| {
        s.store.postgres.url = flowhook::config::Secret::new(db.as_str());
        s.server.workers = 2;
    })
    .await;
    sqlx::query("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (id <> 'wamid.POISON==')")
        .execute(&mut conn)
        .await
        .unwrap();
    let batch_sizes = |text: &str| {
        let m = parse_metrics(text);
        (
            m.get("flowhook_write_batch_size_sum")
                .copied()
                .unwrap_or(0.0),
            m.get("flowhook_write_batch_size_count")
                .copied()
                .unwrap_or(0.0),
        )
    };
    let before = batch_sizes(&app.get_public("/metrics").await.text().await.unwrap());
    let now = Utc::now();
    let ids: Vec<String> = (0..80)
        .map(|i| {
            if i == 40 {
                "wamid.POISON==".to_owned()
            } else {
                format!("wamid.TOGETHER{i}==")
            }
        })
        .collect();
    let answers = futures_util::future::join_all(
        ids.iter()
            .map(|id| app.post_bik(bik_status(id, "sent", now, &json!({"campaign": "c"})))),
    )
    .await;
    for (id, resp) in ids.iter().zip(answers) {
        if id == "wamid.POISON==" {
            assert_ne!(resp.status().as_u16(), 200, "the bad request fails");
        } else {
            assert_eq!(counts(resp).await, (1, 0, 0, 0), "{id}");
            assert!(app.message(id).await.is_some(), "{id}");
        }
    }
    assert!(app.message("wamid.POISON==").await.is_none());
    // Each request was one part; fewer transactions than parts means some were shared.
    let after = batch_sizes(&app.get_public("/metrics").await.text().await.unwrap());
    let (parts, batches) = (after.0 - before.0, after.1 - before.1);
    assert!(parts >= 80.0, "{parts} parts");
    assert!(batches < parts, "{batches} transactions for {parts} parts");
    // Written again the same, they are duplicates.
    let again = app
        .post_bik(bik_status(
            "wamid.TOGETHER1==",
            "sent",
            now,
            &json!({"campaign": "c"}),
        ))
        .await;
    assert_eq!(counts(again).await, (0, 1, 0, 0));
}

/// An idle instance hears at once about work another instance queued (a `NOTIFY` after that
/// one's commit), rather than at its next poll (500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn an_idle_instance_calls_at_once_for_work_another_instance_queued() {
    let db = database().await;
    let mock = MockServer::start().await;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let record = Arc::clone(&seen);
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if let Some(id) = body["id"].as_str() {
                record.lock().unwrap().insert(id.to_owned(), Instant::now());
            }
            ResponseTemplate::new(200)
        })
        .mount(&mock)
        .await;
    let rules = post_rule(
        "wake",
        "read",
        &format!("{}/hook", mock.uri()),
        "message_id",
    );
    let parsed = flowhook::config::Settings::from_toml_str(&rules).unwrap();
    let caller = spawn_app_with(|s| {
        s.rules = parsed.rules.clone();
        s.store.postgres.url = flowhook::config::Secret::new(db.as_str());
    })
    .await;
    // The other instance: a store on the same database, with the same rule, no dispatcher.
    let mut settings = flowhook::config::Settings::from_toml_str(&rules).unwrap();
    settings.store.backend = flowhook::config::StoreBackend::Postgres;
    settings.store.postgres.url = flowhook::config::Secret::new(db.as_str());
    let other = flowhook::store::Store::open(
        &settings.store,
        flowhook::startup::check(&settings).unwrap(),
    )
    .await
    .unwrap();
    let mut lags = Vec::new();
    for i in 0..5 {
        // Idle long enough that the caller's dispatcher is waiting for its next poll.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let id = format!("wamid.WAKE{i}==");
        let event: flowhook::domain::Event = serde_json::from_value(json!({
            "message_id": id, "provider": "bik", "kind": "status", "status": "read",
            "url": null, "at": "2026-11-21T10:00:00Z", "received_at": "2026-11-21T10:00:01Z",
            "event_id": format!("e-{id}"), "recipient": "+919090909090",
            "recipient_user_id": null, "participant": null, "channel": "whatsapp",
            "failure_code": null, "failure_reason": null, "callback": null
        }))
        .unwrap();
        let items = vec![flowhook::store::IngestItem::Event(Box::new(event))];
        let outcome = other
            .ingest(flowhook::domain::Provider::Bik, items, Utc::now())
            .await
            .unwrap();
        assert_eq!(outcome.accepted, 1);
        let queued = Instant::now();
        let deadline = queued + Duration::from_secs(5);
        let called = loop {
            if let Some(at) = seen.lock().unwrap().get(&id) {
                break *at;
            }
            assert!(Instant::now() < deadline, "{id} was never called for");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        lags.push(called.saturating_duration_since(queued));
    }
    lags.sort();
    // The poll alone would give about 250 ms on average, up to 500.
    assert!(
        lags[2] < Duration::from_millis(100),
        "median lag {:?} (all: {lags:?})",
        lags[2]
    );
    other.close().await.unwrap();
    drop(caller);
}

/// An instance killed with calls in flight takes them back as soon as it starts again (its
/// leases carry its instance id), instead of waiting for the leases to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: scripts/test-postgres.sh runs it"]
async fn a_restarted_instance_takes_back_its_own_calls_at_once() {
    const WEBHOOKS: usize = 12;
    let db = database().await;
    // Answers slow enough that calls are certainly in flight at the kill.
    let (mock, target) = Target::mount(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("flowhook.log");
    let (config, address) = write_config(dir.path(), "a", &db, &mock.uri(), "");
    // A lease far longer than the test may wait.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("lease_seconds = 3", "lease_seconds = 60");
    std::fs::write(&config, text).unwrap();
    let mut first = start(&config, &address, &log).await;
    let client = reqwest::Client::new();
    let now = Utc::now();
    let ids: HashSet<String> = (0..WEBHOOKS).map(|i| format!("wamid.BACK{i}==")).collect();
    for id in &ids {
        let resp = post_bik_to(&client, &address, bik_status(id, "read", now, &json!({}))).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.calls().len() < 4 {
        assert!(Instant::now() < deadline, "no calls started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed_at = Instant::now();
    let _again = start(&config, &address, &log).await;
    // Every follow-up is called well before the 60 s leases would run out.
    target.wait_for(&ids, Duration::from_secs(15), &log).await;
    assert!(killed_at.elapsed() < Duration::from_secs(20));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("resending calls cut off by the last stop"),
        "{logged}"
    );
}
