//! Retention: messages (with their indexes, counts and actions) whose last event is older than
//! `store.retention_days`, quarantined events as old, and quarantine fingerprints and
//! tombstones older than `store.dedupe_days` are purged in the background, in bounded batches.

use std::time::Duration;

use chrono::Utc;

use super::Store;
use crate::background::{self, Background};
use crate::config::StoreSettings;

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub messages: u64,
    pub actions: u64,
    pub rejected: u64,
    pub dedupe_keys: u64,
}

/// The background purge: a thread that runs [`Store::purge`] every
/// `store.purge_interval_seconds` (with Postgres, on one instance at a time).
pub struct Janitor {
    worker: Background,
}

impl Janitor {
    pub fn start(store: Store, settings: &StoreSettings) -> std::io::Result<Self> {
        let interval = Duration::from_secs_f64(settings.purge_interval_seconds);
        let retention = days(settings.retention_days);
        let dedupe = days(f64::from(settings.dedupe_days));
        let worker = Background::spawn(
            "flowhook-purge",
            || {},
            move |token| {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "retention cannot run: no runtime for it");
                        return;
                    }
                };
                while !background::sleep(&token, interval) {
                    let now = Utc::now();
                    match runtime.block_on(store.purge(now - retention, now - dedupe)) {
                        Ok(purged) if purged != Purged::default() => {
                            for (kind, n) in [
                                ("messages", purged.messages),
                                ("actions", purged.actions),
                                ("rejected", purged.rejected),
                                ("dedupe_keys", purged.dedupe_keys),
                            ] {
                                metrics::counter!(crate::observe::PURGED, "kind" => kind)
                                    .increment(n);
                            }
                            tracing::info!(
                                messages = purged.messages,
                                actions = purged.actions,
                                rejected = purged.rejected,
                                dedupe_keys = purged.dedupe_keys,
                                "purged expired data"
                            );
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "purge failed; will try again"),
                    }
                }
            },
        )?;
        Ok(Self { worker })
    }

    pub fn stop(&self) {
        self.worker.stop();
    }
}

fn days(days: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((days * 86_400_000.0) as i64)
}
