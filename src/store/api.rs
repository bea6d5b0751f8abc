//! The storage seam: [`Store`] is everything the rest of flowhook may ask of storage, and
//! nothing about how a backend keeps it. Cursors are opaque strings, a claim is a [`DueEntry`]
//! whose token only the store reads, errors are [`StoreError`]s, and durability is the store's
//! business: a write returns once it is durable (at once with `durability = "relaxed"`).
//!
//! The domain decisions are not here: folding events into a state is
//! [`MessageState::apply`](crate::domain::MessageState::apply), what a change asks of the
//! outbox is [`Rules::plan`](crate::rules::Rules::plan), and every action transition is in
//! [`crate::rules::lifecycle`]. A backend persists what those decide, atomically per request.
//!
//! The one backend today is the embedded sled store ([`SledStore`]); another is one more
//! variant of `Backend` and one more arm per method.

use std::io::{BufRead, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use super::{
    Action, ActionFilter, ActionState, Attempt, BackupError, Checked, ClaimToken, DueEntry, Group,
    IngestItem, IngestOutcome, Lookup, Moved, Page, Purged, RejectedEvent, RetryOutcome,
    RetryPolicy, SledStore, StoreError,
};
use crate::config::StoreSettings;
use crate::domain::{MessageState, Provider};
use crate::rules::{Rules, Target};

/// A cheap, cloneable handle on the open store, whatever its backend. Every clone sees the
/// same store, also after [`Store::reopen`] replaced it.
#[derive(Clone)]
pub struct Store {
    backend: Arc<RwLock<Backend>>,
    writes: Arc<WriteHealth>,
    /// `store.index_callback_fields` and `store.stats_callback_fields`.
    fields: Arc<(Vec<String>, Vec<String>)>,
    /// What the store was opened with, to open it again.
    opened_with: Option<Arc<(StoreSettings, Arc<Rules>)>>,
}

/// Whether writes are being made durable, so that a failing disk is logged once when writes
/// start failing and once when they succeed again, not once per request.
#[derive(Default)]
struct WriteHealth {
    failing: std::sync::atomic::AtomicBool,
}

impl WriteHealth {
    fn record<T>(&self, result: &Result<T, StoreError>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("the store accepts writes again");
                }
            }
            Err(error) if error.is_storage_failure() => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        %error,
                        "the store stopped accepting writes; webhooks are answered 503 with \
                         Retry-After until it accepts them again (see /readyz)"
                    );
                }
            }
            Err(_) => {}
        }
    }
}

#[derive(Clone)]
enum Backend {
    Sled(SledStore),
    /// Between dropping a failed store and opening it again (see [`Store::reopen`]), or after
    /// opening it again failed: every call answers [`StoreError::Closed`].
    Closed,
}

/// `match` on the current backend (a cheap clone, so no lock is held in `$body`), binding it
/// to `$b`; a closed store answers `Err(StoreError::Closed)`.
macro_rules! on_backend {
    ($self:ident, $b:ident => $body:expr) => {
        match $self.current() {
            Backend::Sled($b) => $body,
            Backend::Closed => return Err(StoreError::Closed.into()),
        }
    };
}

impl From<SledStore> for Store {
    fn from(store: SledStore) -> Self {
        let fields = (store.index_fields().to_vec(), store.stats_fields().to_vec());
        Self {
            backend: Arc::new(RwLock::new(Backend::Sled(store))),
            writes: Default::default(),
            fields: Arc::new(fields),
            opened_with: None,
        }
    }
}

