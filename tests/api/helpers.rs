//! `spawn_app()` starts the real application on port 0 over a temporary sled directory (a
//! fjall one when `FLOWHOOK__STORE__BACKEND=fjall`, which the binaries the tests start read
//! too), or, when `FLOWHOOK_TEST_POSTGRES` names a Postgres server (`scripts/test-postgres.sh`
//! sets it), over a database of its own there: the same suite runs on every backend. The `post_*`
//! helpers authenticate and sign like the real providers do.

use std::path::Path;

use actix_web::dev::ServerHandle;
use flowhook::config::{Durability, Secret, Settings};
use flowhook::startup::Application;
use serde_json::Value;
use tempfile::TempDir;

pub const API_TOKEN: &str = "test-api-token";
pub const BIK_KEY: &str = "test-bik-key";
pub const BIK_OLD_KEY: &str = "test-bik-old-key";
pub const META_SECRET: &str = "test-meta-secret";
pub const META_VERIFY_TOKEN: &str = "test-verify-token";
/// `whsec_` + base64("test-generic-secret").
pub const GENERIC_SECRET: &str = "whsec_dGVzdC1nZW5lcmljLXNlY3JldA==";

/// The id shared by the BIK and Meta fixtures.
pub const FIXTURE_MESSAGE_ID: &str =
    "wamid.HBgMOTE5OTM4NDM4MTM4FQIAERgSMTJCRTg3M0MxREkUzQatyAaaqA==";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    settings: Settings,
    store_dir: TempDir,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn test_settings(store: &Path) -> Settings {
    let mut s = Settings::default();
    s.server.bind = "127.0.0.1:0".into();
    s.server.workers = 2;
    s.server.max_body_bytes = 64 * 1024;
    s.store.backend = embedded_engine();
    s.store.path = store.to_owned();
    s.store.durability = Durability::Sync;
    s.store.cache_capacity_bytes = Some(8 * 1024 * 1024);
    s.api.token = Secret::new(API_TOKEN);
    s.providers.bik.basic_auth = vec![Secret::new(BIK_OLD_KEY), Secret::new(BIK_KEY)];
    s.providers.meta.app_secrets = vec![Secret::new(META_SECRET)];
    s.providers.meta.verify_token = Secret::new(META_VERIFY_TOKEN);
    s.providers.generic.secrets = vec![Secret::new(GENERIC_SECRET)];
    s
}

/// The embedded engine this pass runs on: fjall when `FLOWHOOK__STORE__BACKEND=fjall`
/// (`.ci/run`'s fjall pass), else sled.
pub fn embedded_engine() -> flowhook::config::StoreBackend {
    match std::env::var("FLOWHOOK__STORE__BACKEND").as_deref() {
        Ok("fjall") => flowhook::config::StoreBackend::Fjall,
        _ => flowhook::config::StoreBackend::Sled,
    }
}

