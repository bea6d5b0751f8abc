//! Settings: built-in defaults, then `config.toml` (or `--config PATH`), then `FLOWHOOK__` env.
//!
//! Every struct denies unknown keys, so a typo fails at startup with the key's name; semantic
//! checks that serde cannot express live in [`Settings::validate`].

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

mod checks;

pub use crate::secret::{decode_whsec, Secret};
pub use crate::targets::{Limits, TargetSettings};

/// The config file used when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub providers: ProviderSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub targets: TargetSettings,
    #[serde(default)]
    pub dispatch: DispatchSettings,
    /// Follow-up rules as written; `startup::check` compiles them (the one place that does).
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
    /// The rate card that prices billable messages in `/v1/stats`.
    #[serde(default)]
    pub pricing: PricingSettings,
    /// Where verified events are handed on (contract section 9); compiled with the rules.
    #[serde(default)]
    pub forwards: Vec<ForwardSettings>,
}

/// One `[[forwards]]` entry as written (README, "Forwarding").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSettings {
    pub name: String,
    pub url: String,
    /// The Standard Webhooks key each delivery is signed with (`whsec_...`); required.
    pub secret: Option<Secret>,
    /// Which accepted events are handed on; all four by default.
    #[serde(default = "ForwardEvent::all")]
    pub events: Vec<ForwardEvent>,
    /// Conditions on the message, as in rules.
    #[serde(default)]
    pub when: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_rate_per_second")]
    pub rate_per_second: f64,
}

impl ForwardSettings {
    pub fn limits(&self) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms,
            max_in_flight: self.max_in_flight,
            rate_per_second: self.rate_per_second,
        }
    }
}

fn default_timeout_ms() -> u64 {
    Limits::default().timeout_ms
}

fn default_max_in_flight() -> usize {
    Limits::default().max_in_flight
}

fn default_rate_per_second() -> f64 {
    Limits::default().rate_per_second
}

/// The kinds of event a forward hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardEvent {
    Status,
    Click,
    Reply,
    OptOut,
}

impl ForwardEvent {
    pub fn all() -> Vec<Self> {
        vec![Self::Status, Self::Click, Self::Reply, Self::OptOut]
    }
}

/// A rate card: per category as the provider names it (`marketing`, `utility`, ...), a price
/// per message for each ISO 3166 region of the recipient's number, and a `default` for the
/// regions not listed. Meta's webhooks carry no prices, so these are the user's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingSettings {
    /// ISO 4217 code the rates are in.
    pub currency: String,
    /// category -> region (`IN`, `US`, ... or `default`) -> price per message.
    pub rates: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            rates: Default::default(),
        }
    }
}

impl PricingSettings {
    /// The price of one message of `category` to a number of `region`: the region's rate, else
    /// the category's `default`; `None` when the card does not price the category.
    pub fn rate(&self, category: &str, region: Option<&str>) -> Option<f64> {
        let card = self.rates.get(category)?;
        region
            .and_then(|r| card.get(r))
            .or_else(|| card.get("default"))
            .copied()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: String,
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// A request's whole body must arrive within this, else `408` and the connection closes.
    pub body_timeout_ms: u64,
    /// Inbound connections open at once; past it, new ones wait in the listen queue. 0 means
    /// what the file-descriptor limit allows (see `fd_limit::connection_cap`).
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            workers: 0,
            body_timeout_ms: 10_000,
            max_connections: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A 200 is sent only once the write is on disk (group commit).
    Sync,
    /// Flushed every `relaxed_flush_ms`; a crash may lose the last moments.
    Relaxed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Where state is kept: an embedded engine (sled, the default, or fjall) or a shared
    /// Postgres database.
    pub backend: StoreBackend,
    /// The embedded engine's directory (`backend = "sled"` or `"fjall"`).
    pub path: PathBuf,
    /// Serve an embedded store that opened with fewer acknowledged writes than it had (a
    /// damaged or truncated file), recording it as it is now; set by `serve --accept-loss`.
    pub accept_loss: bool,
    pub durability: Durability,
    /// Messages whose last event is older than this are purged (fractions allowed).
    pub retention_days: f64,
    pub dedupe_days: u32,
    pub index_callback_fields: Vec<String>,
    /// Callback fields counted per value for `/v1/stats` (low-cardinality ones, such as a
    /// campaign: each value costs counters).
    pub stats_callback_fields: Vec<String>,
    pub max_callback_bytes: usize,
    /// The embedded engine's cache (sled's page cache, fjall's block cache); unset, 64 MiB
    /// on sled (its own default, 1 GiB, is far more than flowhook needs) and 32 MiB on fjall
    /// (measured: the same ingest as 64 MiB, and 44 MB less RSS at a million messages).
    pub cache_capacity_bytes: Option<u64>,
    /// How often `durability = "relaxed"` flushes.
    pub relaxed_flush_ms: u64,
    /// How often the background purge runs (fractions allowed).
    pub purge_interval_seconds: f64,
    /// `/readyz` reports not ready below this much free disk where the store lives.
    pub min_free_disk_bytes: u64,
    /// Events a message keeps one by one; past it, the middle of its timeline is summarized.
    pub max_events_per_message: usize,
    /// A customer message without a `context` answers the recipient's latest message first
    /// seen at most this long before it (fractions allowed).
    pub reply_window_hours: f64,
    /// A reply whose whole text (trimmed, any case) is one of these opts its sender out.
    pub opt_out_keywords: Vec<String>,
    /// `[store.postgres]`, for `backend = "postgres"`.
    pub postgres: PostgresSettings,
}

/// `store.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded sled store in `store.path`: one binary, nothing else to run.
    #[default]
    Sled,
    /// The embedded fjall store (an LSM tree) in `store.path`: for many millions of messages on
    /// one machine, with far less memory and disk than sled (contract section 7).
    Fjall,
    /// A Postgres database shared by any number of instances (contract section 6).
    Postgres,
}

