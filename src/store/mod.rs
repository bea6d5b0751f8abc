//! Storage. [`Store`] (in [`api`]) is the interface the rest of flowhook uses; this module's
//! other files are its embedded sled backend, [`SledStore`], and [`postgres`] is the backend
//! several instances share, [`PgStore`]. Nothing outside this module knows about either.
//!
//! # Key layout
//!
//! Strings are UTF-8; `\0` separates parts (message ids, callback values and recipients
//! that hold `\0` are refused or left unindexed, so the separator is unambiguous). Numbers are
//! big-endian so that byte order is numeric order.
//!
//! | tree            | key                                         | value                              |
//! |-----------------|---------------------------------------------|------------------------------------|
//! | `messages`      | message id                                  | versioned compact record: the timeline and the ids of the message's actions, see [`record`] (duplicates are checked against it) |
//! | `dedupe`        | `r\0<provider>\0<sha256 of raw>` (quarantined) | first seen, unix seconds (u64 BE) |
//! |                 | `o\0<event fingerprint, u64 BE>` (an event summarized past `max_events_per_message`) | first seen, unix seconds (u64 BE) |
//! | `idx_callback`  | `<field>\0<value>\0<message id>`            | empty                              |
//! | `idx_recipient` | `<recipient key>\0<message id>` (the E.164 form, else as sent; and the business-scoped user id) | empty |
//! | `idx_time`      | `<updated_at unix ms, u64 BE><message id>`  | empty (retention reads it in order)|
//! | `aggregates`    | `<field>\0<value>\0<day><metric>` (see [`stats`]) | count (i64 BE); `\0\0action:<state>` counts all actions |
//! | `rejected`      | id (u64 BE, from `generate_id`, so in time order) | `RejectedEvent` JSON         |
//! | `meta`          | `readyz`                                    | last readiness probe time          |
//! |                 | `recipient_index`                           | `e164` once `idx_recipient` uses normalized keys |
//! |                 | `format`                                    | the store's format, one byte (see [`upgrade`]) |
//! | `actions`       | action id (`act_<hex>`, from message id and rule) | `Action` JSON                |
//! | `action_idx`    | `s\0<state>\0<created><id>`, `q\0<rule>\0<state>\0<created><id>` (listing all actions or a rule's merges the six states) | empty (`<created>` is unix ms, u64 BE) |
//! | `outbox`        | `<target>\0<due unix ms, u64 BE><action id>` | empty                            |
//! | `inflight`      | action id                                   | empty                              |
//!
//! A request's writes are atomic: one multi-tree transaction over all of these, so the
//! timeline, indexes, aggregates and the actions the events triggered never disagree.
//! [`writer`] puts the requests that arrive together into one transaction; durability comes
//! from [`durability::Flusher`]. See [`actions`] for the outbox's invariants.

mod actions;
mod api;
mod backup;
mod durability;
mod filing;
mod healer;
mod ingest;
mod outbox;
mod postgres;
mod query;
mod record;
mod retention;
mod stats;
mod upgrade;
mod writer;

use std::sync::Arc;
use std::time::Duration;

pub use crate::domain::IngestItem;
pub use actions::{
    Action, ActionFilter, ActionState, Attempt, ClaimToken, RetryOutcome, RetryPolicy,
};
pub use api::Store;
pub use backup::{BackupError, Checked, Moved};
pub use durability::FlushFailed;
use durability::Ticket;
pub use healer::Healer;
pub use ingest::IngestOutcome;
pub use outbox::{clock_ms, DueEntry};
pub use postgres::PgStore;
pub use query::{Lookup, Page, RejectedEvent};
pub use retention::{Janitor, Purged};
pub use stats::{day_date, day_of, FailureReason, Group, Rates};

use sled::transaction::ConflictableTransactionError;

use crate::config::StoreSettings;
use crate::rules::Rules;

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

/// The sled backend of [`Store`]: a cheap handle on the open store.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    trees: Trees,
    writer: writer::Writer,
    flusher: Arc<durability::Flusher>,
    fields: Fields,
    outbox_changed: tokio::sync::Notify,
    path: std::path::PathBuf,
    min_free_disk: u64,
}