/// Writes one key straight into a stopped embedded store's engine, past flowhook (as damage
/// on disk would): `keyspace` is a tree (sled) or keyspace (fjall) name.
pub fn write_raw(store: &Path, keyspace: &str, key: &[u8], value: &[u8]) {
    match embedded_engine() {
        flowhook::config::StoreBackend::Fjall => {
            let db = fjall::Database::builder(store).open().unwrap();
            let space = db
                .keyspace(keyspace, fjall::KeyspaceCreateOptions::default)
                .unwrap();
            space.insert(key, value).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        _ => {
            let db = sled::open(store).unwrap();
            db.open_tree(keyspace).unwrap().insert(key, value).unwrap();
            db.flush().unwrap();
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the app with test settings adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary store directory");
    let mut settings = test_settings(&dir.path().join("store"));
    if let Some(url) = postgres_database().await {
        settings.store.backend = flowhook::config::StoreBackend::Postgres;
        settings.store.postgres.url = Secret::new(url);
        settings.store.postgres.max_connections = 6;
    }
    tweak(&mut settings);
    start(settings, dir).await
}

/// A new, empty database on the Postgres server `FLOWHOOK_TEST_POSTGRES` names (its URL), or
/// `None` when it is not set.
pub async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    let admin = std::env::var("FLOWHOOK_TEST_POSTGRES").ok()?;
    let name = format!(
        "flowhook_test_{}",
        uuid_like(std::process::id(), std::time::SystemTime::now())
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("FLOWHOOK_TEST_POSTGRES is reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let mut url = reqwest::Url::parse(&admin).expect("FLOWHOOK_TEST_POSTGRES is a URL");
    url.set_path(&name);
    Some(url.to_string())
}

/// A name no other test of this run (or an earlier one on the same cluster) has.
fn uuid_like(pid: u32, now: std::time::SystemTime) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{pid}_{nanos}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Starts the app with test settings plus the `[targets.*]`, `[dispatch]`, `[[rules]]` and
/// `[pricing]` of `toml` (other sections there are ignored).
pub async fn spawn_app_with_rules(toml: &str) -> TestApp {
    let parsed = Settings::from_toml_str(toml).expect("rules config is valid");
    spawn_app_with(|s| {
        s.targets = parsed.targets;
        s.dispatch = parsed.dispatch;
        s.rules = parsed.rules;
        s.pricing = parsed.pricing;
    })
    .await
}

/// Starts the app on `settings`, keeping `store_dir` alive as long as it runs.
pub async fn start(settings: Settings, store_dir: TempDir) -> TestApp {
    settings.validate().expect("test settings are valid");
    let app = Application::build(settings.clone())
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        settings,
        store_dir,
        handle,
        server,
    }
}

impl TestApp {
    /// Stops gracefully (in-flight requests finish, the store is flushed and closed) and
    /// starts again over the same store directory.
    pub async fn restart(self) -> TestApp {
        let (settings, store_dir) = self.stop().await;
        start(settings, store_dir).await
    }

    /// Stops gracefully and hands back what it ran on.
    pub async fn stop(self) -> (Settings, TempDir) {
        self.handle.stop(true).await;
        self.server
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        (self.settings, self.store_dir)
    }

    /// POST with the API token and a JSON body.
    pub async fn post_api(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// The message's `actions`, once every one satisfies `done` (panics after 10 s).
    pub async fn wait_for_actions(&self, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let actions = self
                .message(id)
                .await
                .map(|m| m["actions"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default();
            if done(&actions) {
                return actions;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "actions of {id} never got there: {actions:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn post_bik(&self, body: impl Into<String>) -> reqwest::Response {
        self.post_bik_with_auth(body, Some(&format!("Basic {BIK_KEY}")))
            .await
    }

    pub async fn post_bik_with_auth(
        &self,
        body: impl Into<String>,
        authorization: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/bik", self.address))
            .body(body.into());
        if let Some(auth) = authorization {
            req = req.header("Authorization", auth);
        }
        req.header("Content-Type", "application/json")
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_meta(&self, body: impl Into<String>) -> reqwest::Response {
        let body = body.into();
        let signature = flowhook::providers::meta::sign(body.as_bytes(), META_SECRET);
        self.post_meta_with_signature(body, Some(&signature)).await
    }

    pub async fn post_meta_with_signature(
        &self,
        body: impl Into<String>,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/meta", self.address))
            .body(body.into());
        if let Some(sig) = signature {
            req = req.header("X-Hub-Signature-256", sig);
        }
        req.send().await.expect("request sent")
    }

    /// Posts to the generic route signed with Standard Webhooks, timestamped now.
    pub async fn post_generic(
        &self,
        webhook_id: &str,
        body: impl Into<String>,
    ) -> reqwest::Response {
        let body = body.into();
        let ts = chrono::Utc::now().timestamp();
        let signature = sign_generic(GENERIC_SECRET, webhook_id, ts, &body);
        self.post_generic_with_headers(
            body,
            &[
                ("webhook-id", webhook_id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &signature),
            ],
        )
        .await
    }

    pub async fn post_generic_with_headers(
        &self,
        body: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/generic", self.address))
            .body(body.into());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("request sent")
    }

    /// GET with the API token.
    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path_and_query}", self.address))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    /// GET with the API token, the answer's JSON.
    pub async fn get_json(&self, path_and_query: &str) -> Value {
        self.get(path_and_query)
            .await
            .json()
            .await
            .expect("a JSON answer")
    }

    /// Posts a BIK status webhook (see [`bik_status`]), asserting it is answered 200;
    /// returns the counts.
    pub async fn post_bik_status(
        &self,
        id: &str,
        status: &str,
        at: chrono::DateTime<chrono::Utc>,
        callback: &Value,
    ) -> (u64, u64, u64, u64) {
        counts(self.post_bik(bik_status(id, status, at, callback)).await).await
    }

    /// GET without a token (health, metrics, documents).
    pub async fn get_public(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// The message as the API shows it; `None` on 404.
    pub async fn message(&self, id: &str) -> Option<Value> {
        let resp = self
            .get(&format!("/v1/messages/{}", encode_segment(id)))
            .await;
        match resp.status().as_u16() {
            404 => None,
            200 => Some(resp.json().await.unwrap()),
            other => panic!("GET message answered {other}"),
        }
    }
}

pub fn sign_generic(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = flowhook::config::decode_whsec(&Secret::new(secret)).unwrap();
    flowhook::providers::generic::sign(&key, id, ts, body.as_bytes())
}

/// Percent-encodes a message id as one path segment, as clients must.
pub fn encode_segment(id: &str) -> String {
    id.replace('%', "%25")
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

pub fn fixture(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
}

/// The `{"accepted", "duplicates", "ignored", "rejected"}` answer as a tuple, asserting 200.
pub async fn counts(resp: reqwest::Response) -> (u64, u64, u64, u64) {
    assert_eq!(resp.status().as_u16(), 200, "expected 200");
    let body: Value = resp.json().await.unwrap();
    let n = |k: &str| {
        body[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {body}"))
    };
    (n("accepted"), n("duplicates"), n("ignored"), n("rejected"))
}

/// Asserts an error answer: status and BIK's shape with a message containing `needle`.
pub async fn assert_error(resp: reqwest::Response, status: u16, needle: &str) {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["status"], status);
    let message = body["errors"][0]["message"]
        .as_str()
        .expect("errors[0].message");
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

/// A BIK status webhook (a one-element array) for `message_id` at `at`, with `callback` as its
/// callbackData string.
pub fn bik_status(
    message_id: &str,
    status: &str,
    at: chrono::DateTime<chrono::Utc>,
    callback: &Value,
) -> String {
    let secs = at.timestamp_millis();
    serde_json::json!([{
        "eventName": "message-status-update",
        "eventInfo": {
            "messageId": message_id,
            "createdAt": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "channelId": "whatsapp",
            "status": status,
            "assetValue": "+919090909090",
            "failureReason": null,
            "callbackData": callback.to_string(),
        },
        "id": format!("{message_id}-{status}-{secs}"),
    }])
    .to_string()
}

/// A generic-route status event as JSON text.
pub fn generic_status(message_id: &str, status: &str, timestamp: i64, callback: Value) -> String {
    serde_json::json!({
        "type": "message.status",
        "message_id": message_id,
        "status": status,
        "timestamp": timestamp,
        "recipient": "+919000000001",
        "channel": "whatsapp",
        "callback_data": callback,
    })
    .to_string()
}

/// A follow-up target that answers 400 on `/dead` and 200 to any other POST.
pub async fn ok_and_dead_target() -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let mock = MockServer::start().await;
    Mock::given(path("/dead"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    mock
}

/// One `[[rules]]` entry: on `status`, `http.post` `{"id": "{{<id_var>}}"}` to `url`.
pub fn post_rule(name: &str, status: &str, url: &str, id_var: &str) -> String {
    format!(
        "[[rules]]\nname = \"{name}\"\non = \"status\"\nstatuses = [\"{status}\"]\n\
         action = \"http.post\"\nparams = {{ url = \"{url}\", body = {{ id = \"{{{{{id_var}}}}}\" }} }}\n"
    )
}

/// Prometheus text as `name{a="x",b="y"}` -> value, labels sorted so that lookups do not
/// depend on their order.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        out.insert(key, value.parse().expect("a number"));
    }
    out
}

/// A config file for the CLI naming only `store` as `store.path` (the engine comes from
/// `FLOWHOOK__STORE__BACKEND`, as for the rest of the pass).
pub fn cli_config(store: &Path) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "[store]\npath = \"{}\"", store.display()).unwrap();
    config
}

/// Runs `flowhook --config <config> args...` to the end.
pub fn run_cli(config: &tempfile::NamedTempFile, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowhook"))
        .args(["--config", config.path().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// A message's timeline events of one kind (`reply`, `opt_out`, ...), as the API shows them.
pub fn events_of(message: &Value, kind: &str) -> Vec<Value> {
    message["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// `at` to the millisecond (as `bik_status` sends it) in the API's time format.
pub fn rfc3339_millis(at: chrono::DateTime<chrono::Utc>) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap();
    flowhook::domain::rfc3339(at)
}

/// A `missing_status` rule named `timer`, due 30 s after `since`, waiting for `statuses` (a
/// TOML list) with `extra` TOML, posting `{"message": id}` to `<url>/timer`.
pub fn timer_rule(statuses: &str, since: &str, extra: &str, url: &str) -> String {
    format!(
        r#"
[[rules]]
name = "timer"
on = "missing_status"
statuses = {statuses}
since = "{since}"
after_seconds = 30
{extra}
action = "http.post"
[rules.params]
url = "{url}/timer"
body = {{ message = "{{{{message_id}}}}" }}
"#
    )
}

/// The group of `/v1/stats` for one value (a campaign), panicking when there is none.
pub fn group<'a>(stats: &'a Value, value: &str) -> &'a Value {
    stats["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["value"] == value)
        .unwrap_or_else(|| panic!("a {value} group in {stats}"))
}
