//! Storage. [`Store`] (in [`api`]) is the interface the rest of flowhook uses. Two backends
//! sit behind it: [`embedded`], flowhook's key layout over an embedded engine (sled, the
//! default, or fjall), and [`postgres`], the database several instances share. Nothing outside
//! this module knows about either.
//!
//! The files beside those two folders hold what both backends share: the stored record
//! ([`record`]), what a message is filed under ([`filing`]), the outbox's types, the stats'
//! arithmetic, the backup format and the retention schedule.

mod actions;
mod api;
mod backup;
mod embedded;
mod filing;
mod healer;
mod ingest;
mod outbox;
mod postgres;
mod query;
mod record;
mod retention;
mod stats;

pub use crate::domain::IngestItem;
pub use actions::{
    Action, ActionFilter, ActionState, Attempt, ClaimToken, RetryOutcome, RetryPolicy,
};
pub use api::Store;
pub use backup::{BackupError, Checked, Moved};
pub use embedded::mark::Loss;
pub use embedded::{EmbeddedStore, FlushFailed, Opening};
pub use healer::Healer;
pub use ingest::IngestOutcome;
pub use outbox::{clock_ms, DueEntry};
pub use postgres::PgStore;
pub use query::{Lookup, Page, RejectedEvent};
pub use retention::{Janitor, Purged};
pub use stats::{day_date, day_of, CategoryCost, Cost, FailureReason, Group, Rates};

use crate::config::StoreSettings;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (an I/O error, a full disk, ...).
    #[error("storage error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data could not be (de)serialized: {0}")]
    Serde(#[from] serde_json::Error),
    #[error(transparent)]
    NotDurable(#[from] FlushFailed),
    #[error("cursor is not valid for this query")]
    BadCursor,
    #[error("the store holds corrupt data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("the store is closed")]
    Closed,
    /// The store's files cannot be opened; says where and what to do.
    #[error("{0}")]
    Unopenable(String),
    /// Opening found acknowledged writes missing (see [`Loss`]).
    #[error("{0}")]
    Damaged(Box<Loss>),
    /// A bug: writing a batch panicked (logged); its requests are refused, the data is fine.
    #[error("writing this request failed unexpectedly")]
    WriterPanicked,
}

impl StoreError {
    /// Whether it is about one stored record that cannot be read (the rest of the store is
    /// fine): such a record fails only what asks for it.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Self::Corrupt(_) | Self::Serde(_))
    }

    /// Whether the storage itself cannot take writes now (a full disk, an I/O error, a failed
    /// flush): the request can be retried later.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::NotDurable(_) | Self::Closed)
    }
}

/// Counts and logs a stored record that cannot be read.
fn unreadable(kind: &'static str, id: &str, error: &StoreError) {
    metrics::counter!(crate::observe::UNREADABLE, "kind" => kind).increment(1);
    tracing::error!(kind, id, %error, "a stored record cannot be read; see `flowhook check-store`");
}

/// The callback fields a message is filed under: indexed for lookups, counted for stats.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fields {
    pub index: Vec<String>,
    pub stats: Vec<String>,
}

impl Fields {
    pub(crate) fn of(settings: &StoreSettings) -> Self {
        Self {
            index: settings.index_callback_fields.clone(),
            stats: settings.stats_callback_fields.clone(),
        }
    }
}

/// Free bytes for unprivileged writers on the file system holding `path` (or, before the
/// store exists there, the nearest existing parent).
fn free_disk_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("."));
    let stat = rustix::fs::statvfs(existing)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Joins key parts with the `\0` separator.
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part);
    }
    out
}

/// The text an indexed callback value is filed under: strings as they are, numbers and
/// booleans as JSON; nothing for objects, arrays, null, or values unsafe as a key part.
pub fn index_value(value: &serde_json::Value) -> Option<String> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty() && text.len() <= 256 && !text.contains('\0')).then_some(text)
}

#[cfg(test)]
pub(crate) use embedded::{temporary, temporary_with};