#[derive(Clone)]
struct Trees {
    messages: sled::Tree,
    dedupe: sled::Tree,
    idx_callback: sled::Tree,
    idx_recipient: sled::Tree,
    idx_time: sled::Tree,
    aggregates: sled::Tree,
    rejected: sled::Tree,
    meta: sled::Tree,
    actions: sled::Tree,
    action_idx: sled::Tree,
    outbox: sled::Tree,
    inflight: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store; `rules` decide which actions ingest queues.
    /// A store sled cannot open (or panics opening, as a damaged file can make it) is refused
    /// with the directory and the way out, not a panic.
    pub fn open(settings: &StoreSettings, rules: Arc<Rules>) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(&settings.path)
            .cache_capacity(settings.cache_capacity_bytes)
            .flush_every_ms(None);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        let opened = match opened {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(error)) => Err(error.to_string()),
            Err(panic) => Err(format!(
                "sled could not read its files ({})",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("it panicked")
            )),
        };
        let db = opened.map_err(|error| {
            let path = settings.path.display();
            if error.contains("lock") {
                return StoreError::Unopenable(format!(
                    "the store at {path} is in use by another process ({error}); stop it first"
                ));
            }
            // sled says "corrupted data" without naming the file; a snapshot is the one file
            // that can simply be removed (sled rebuilds it from its log).
            let snapshot = error.contains("snap")
                || (error.contains("corrupt")
                    && std::fs::read_dir(&settings.path).is_ok_and(|dir| {
                        dir.flatten()
                            .any(|f| f.file_name().to_string_lossy().starts_with("snap."))
                    }));
            StoreError::Unopenable(format!(
                "the store at {path} cannot be opened: {error}. {}Restore a backup with \
                 `flowhook import` into an empty directory (set store.path to it), or move \
                 {path} aside to start empty",
                if snapshot {
                    "If a snapshot file (snap.* in that directory) is what is damaged, move \
                     it out of the directory: sled rebuilds it from its log. Otherwise: "
                } else {
                    ""
                }
            ))
        })?;
        Self::with_db(db, settings, rules)
    }

    fn with_db(
        db: sled::Db,
        settings: &StoreSettings,
        rules: Arc<Rules>,
    ) -> Result<Self, StoreError> {
        let trees = Trees {
            messages: db.open_tree("messages")?,
            dedupe: db.open_tree("dedupe")?,
            idx_callback: db.open_tree("idx_callback")?,
            idx_recipient: db.open_tree("idx_recipient")?,
            idx_time: db.open_tree("idx_time")?,
            aggregates: db.open_tree("aggregates")?,
            rejected: db.open_tree("rejected")?,
            meta: db.open_tree("meta")?,
            actions: db.open_tree("actions")?,
            action_idx: db.open_tree("action_idx")?,
            outbox: db.open_tree("outbox")?,
            inflight: db.open_tree("inflight")?,
        };
        upgrade::run(&trees)?;
        db.flush()?;
        let flusher = Arc::new(durability::Flusher::start(
            db.clone(),
            settings.durability,
            Duration::from_millis(settings.relaxed_flush_ms),
        ));
        let writer = writer::Writer::start(ingest::Context {
            trees: trees.clone(),
            fields: Fields::of(settings),
            rules: Arc::clone(&rules),
            flusher: Arc::clone(&flusher),
            max_events: settings.max_events_per_message,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                trees,
                writer,
                flusher,
                fields: Fields::of(settings),
                outbox_changed: tokio::sync::Notify::new(),
                path: settings.path.clone(),
                min_free_disk: settings.min_free_disk_bytes,
            }),
        })
    }

    /// Waits until a commit is durable (at once with `durability = "relaxed"`).
    async fn wait_durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        Ok(self.inner.flusher.wait(ticket).await?)
    }

    /// Ready when a write goes through, the last flush succeeded and the disk has at least
    /// `store.min_free_disk_bytes` free; the reason otherwise.
    pub fn readiness(&self) -> Result<(), String> {
        let free = free_disk_bytes(&self.inner.path)
            .map_err(|e| format!("cannot read the free disk space of the store: {e}"))?;
        if free < self.inner.min_free_disk {
            return Err(format!(
                "only {free} bytes free on the store's disk, below store.min_free_disk_bytes ({})",
                self.inner.min_free_disk
            ));
        }
        let now = chrono::Utc::now().timestamp().to_be_bytes();
        self.inner
            .trees
            .meta
            .insert("readyz", &now)
            .map_err(|e| format!("store is not writable: {e}"))?;
        if !self.inner.flusher.healthy() {
            return Err("the last flush to disk failed".into());
        }
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// Flushes everything and stops the flusher; later writes are no longer durable.
    /// Stops the writer and the flusher (for [`Store::reopen`]); requests queued meanwhile
    /// are answered [`StoreError::Closed`].
    pub(super) fn stop_background(&self) {
        self.inner.writer.stop();
        self.inner.flusher.stop();
    }

    /// False when the latest flush failed.
    pub(super) fn flushes_healthy(&self) -> bool {
        self.inner.flusher.healthy()
    }

    /// Whether this is the last handle on the open store (no request is using it).
    pub(super) fn sole_handle(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// Writes what is queued, then flushes; `Err` when that last flush failed (what was not
    /// yet acknowledged may not be on disk).
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.writer.stop();
        self.inner.flusher.stop();
        self.inner.db.flush()?;
        Ok(())
    }

    pub fn index_fields(&self) -> &[String] {
        &self.inner.fields.index
    }

    /// The callback fields counted per value (`store.stats_callback_fields`).
    pub fn stats_fields(&self) -> &[String] {
        &self.inner.fields.stats
    }
}

