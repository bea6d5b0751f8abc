//! Checks a loaded configuration must pass that serde cannot express: value ranges, the
//! targets' limits and URLs, and which secrets are still shipped placeholders (refused on a
//! public bind). Each message names its key. Rules are checked by `startup::check`.

use std::net::SocketAddr;

use super::{ConfigError, Settings, StoreBackend};
use crate::secret::{decode_whsec, Secret};
use crate::targets::params::is_http_url;
use crate::targets::{ActionKind, Target};

impl Settings {
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
        if self.store.max_events_per_message < 10 {
            problems.push("store.max_events_per_message: must be at least 10".into());
        }
        if self.store.dedupe_days < 8 {
            problems.push(
                "store.dedupe_days: must be at least 8 (Meta retries for up to 7 days)".into(),
            );
        }
        if !(self.store.retention_days > 0.0 && self.store.retention_days.is_finite()) {
            problems.push("store.retention_days: must be positive".into());
        }
        if !(self.store.purge_interval_seconds > 0.0
            && self.store.purge_interval_seconds.is_finite())
        {
            problems.push("store.purge_interval_seconds: must be positive".into());
        }
        if self.store.max_callback_bytes == 0 {
            problems.push("store.max_callback_bytes: must be positive".into());
        }
        if !(self.store.reply_window_hours > 0.0 && self.store.reply_window_hours.is_finite()) {
            problems.push("store.reply_window_hours: must be positive".into());
        }
        if self
            .store
            .opt_out_keywords
            .iter()
            .any(|k| k.trim().is_empty())
        {
            problems.push("store.opt_out_keywords: a keyword is empty".into());
        }
        if self.store.relaxed_flush_ms == 0 {
            problems.push("store.relaxed_flush_ms: must be positive".into());
        }
        let fields = [
            ("index_callback_fields", &self.store.index_callback_fields),
            ("stats_callback_fields", &self.store.stats_callback_fields),
        ];
        for (key, field) in fields
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |f| (k, f)))
        {
            let valid = !field.is_empty()
                && field.split('.').all(|p| !p.is_empty())
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                problems.push(format!(
                    "store.{key}: {field:?} must be a dot path of letters, digits, '_' and '-'"
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
        if self.server.body_timeout_ms == 0 {
            problems.push("server.body_timeout_ms: must be positive".into());
        }
        self.validate_postgres(&mut problems);
        self.validate_dispatch(&mut problems);
        self.validate_pricing(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn validate_pricing(&self, problems: &mut Vec<String>) {
        let pricing = &self.pricing;
        let currency = &pricing.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(format!(
                "pricing.currency: {currency:?} must be an ISO 4217 code such as \"USD\""
            ));
        }
        for (category, card) in &pricing.rates {
            let named = !category.is_empty()
                && category
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !named {
                problems.push(format!(
                    "pricing.rates.{category}: a category is lower-case letters, digits and '_', \
                     as Meta names it (marketing, utility, authentication, service)"
                ));
            }
            for (region, rate) in card {
                let region_ok = region == "default"
                    || (region.len() == 2 && region.bytes().all(|b| b.is_ascii_uppercase()));
                if !region_ok {
                    problems.push(format!(
                        "pricing.rates.{category}.{region}: a key is an ISO 3166 region such as \
                         IN or US, or \"default\""
                    ));
                }
                if !(rate.is_finite() && *rate >= 0.0) {
                    problems.push(format!(
                        "pricing.rates.{category}.{region}: must be a price of 0 or more"
                    ));
                }
            }
        }
    }

    fn validate_postgres(&self, problems: &mut Vec<String>) {
        let pg = &self.store.postgres;
        if self.store.backend == StoreBackend::Postgres {
            let url = pg.url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                problems.push(
                    "store.postgres.url: must be a postgres:// URL when store.backend = \"postgres\" \
                     (e.g. FLOWHOOK__STORE__POSTGRES__URL=postgres://flowhook:secret@db:5432/flowhook)"
                        .into(),
                );
            }
        }
        if pg.max_connections < 2 {
            // Retention holds one connection for its lock while it works with another.
            problems.push("store.postgres.max_connections: must be at least 2".into());
        }
        if pg.connect_timeout_ms == 0 {
            problems.push("store.postgres.connect_timeout_ms: must be positive".into());
        }
        if pg.statement_timeout_ms == 0 {
            problems.push("store.postgres.statement_timeout_ms: must be positive".into());
        }
        // The targets some rule calls.
        let longest_call = self
            .rules
            .iter()
            .filter_map(|r| ActionKind::parse(&r.action))
            .map(|a| self.targets.limits(a.target()).timeout_ms)
            .max()
            .unwrap_or(0);
        if self.dispatch.lease_seconds.saturating_mul(1000) <= longest_call {
            problems.push(format!(
                "dispatch.lease_seconds: must be longer than the timeout_ms of every target a rule \
                 calls ({longest_call} ms), or another instance could call for an action still \
                 in flight"
            ));
        }
    }

    fn validate_dispatch(&self, problems: &mut Vec<String>) {
        let t = &self.targets;
        for target in Target::sections() {
            let l = t.limits(target);
            if l.timeout_ms == 0 {
                problems.push(format!("targets.{target}.timeout_ms: must be positive"));
            }
            if l.max_in_flight == 0 {
                problems.push(format!(
                    "targets.{target}.max_in_flight: must be at least 1"
                ));
            }
            if !(l.rate_per_second >= 0.0 && l.rate_per_second.is_finite()) {
                problems.push(format!(
                    "targets.{target}.rate_per_second: must be 0 (no limit) or positive"
                ));
            }
            if let Some(url) = t.base_url(target) {
                if !(url.is_empty() || is_http_url(url)) {
                    problems.push(format!(
                        "targets.{target}.base_url: {url:?} is not an http(s) URL"
                    ));
                }
            }
        }
        let d = &self.dispatch;
        if d.retry_schedule_seconds
            .iter()
            .any(|s| !(s.is_finite() && *s >= 0.0))
        {
            problems.push("dispatch.retry_schedule_seconds: every delay must be 0 or more".into());
        }
        if !(0.0..=1.0).contains(&d.jitter) {
            problems.push("dispatch.jitter: must be from 0 to 1".into());
        }
    }

    /// The names of secrets that are empty or still a shipped placeholder.
    pub fn placeholder_secrets(&self) -> Vec<String> {
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
        let mut weak: Vec<String> = checks
            .into_iter()
            .filter(|(_, bad)| *bad)
            .map(|(name, _)| name.to_owned())
            .collect();
        // Target credentials matter only when a rule sends there.
        let used: std::collections::BTreeSet<&'static str> = self
            .rules
            .iter()
            .filter_map(|r| ActionKind::parse(&r.action).map(|a| a.target().as_str()))
            .collect();
        for target in Target::sections().filter(|t| used.contains(t.as_str())) {
            for (key, secret) in self.targets.secrets(target) {
                if secret.is_placeholder() {
                    weak.push(format!("targets.{target}.{key}"));
                }
            }
        }
        weak
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