/// `[store.postgres]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:5432/database` (`sslmode` and other libpq URL
    /// parameters work); `FLOWHOOK__STORE__POSTGRES__URL`.
    pub url: Secret,
    /// Connections per instance.
    pub max_connections: u32,
    /// Apply pending schema migrations when `serve` starts (else `flowhook migrate` must).
    pub migrate: bool,
    /// How long a request waits for a connection (and a new connection for the server)
    /// before it fails with 503.
    pub connect_timeout_ms: u64,
    /// A statement running longer than this is cancelled by the server.
    pub statement_timeout_ms: u64,
    /// What this instance's leases are marked with, so that after a crash it takes back the
    /// calls it held at once. Unset: `<host name>/<server.bind>`, stable across restarts of
    /// one deployment (and a new one each start when the port is 0). Set it when instances
    /// share a host name and a bind address (containers); two live instances must not share it.
    pub instance_id: String,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            max_connections: 16,
            migrate: true,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            instance_id: String::new(),
        }
    }
}

impl StoreSettings {
    /// `cache_capacity_bytes`, or the engine's default when it is unset.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_capacity_bytes.unwrap_or(match self.backend {
            StoreBackend::Fjall => 32 * 1024 * 1024,
            _ => 64 * 1024 * 1024,
        })
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sled,
            path: "data".into(),
            accept_loss: false,
            durability: Durability::Sync,
            retention_days: 30.0,
            dedupe_days: 8,
            index_callback_fields: vec!["order_id".into(), "campaign".into()],
            stats_callback_fields: vec!["campaign".into()],
            max_callback_bytes: 4096,
            cache_capacity_bytes: None,
            relaxed_flush_ms: 5,
            purge_interval_seconds: 60.0,
            min_free_disk_bytes: 100 * 1024 * 1024,
            max_events_per_message: 1000,
            reply_window_hours: 72.0,
            opt_out_keywords: vec!["STOP".into(), "UNSUBSCRIBE".into()],
            postgres: PostgresSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub token: Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    pub bik: BikSettings,
    pub meta: MetaSettings,
    pub generic: GenericSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BikSettings {
    /// Accepted `Authorization: Basic <key>` values; more than one during a rotation.
    #[serde(deserialize_with = "one_or_many")]
    pub basic_auth: Vec<Secret>,
    pub click_event_names: Vec<String>,
}