/// The callback fields a message is filed under: indexed for lookups, counted for stats.
#[derive(Clone, Debug, Default)]
pub(super) struct Fields {
    pub index: Vec<String>,
    pub stats: Vec<String>,
}

impl Fields {
    pub(super) fn of(settings: &StoreSettings) -> Self {
        Self {
            index: settings.index_callback_fields.clone(),
            stats: settings.stats_callback_fields.clone(),
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn json_bytes<T: serde::Serialize>(value: &T) -> TxResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ConflictableTransactionError::Abort(e.into()))
}

/// Decodes stored JSON inside a transaction, aborting it on corrupt data.
fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ConflictableTransactionError::Abort(e.into()))
}

/// A transaction's error as a store error.
fn abort(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
    }
}

/// A stored counter (i64 BE); 0 when absent or malformed.
fn read_i64(bytes: Option<&[u8]>) -> i64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
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

/// A message's entry in `idx_time`: when it last changed, then its id.
fn time_key(state: &crate::domain::MessageState) -> Vec<u8> {
    let mut k = (state.updated_at.timestamp_millis().max(0) as u64)
        .to_be_bytes()
        .to_vec();
    k.extend_from_slice(state.message_id.as_str().as_bytes());
    k
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
pub(crate) fn temporary(settings: &StoreSettings) -> SledStore {
    temporary_with(settings, Rules::default())
}

#[cfg(test)]
pub(crate) fn temporary_with(settings: &StoreSettings, rules: Rules) -> SledStore {
    let db = sled::Config::new()
        .temporary(true)
        .flush_every_ms(None)
        .open()
        .expect("temporary sled");
    SledStore::with_db(db, settings, Arc::new(rules)).expect("open temporary store")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, Provider, Status};

    /// A message as the release before failure codes and normalized recipients stored it:
    /// no `recipient_e164`, `recipient_user_id` or `failure_code`, Meta's recipient without
    /// `+`, and equal-time events in the old (alphabetical) order.
    const OLD_STATE: &str = r#"{"message_id":"wamid.OLD==","provider":"meta","channel":"whatsapp",
        "recipient":"16505551234","status":"read","failure_reason":null,"callback_data":null,
        "callback_data_raw":null,"callback_data_error":null,
        "first_seen_at":"2026-11-21T10:00:00Z","updated_at":"2026-11-21T10:00:00Z",
        "sent_at":"2026-11-21T10:00:00Z","delivered_at":null,"read_at":"2026-11-21T10:00:00Z",
        "failed_at":null,"clicks":[],"events":[
        {"kind":"status","status":"read","url":null,"at":"2026-11-21T10:00:00Z",
         "received_at":"2026-11-21T10:00:00Z","event_id":null,"provider":"meta",
         "recipient":"16505551234","channel":"whatsapp","failure_reason":null,"callback":null},
        {"kind":"status","status":"sent","url":null,"at":"2026-11-21T10:00:00Z",
         "received_at":"2026-11-21T10:00:00Z","event_id":null,"provider":"meta",
         "recipient":"16505551234","channel":"whatsapp","failure_reason":null,"callback":null}]}"#;

    #[tokio::test]
    async fn a_store_written_before_normalized_recipients_reads_and_is_found() {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let settings = StoreSettings::default();
        db.open_tree("messages")
            .unwrap()
            .insert("wamid.OLD==", OLD_STATE.as_bytes())
            .unwrap();
        db.open_tree("idx_recipient")
            .unwrap()
            .insert(key(&[b"16505551234", b"wamid.OLD=="]), &[])
            .unwrap();
        let dedupe = db.open_tree("dedupe").unwrap();
        for status in ["read", "sent"] {
            let natural = format!("wamid.OLD==|status|2026-11-21T10:00:00Z|{status}");
            // Format 0 kept a dedupe key per event; the upgrade removes them.
            let k = key(&[b"n", natural.as_bytes()]);
            dedupe.insert(k, &1_795_255_200u64.to_be_bytes()).unwrap();
        }
        let store = SledStore::with_db(db, &settings, Arc::new(Rules::default())).unwrap();

        let old = store.message("wamid.OLD==").unwrap().unwrap();
        assert_eq!(old.recipient.as_deref(), Some("16505551234"));
        assert_eq!(old.recipient_e164.as_deref(), Some("+16505551234"));
        assert_eq!(old.failure_code, None);
        for written in ["16505551234", "+1 650 555 1234", "+16505551234"] {
            let page = store
                .lookup(&Lookup::Recipient(written.into()), 10, None)
                .unwrap();
            assert_eq!(page.items.len(), 1, "{written}");
        }

        // New events fold into the old timeline; the old `sent` is still a duplicate.
        let event = |status: &str| {
            let mut e = Event::test_status("wamid.OLD==", status, 0);
            e.provider = Provider::Meta;
            e.event_id = None;
            e.at = old.events[0].at;
            IngestItem::Event(Box::new(e))
        };
        let outcome = store
            .ingest(
                Provider::Meta,
                vec![event("sent"), event("delivered")],
                crate::domain::now(),
            )
            .await
            .unwrap();
        assert_eq!((outcome.accepted, outcome.duplicates), (1, 1));
        let after = store.message("wamid.OLD==").unwrap().unwrap();
        let order: Vec<&str> = after
            .events
            .iter()
            .filter_map(|e| e.status.as_ref().map(Status::as_str))
            .collect();
        assert_eq!(order, ["sent", "delivered", "read"]);
        let page = store
            .lookup(&Lookup::Recipient("16505551234".into()), 10, None)
            .unwrap();
        assert_eq!(page.items.len(), 1, "refiled, not filed twice");
        assert!(
            store.inner.trees.dedupe.is_empty(),
            "format 0's event dedupe keys are gone"
        );
        assert_eq!(
            store
                .inner
                .trees
                .messages
                .get("wamid.OLD==")
                .unwrap()
                .unwrap()[0],
            0xF1,
            "the message is a versioned record now"
        );
    }

    #[tokio::test]
    async fn format_1_action_entries_move_into_the_records_and_go() {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format", &[1]).unwrap();
        meta.insert("recipient_index", "e164").unwrap();
        let record = record::Record::decode("wamid.OLD==", OLD_STATE.as_bytes()).unwrap();
        let mut v1 = record.encode().unwrap();
        v1.pop(); // format 1 had no action list
        v1[1] = 1;
        db.open_tree("messages")
            .unwrap()
            .insert("wamid.OLD==", v1)
            .unwrap();
        let index = db.open_tree("action_idx").unwrap();
        let created = 5u64.to_be_bytes();
        for id in ["act_b", "act_a"] {
            for k in [
                key(&[b"m", b"wamid.OLD==", id.as_bytes()]),
                [key(&[b"a", b""]), created.to_vec(), id.as_bytes().to_vec()].concat(),
                [
                    key(&[b"r", b"rule", b""]),
                    created.to_vec(),
                    id.as_bytes().to_vec(),
                ]
                .concat(),
                [
                    key(&[b"s", b"dead", b""]),
                    created.to_vec(),
                    id.as_bytes().to_vec(),
                ]
                .concat(),
            ] {
                index.insert(k, &[]).unwrap();
            }
        }
        let settings = StoreSettings::default();
        let store = SledStore::with_db(db, &settings, Arc::new(Rules::default())).unwrap();
        let bytes = store
            .inner
            .trees
            .messages
            .get("wamid.OLD==")
            .unwrap()
            .unwrap();
        let upgraded = record::Record::decode("wamid.OLD==", &bytes).unwrap();
        assert_eq!(bytes[1], record::VERSION);
        assert_eq!(upgraded.actions, ["act_a", "act_b"]);
        assert_eq!(upgraded.state, record.state);
        let left: Vec<u8> = store
            .inner
            .trees
            .action_idx
            .iter()
            .map(|e| e.unwrap().0[0])
            .collect();
        assert_eq!(left, b"ss", "only the state entries stay");
        // Opening again changes nothing.
        assert_eq!(
            store.inner.trees.meta.get("format").unwrap().as_deref(),
            Some(&[record::VERSION][..])
        );
    }
}
