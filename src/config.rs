//! Settings: built-in defaults, then `config.toml` (or `--config PATH`), then `FLOWHOOK__` env.
//!
//! Every struct denies unknown keys, so a typo fails at startup with the key's name; semantic
//! checks that serde cannot express live in [`Settings::validate`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: String,
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            workers: 0,
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
    pub path: PathBuf,
    pub durability: Durability,
    pub retention_days: u32,
    pub dedupe_days: u32,
    pub index_callback_fields: Vec<String>,
    pub max_callback_bytes: usize,
    /// sled's page cache; its default (1 GiB) is far more than flowhook needs.
    pub cache_capacity_bytes: u64,
    /// How often `durability = "relaxed"` flushes.
    pub relaxed_flush_ms: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            path: "data".into(),
            durability: Durability::Sync,
            retention_days: 30,
            dedupe_days: 8,
            index_callback_fields: vec!["order_id".into(), "campaign".into()],
            max_callback_bytes: 4096,
            cache_capacity_bytes: 64 * 1024 * 1024,
            relaxed_flush_ms: 5,
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

/// A credential. Its `Debug` never shows it. An all-digit value set through the environment
/// arrives as a number and is taken as its text.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "SecretText")]
pub struct Secret(String);

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretText {
    Text(String),
    Number(u64),
}

impl From<SecretText> for Secret {
    fn from(value: SecretText) -> Self {
        match value {
            SecretText::Text(s) => Self(s),
            SecretText::Number(n) => Self(n.to_string()),
        }
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Empty, or one of the values shipped in `config.toml` (they all say "change-me").
    pub fn is_placeholder(&self) -> bool {
        let value = self.0.trim();
        value.is_empty() || value.contains("change-me") || SHIPPED_PLACEHOLDERS.contains(&value)
    }
}

/// Placeholders in the shipped `config.toml` that cannot say "change-me" in plain text.
const SHIPPED_PLACEHOLDERS: &[&str] = &["whsec_Y2hhbmdlLW1lLWdlbmVyaWMtc2VjcmV0"];

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(<redacted>)"
        })
    }
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
        .filter(|s| !s.0.trim().is_empty())
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
        let settings: Settings = Figment::new()
            .merge(Toml::file(&file))
            .merge(Env::prefixed("FLOWHOOK__").split("__"))
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks serde cannot express; every message names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.server.bind.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "server.bind: {:?} is not an address like 127.0.0.1:8080",
                self.server.bind
            ));
        }
        if self.server.max_body_bytes < 1024 {
            problems.push("server.max_body_bytes: must be at least 1024".into());
        }
        if self.store.dedupe_days < 8 {
            problems.push(
                "store.dedupe_days: must be at least 8 (Meta retries for up to 7 days)".into(),
            );
        }
        if self.store.retention_days == 0 {
            problems.push("store.retention_days: must be at least 1".into());
        }
        if self.store.max_callback_bytes == 0 {
            problems.push("store.max_callback_bytes: must be positive".into());
        }
        if self.store.relaxed_flush_ms == 0 {
            problems.push("store.relaxed_flush_ms: must be positive".into());
        }
        for field in &self.store.index_callback_fields {
            let valid = !field.is_empty()
                && field.split('.').all(|p| !p.is_empty())
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                problems.push(format!(
                    "store.index_callback_fields: {field:?} must be a dot path of letters, digits, '_' and '-'"
                ));
            }
        }
        for (i, secret) in self.providers.generic.secrets.iter().enumerate() {
            if let Err(e) = decode_whsec(secret) {
                problems.push(format!("providers.generic.secrets[{i}]: {e}"));
            }
        }
        if self.providers.generic.tolerance_seconds == 0 {
            problems.push("providers.generic.tolerance_seconds: must be positive".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The names of secrets that are empty or still a shipped placeholder.
    pub fn placeholder_secrets(&self) -> Vec<&'static str> {
        let p = &self.providers;
        let checks: [(&'static str, bool); 5] = [
            ("api.token", self.api.token.is_placeholder()),
            (
                "providers.bik.basic_auth",
                p.bik.basic_auth.is_empty() || p.bik.basic_auth.iter().any(Secret::is_placeholder),
            ),
            (
                "providers.meta.app_secrets",
                p.meta.app_secrets.is_empty()
                    || p.meta.app_secrets.iter().any(Secret::is_placeholder),
            ),
            (
                "providers.meta.verify_token",
                p.meta.verify_token.is_placeholder(),
            ),
            (
                "providers.generic.secrets",
                p.generic.secrets.is_empty()
                    || p.generic.secrets.iter().any(Secret::is_placeholder),
            ),
        ];
        checks
            .into_iter()
            .filter(|(_, bad)| *bad)
            .map(|(name, _)| name)
            .collect()
    }

    /// Refuses a non-loopback bind while any secret is empty or a shipped placeholder.
    pub fn check_safe_to_expose(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.server.bind.parse().map_err(|_| {
            ConfigError::Invalid(vec![format!(
                "server.bind: {:?} is not an address",
                self.server.bind
            )])
        })?;
        let weak = self.placeholder_secrets();
        if addr.ip().is_loopback() || weak.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid(vec![format!(
            "server.bind: refusing to listen on non-loopback {addr} while these secrets are empty or \
             shipped placeholders: {} (set them, e.g. FLOWHOOK__API__TOKEN)",
            weak.join(", ")
        )]))
    }
}

/// The HMAC key of a Standard Webhooks secret: the base64 text after `whsec_`.
pub fn decode_whsec(secret: &Secret) -> Result<Vec<u8>, String> {
    let encoded = secret
        .expose()
        .strip_prefix("whsec_")
        .ok_or_else(|| "must start with whsec_".to_owned())?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the text after whsec_ must be base64".to_owned())
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
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