/// How long a reopen waits for requests still using the failed store to finish with it.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (or creates) the store `settings` name; `rules` decide what ingest queues.
    pub fn open(settings: &StoreSettings, rules: Arc<Rules>) -> Result<Self, StoreError> {
        let store = SledStore::open(settings, Arc::clone(&rules))?;
        Ok(Self {
            opened_with: Some(Arc::new((settings.clone(), rules))),
            ..store.into()
        })
    }

    fn current(&self) -> Backend {
        self.backend.read().expect("store lock").clone()
    }

    /// Whether the store cannot take writes now, as far as cheap signs tell: the last webhook
    /// write or the last flush failed, or the store is closed for a reopen.
    pub fn storage_failing(&self) -> bool {
        self.writes.failing.load(Ordering::Acquire)
            || match self.current() {
                Backend::Sled(b) => !b.flushes_healthy(),
                Backend::Closed => true,
            }
    }

    /// Opens the store again in place, after its storage failed: sled 0.34 refuses every write
    /// after its first I/O error until the store is opened again.
    ///
    /// From the first moment every call answers [`StoreError::Closed`] (503 for webhooks).
    /// The failed store's writer and flusher stop, requests still using it get up to
    /// [`REOPEN_WAIT`] to finish with it, and it is dropped (sled locks its files). Then the
    /// directory is opened again: sled recovers it up to its last complete write, which holds
    /// everything acknowledged, and calls a crash or the failure left in flight are queued
    /// again. If opening fails (the old store is still held, the disk is still full), the
    /// store stays closed; call it again later.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let (settings, rules) = &**self
            .opened_with
            .as_ref()
            .ok_or_else(|| StoreError::Incompatible("this store cannot be reopened".into()))?;
        let old = std::mem::replace(
            &mut *self.backend.write().expect("store lock"),
            Backend::Closed,
        );
        if let Backend::Sled(old) = old {
            old.stop_background();
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            while !old.sole_handle() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let fresh = SledStore::open(settings, Arc::clone(rules))?;
        let recovered = fresh.recover_in_flight()?;
        *self.backend.write().expect("store lock") = Backend::Sled(fresh);
        self.writes.failing.store(false, Ordering::Release);
        tracing::warn!(
            calls_resent = recovered,
            "the store was opened again and accepts writes"
        );
        Ok(())
    }

    // Ingest and reads.

    /// Stores every item of one request atomically, with the actions the rules ask for, and
    /// returns once that is durable.
    pub async fn ingest(
        &self,
        provider: Provider,
        items: Vec<IngestItem>,
        received_at: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let result = on_backend!(self, b => b.ingest(provider, items, received_at).await);
        self.writes.record(&result);
        result
    }

    pub fn message(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        on_backend!(self, b => b.message(id))
    }

    /// Messages filed under a callback value or a recipient.
    pub fn lookup(
        &self,
        lookup: &Lookup,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        on_backend!(self, b => b.lookup(lookup, limit, cursor))
    }

    /// Messages by last update, newest first.
    pub fn recent(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        on_backend!(self, b => b.recent(limit, cursor))
    }

    /// Quarantined events, oldest first.
    pub fn rejected(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<RejectedEvent>, StoreError> {
        on_backend!(self, b => b.rejected(limit, cursor))
    }

    /// Per-value counts of a counted callback field over a range of days.
    pub fn stats(
        &self,
        field: &str,
        from: Option<u32>,
        to: Option<u32>,
    ) -> Result<Vec<Group>, StoreError> {
        on_backend!(self, b => b.stats(field, from, to))
    }

    pub fn index_fields(&self) -> &[String] {
        &self.fields.0
    }

    pub fn stats_fields(&self) -> &[String] {
        &self.fields.1
    }

    // Actions and the outbox.

    pub fn action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        on_backend!(self, b => b.action(id))
    }

    pub fn message_actions(&self, message_id: &str) -> Result<Vec<Action>, StoreError> {
        on_backend!(self, b => b.message_actions(message_id))
    }

    pub fn actions(
        &self,
        filter: &ActionFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Action>, StoreError> {
        on_backend!(self, b => b.actions(filter, limit, cursor))
    }

    pub fn action_counts(&self) -> Result<Vec<(ActionState, i64)>, StoreError> {
        on_backend!(self, b => b.action_counts())
    }

    /// A target's actions due by `now_ms`, earliest first.
    pub fn due_actions(
        &self,
        target: Target,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        on_backend!(self, b => b.due_actions(target, now_ms, limit))
    }

    pub fn next_due_ms(&self, target: Target) -> Result<Option<u64>, StoreError> {
        on_backend!(self, b => b.next_due_ms(target))
    }

    pub fn oldest_due_ms(&self) -> Result<u64, StoreError> {
        on_backend!(self, b => b.oldest_due_ms())
    }

    /// Takes due actions for sending: `None` for an entry no longer waiting.
    pub fn claim_many(&self, entries: &[DueEntry]) -> Result<Vec<Option<Action>>, StoreError> {
        on_backend!(self, b => b.claim_many(entries))
    }

    /// Records how a claimed action's attempt went, once per claim (recording the same claim
    /// again changes nothing and returns the action as it is); returns once that is durable.
    /// `None` when the action is gone (purged while in flight).
    pub async fn complete(
        &self,
        claim: &ClaimToken,
        attempt: &Attempt,
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Result<Option<Action>, StoreError> {
        on_backend!(self, b => b.complete(claim, attempt, policy, now).await)
    }

    /// [`Store::complete`] for several attempts at once. `now` is when they finished: the
    /// next attempt of a retried one is scheduled from it.
    pub async fn complete_many(
        &self,
        done: &[(ClaimToken, Attempt)],
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Action>>, StoreError> {
        on_backend!(self, b => b.complete_many(done, policy, now).await)
    }

    /// Puts actions a crash left in flight back in the outbox.
    pub fn recover_in_flight(&self) -> Result<usize, StoreError> {
        on_backend!(self, b => b.recover_in_flight())
    }

    pub fn retry_action(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        on_backend!(self, b => b.retry_action(id))
    }

    pub fn retry_actions(&self, filter: &ActionFilter, batch: usize) -> Result<u64, StoreError> {
        on_backend!(self, b => b.retry_actions(filter, batch))
    }

    /// Wakes when something was added to the outbox.
    pub async fn outbox_changed(&self) {
        match self.current() {
            Backend::Sled(b) => b.outbox_changed().await,
            Backend::Closed => std::future::pending().await,
        }
    }

    // Retention, backup and operations.

    /// Purges messages older than `messages_before` and dedupe data older than
    /// `dedupe_before`.
    pub fn purge(
        &self,
        messages_before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        on_backend!(self, b => b.purge(messages_before, dedupe_before))
    }

    /// Reads every stored record; reports those that cannot be read.
    pub fn check(&self) -> Result<Checked, StoreError> {
        on_backend!(self, b => b.check())
    }

    pub fn export(&self, out: &mut dyn Write) -> Result<Moved, BackupError> {
        on_backend!(self, b => b.export(out))
    }

    pub fn import(&self, input: &mut dyn BufRead) -> Result<Moved, BackupError> {
        on_backend!(self, b => b.import(input))
    }

    /// Ready to accept writes, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        match self.current() {
            Backend::Sled(b) => b.readiness(),
            Backend::Closed => {
                Err("the store is being opened again after a storage failure".into())
            }
        }
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        on_backend!(self, b => b.size_on_disk())
    }

    /// Writes what is queued, flushes and stops background work; `Err` when the final flush
    /// failed. The handle is closed after (calls answer [`StoreError::Closed`]), so the store's
    /// files are released as soon as no request holds it: a restart or a tool can open them.
    pub fn close(&self) -> Result<(), StoreError> {
        let backend = std::mem::replace(
            &mut *self.backend.write().expect("store lock"),
            Backend::Closed,
        );
        match backend {
            Backend::Sled(b) => b.close(),
            Backend::Closed => Ok(()),
        }
    }
}