impl Default for BikSettings {
    fn default() -> Self {
        Self {
            basic_auth: Vec::new(),
            click_event_names: vec![
                "link-click".into(),
                "message-link-click".into(),
                "linkClicked".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaSettings {
    #[serde(deserialize_with = "one_or_many")]
    pub app_secrets: Vec<Secret>,
    pub verify_token: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenericSettings {
    /// Standard Webhooks secrets, `whsec_<base64>`.
    #[serde(deserialize_with = "one_or_many")]
    pub secrets: Vec<Secret>,
    pub tolerance_seconds: u64,
}

impl Default for GenericSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            tolerance_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A `tracing` filter such as `info` or `flowhook=debug,actix_web=info`; `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    /// Delay before each retry, in seconds (fractions allowed); once spent, the action is dead.
    pub retry_schedule_seconds: Vec<f64>,
    /// Each delay is scaled by a factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// The longest `Retry-After` flowhook honours, in seconds.
    pub max_retry_after_seconds: u64,
    /// How long a stop waits for calls in flight before leaving them to the next start.
    pub shutdown_grace_seconds: u64,
    /// How much of a failed answer's body an action keeps.
    pub keep_response_bytes: usize,
    /// With the Postgres backend, how long a claimed action is held by the instance calling
    /// for it; an instance that dies holding it leaves it to another once this has passed.
    pub lease_seconds: u64,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            retry_schedule_seconds: vec![5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0],
            jitter: 0.2,
            max_retry_after_seconds: 86_400,
            shutdown_grace_seconds: 10,
            keep_response_bytes: 1024,
            lease_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Status,
    Click,
    MissingStatus,
    /// The customer replied to the message (contract section 8.1).
    Reply,
}

/// What else ends a `missing_status` timer before it fires (`cancel_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOn {
    /// The customer replied to the message.
    Reply,
    /// The customer opted out in answer to the message (contract section 8.2).
    OptOut,
}

/// One `[[rules]]` entry as written (README, "Rules and follow-ups").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    pub name: String,
    pub on: Trigger,
    #[serde(default)]
    pub statuses: Vec<String>,
    pub url_prefix: Option<String>,
    /// `on = "reply"`: fire only for a reply carrying one of these payloads.
    #[serde(default)]
    pub reply_payloads: Vec<String>,
    pub since: Option<String>,
    pub after_seconds: Option<u64>,
    /// `on = "missing_status"`: what else cancels the timer before it fires.
    #[serde(default)]
    pub cancel_on: Vec<CancelOn>,
    /// Whether the rule calls nobody whose recipient is opted out when it would call
    /// (contract section 8.2); the action is then skipped with the reason `opted_out`.
    #[serde(default = "yes")]
    pub skip_opted_out: bool,
    #[serde(default)]
    pub when: std::collections::BTreeMap<String, serde_json::Value>,
    pub action: String,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Secret),
        Many(Vec<Secret>),
    }
    // An empty entry would accept an empty credential; it means "none".
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(list) => list,
    };
    Ok(list
        .into_iter()
        .filter(|s| !s.expose().trim().is_empty())
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Loads `path` (which must exist when given explicitly) over the defaults, then the
    /// `FLOWHOOK__SECTION__KEY` environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_owned())),
            Some(p) => p.to_owned(),
            None => PathBuf::from(DEFAULT_CONFIG_PATH),
        };
        let figment = Figment::new()
            .merge(Toml::file(&file))
            .merge(Env::prefixed("FLOWHOOK__").split("__"));
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e, &figment)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses TOML text over the defaults (no file, no environment) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment = Figment::new().merge(Toml::string(text));
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e, &figment)))?;
        settings.validate()?;
        Ok(settings)
    }
}

fn describe_figment_error(error: figment::Error, figment: &Figment) -> String {
    error
        .into_iter()
        .map(|e| {
            let mut key = e.path.join(".");
            // `rules.2.colour` -> `rules[2] (unread-after-a-day).colour`, like the rule checks
            // (and the same for `forwards`).
            if let [first, index, rest @ ..] = e.path.as_slice() {
                if (first == "rules" || first == "forwards") && index.parse::<usize>().is_ok() {
                    let name = figment
                        .find_value(first)
                        .ok()
                        .and_then(|rules| rules.into_array())
                        .and_then(|rules| rules.into_iter().nth(index.parse().ok()?))
                        .and_then(|rule| rule.into_dict())
                        .and_then(|mut rule| rule.remove("name"))
                        .and_then(|name| name.into_string())
                        .unwrap_or_default();
                    key = format!("{first}[{index}] ({name})");
                    if !rest.is_empty() {
                        key = format!("{key}.{}", rest.join("."));
                    }
                }
            }
            let source = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(src) => format!("{} {src}", m.name),
                    None => m.name.to_string(),
                },
                None => String::new(),
            };
            match (key.is_empty(), source.is_empty()) {
                (true, _) => format!("configuration: {}", e.kind),
                (false, true) => format!("{key}: {}", e.kind),
                (false, false) => format!("{key}: {} (from {source})", e.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
