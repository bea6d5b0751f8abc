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
//! Two backends: the embedded store ([`EmbeddedStore`], on sled by default or on fjall) and a
//! Postgres database that several instances share ([`PgStore`]). The embedded store's reads
//! are synchronous and quick, its writes go through its writer thread (async); the long scans
//! run on the blocking pool.

use std::io::{BufRead, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use super::postgres::{PgStore, Schema};
use super::{
    Action, ActionFilter, ActionState, Attempt, BackupError, Checked, ClaimToken, DueEntry,
    EmbeddedStore, Group, IngestItem, IngestOutcome, Lookup, Moved, Opening, Page, Purged,
    RejectedEvent, RetryOutcome, RetryPolicy, StoreError,
};
use crate::config::{StoreBackend, StoreSettings};
use crate::domain::optout::{self, RecipientAnswer};
use crate::domain::{recipient, MessageState, Preferences, Provider};
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

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
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
    /// sled or fjall, one process per store.
    Embedded(EmbeddedStore),
    Postgres(PgStore),
    /// Between dropping a failed store and opening it again (see [`Store::reopen`]), or after
    /// opening it again failed: every call answers [`StoreError::Closed`].
    Closed,
}

/// Calls `$method($args)` on the current backend (a cheap clone, so no lock is held across
/// the call). `sync` for a method that is synchronous on the embedded store, `async` for one
/// that is async on both; Postgres's are all async. A closed store answers `Err(StoreError::Closed)`.
macro_rules! call {
    ($self:ident, sync $method:ident($($arg:expr),*)) => {
        match $self.current() {
            Backend::Embedded(b) => b.$method($($arg),*),
            Backend::Postgres(b) => b.$method($($arg),*).await,
            Backend::Closed => Err(StoreError::Closed.into()),
        }
    };
    ($self:ident, async $method:ident($($arg:expr),*)) => {
        match $self.current() {
            Backend::Embedded(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.$method($($arg),*).await,
            Backend::Closed => Err(StoreError::Closed.into()),
        }
    };
}

/// Runs a long embedded scan on the blocking pool, so that it holds up no request's thread.
async fn blocking<T: Send + 'static>(
    store: EmbeddedStore,
    f: impl FnOnce(&EmbeddedStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
}

impl From<PgStore> for Store {
    fn from(store: PgStore) -> Self {
        let fields = (store.index_fields().to_vec(), store.stats_fields().to_vec());
        Self {
            backend: Arc::new(RwLock::new(Backend::Postgres(store))),
            writes: Default::default(),
            fields: Arc::new(fields),
            opened_with: None,
        }
    }
}

impl From<EmbeddedStore> for Store {
    fn from(store: EmbeddedStore) -> Self {
        let fields = (store.index_fields().to_vec(), store.stats_fields().to_vec());
        Self {
            backend: Arc::new(RwLock::new(Backend::Embedded(store))),
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
    /// A Postgres database gets its pending migrations first, unless
    /// `store.postgres.migrate = false` (then its schema must be this build's).
    pub async fn open(settings: &StoreSettings, rules: Arc<Rules>) -> Result<Self, StoreError> {
        Self::open_as(settings, rules, Opening::Serve).await
    }

    /// Opens the store to read what it holds (`export`, `check-store`): an embedded store
    /// that lost acknowledged writes opens anyway, with [`Store::loss`] saying what is missing.
    pub async fn open_to_inspect(settings: &StoreSettings) -> Result<Self, StoreError> {
        Self::open_as(settings, Arc::default(), Opening::Inspect).await
    }

    async fn open_as(
        settings: &StoreSettings,
        rules: Arc<Rules>,
        opening: Opening,
    ) -> Result<Self, StoreError> {
        if settings.backend == StoreBackend::Postgres {
            let schema = if settings.postgres.migrate {
                Schema::Migrate
            } else {
                Schema::Check
            };
            return Ok(PgStore::open(settings, rules, schema).await?.into());
        }
        let (owned, shared) = (settings.clone(), Arc::clone(&rules));
        let store =
            tokio::task::spawn_blocking(move || EmbeddedStore::open(&owned, shared, opening))
                .await
                .map_err(|e| StoreError::Backend(Box::new(e)))??;
        Ok(Self {
            opened_with: Some(Arc::new((settings.clone(), rules))),
            ..store.into()
        })
    }

    /// Creates or upgrades the Postgres schema (`flowhook migrate`); the version it is at.
    pub async fn migrate(settings: &StoreSettings) -> Result<i64, StoreError> {
        let store = PgStore::open(settings, Arc::default(), Schema::Migrate).await?;
        let version = store.schema_version().await;
        store.close().await;
        version
    }

    /// Acknowledged writes an embedded store opened without (only with
    /// [`Store::open_to_inspect`]; such a store is refused otherwise).
    pub fn loss(&self) -> Option<super::Loss> {
        match self.current() {
            Backend::Embedded(b) => b.loss().cloned(),
            _ => None,
        }
    }

    fn current(&self) -> Backend {
        self.backend.read().expect("store lock").clone()
    }

    /// Whether the store cannot take writes now, as far as cheap signs tell: the last webhook
    /// write or the last flush failed, or the store is closed for a reopen.
    pub fn storage_failing(&self) -> bool {
        self.writes.failing.load(Ordering::Acquire)
            || match self.current() {
                Backend::Embedded(b) => !b.flushes_healthy(),
                Backend::Postgres(_) => false,
                Backend::Closed => true,
            }
    }

    /// Opens the store again in place, after its storage failed: sled 0.34 refuses every write
    /// after its first I/O error until the store is opened again, and a fjall handle takes no
    /// more writes after a failed one (part of the batch may be left in its journal's buffer).
    ///
    /// From the first moment every call answers [`StoreError::Closed`] (503 for webhooks).
    /// The failed store's writer and flusher stop, requests still using it get up to
    /// [`REOPEN_WAIT`] to finish with it, and it is dropped (the engine locks its files). Then the
    /// directory is opened again: the engine recovers it up to its last complete write, which
    /// holds everything acknowledged, and calls a crash or the failure left in flight are
    /// queued again. If opening fails (the old store is still held, the disk is still full), the
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
        if let Backend::Embedded(old) = old {
            old.stop_background();
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            while !old.sole_handle() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let fresh = EmbeddedStore::open(settings, Arc::clone(rules), Opening::Serve)?;
        let recovered = fresh.recover_in_flight()?;
        *self.backend.write().expect("store lock") = Backend::Embedded(fresh);
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
        let result = call!(self, async ingest(provider, items, received_at));
        self.writes.record(&result);
        result
    }

    pub async fn message(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        call!(self, sync message(id))
    }

    /// A recipient's marketing preferences, by its key (see
    /// [`optout::key_of`](crate::domain::optout::key_of)).
    pub async fn preferences(&self, key: &str) -> Result<Option<Preferences>, StoreError> {
        call!(self, sync preferences(key))
    }

    /// Whether claiming an action already checks whether its recipient is opted out (and
    /// skips it): Postgres does, in the claim's transaction; the embedded store is asked at
    /// call time with [`Store::opted_out`].
    pub fn checks_opt_outs_when_claiming(&self) -> bool {
        matches!(self.current(), Backend::Postgres(_))
    }

    /// Whether the recipient of message `id` is opted out now; false for a message flowhook
    /// does not have, or whose recipient it does not know.
    pub async fn opted_out(&self, id: &str) -> Result<bool, StoreError> {
        let Some(key) = self.message(id).await?.as_ref().and_then(optout::key_of) else {
            return Ok(false);
        };
        Ok(self.preferences(&key).await?.is_some_and(|p| p.opted_out()))
    }

    /// What `GET /v1/recipients/{recipient}` answers: the preference of the recipient written
    /// `raw` (any phone form, or an id as sent); `None` when flowhook knows nothing of it (no
    /// choice and no message).
    pub async fn recipient(&self, raw: &str) -> Result<Option<RecipientAnswer>, StoreError> {
        let keys: Vec<String> = [Some(recipient::lookup_key(raw)), recipient::unlisted(raw)]
            .into_iter()
            .flatten()
            .collect();
        for key in &keys {
            if let Some(prefs) = self.preferences(key).await? {
                return Ok(Some(prefs.answer()));
            }
        }
        for key in keys {
            let page = self
                .lookup(&Lookup::Recipient(key.clone()), 1, None)
                .await?;
            if !page.items.is_empty() {
                return Ok(Some(RecipientAnswer::none(key)));
            }
        }
        Ok(None)
    }

    /// Messages filed under a callback value or a recipient.
    pub async fn lookup(
        &self,
        lookup: &Lookup,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        call!(self, sync lookup(lookup, limit, cursor))
    }

    /// Messages by last update, newest first.
    pub async fn recent(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        call!(self, sync recent(limit, cursor))
    }

    /// Quarantined events, oldest first.
    pub async fn rejected(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<RejectedEvent>, StoreError> {
        call!(self, sync rejected(limit, cursor))
    }

    /// Per-value counts of a counted callback field over a range of days.
    pub async fn stats(
        &self,
        field: &str,
        from: Option<u32>,
        to: Option<u32>,
    ) -> Result<Vec<Group>, StoreError> {
        match self.current() {
            Backend::Embedded(b) => {
                let field = field.to_owned();
                blocking(b, move |b| b.stats(&field, from, to)).await
            }
            Backend::Postgres(b) => b.stats(field, from, to).await,
            Backend::Closed => Err(StoreError::Closed),
        }
    }

    pub fn index_fields(&self) -> &[String] {
        &self.fields.0
    }

    pub fn stats_fields(&self) -> &[String] {
        &self.fields.1
    }

    // Actions and the outbox.

    pub async fn action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        call!(self, sync action(id))
    }

    pub async fn message_actions(&self, message_id: &str) -> Result<Vec<Action>, StoreError> {
        call!(self, sync message_actions(message_id))
    }

    pub async fn actions(
        &self,
        filter: &ActionFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Action>, StoreError> {
        call!(self, sync actions(filter, limit, cursor))
    }

    pub async fn action_counts(&self) -> Result<Vec<(ActionState, i64)>, StoreError> {
        call!(self, sync action_counts())
    }

    /// A target's actions due by `now_ms`, earliest first.
    pub async fn due_actions(
        &self,
        target: Target,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        call!(self, sync due_actions(target, now_ms, limit))
    }

    pub async fn next_due_ms(&self, target: Target) -> Result<Option<u64>, StoreError> {
        call!(self, sync next_due_ms(target))
    }

    pub async fn oldest_due_ms(&self) -> Result<u64, StoreError> {
        call!(self, sync oldest_due_ms())
    }

    /// Takes due actions for sending: `None` for an entry no longer waiting (or, with
    /// Postgres, claimed by another instance). With Postgres the claim holds for `lease`
    /// (`dispatch.lease_seconds`); then another instance may claim the action again. An
    /// embedded store, with one process per store, needs no lease.
    pub async fn claim_many(
        &self,
        entries: &[DueEntry],
        lease: std::time::Duration,
    ) -> Result<Vec<Option<Action>>, StoreError> {
        match self.current() {
            Backend::Embedded(b) => b.claim_many(entries).await,
            Backend::Postgres(b) => b.claim_many(entries, lease).await,
            Backend::Closed => Err(StoreError::Closed),
        }
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
        let done = [(claim.clone(), attempt.clone())];
        Ok(self
            .complete_many(&done, policy, now)
            .await?
            .pop()
            .flatten())
    }

    /// [`Store::complete`] for several attempts at once. `now` is when they finished: the
    /// next attempt of a retried one is scheduled from it.
    pub async fn complete_many(
        &self,
        done: &[(ClaimToken, Attempt)],
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Action>>, StoreError> {
        call!(self, async complete_many(done, policy, now))
    }

    /// Puts actions a crash left in flight back in the outbox. With Postgres this is the
    /// lease's job: an action held by an instance that is gone is due again when its lease
    /// ends, whichever instance claims it.
    pub async fn recover_in_flight(&self) -> Result<usize, StoreError> {
        match self.current() {
            Backend::Embedded(b) => blocking(b, |b| b.recover_in_flight()).await,
            Backend::Postgres(b) => b.recover_in_flight().await,
            Backend::Closed => Err(StoreError::Closed),
        }
    }

    pub async fn retry_action(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        call!(self, async retry_action(id))
    }

    pub async fn retry_actions(
        &self,
        filter: &ActionFilter,
        batch: usize,
    ) -> Result<u64, StoreError> {
        match self.current() {
            Backend::Embedded(b) => {
                let filter = filter.clone();
                blocking(b, move |b| b.retry_actions(&filter, batch)).await
            }
            Backend::Postgres(b) => b.retry_actions(filter, batch).await,
            Backend::Closed => Err(StoreError::Closed),
        }
    }

    /// Wakes when something was added to the outbox.
    pub async fn outbox_changed(&self) {
        match self.current() {
            Backend::Embedded(b) => b.outbox_changed().await,
            Backend::Postgres(b) => b.outbox_changed().await,
            Backend::Closed => std::future::pending().await,
        }
    }

    // Retention, backup and operations.

    /// Purges messages older than `messages_before` and dedupe data older than
    /// `dedupe_before`.
    pub async fn purge(
        &self,
        messages_before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        match self.current() {
            Backend::Embedded(b) => {
                blocking(b, move |b| b.purge(messages_before, dedupe_before)).await
            }
            Backend::Postgres(b) => b.purge(messages_before, dedupe_before).await,
            Backend::Closed => Err(StoreError::Closed),
        }
    }

    /// Reads every stored record; reports those that cannot be read.
    pub async fn check(&self) -> Result<Checked, StoreError> {
        call!(self, sync check())
    }

    pub async fn export(&self, out: &mut (dyn Write + Send)) -> Result<Moved, BackupError> {
        call!(self, sync export(out))
    }

    pub async fn import(&self, input: &mut (dyn BufRead + Send)) -> Result<Moved, BackupError> {
        call!(self, async import(input))
    }

    /// Ready to accept writes, or why not.
    pub async fn readiness(&self) -> Result<(), String> {
        match self.current() {
            Backend::Embedded(b) => b.readiness().await,
            Backend::Postgres(b) => b.readiness().await,
            Backend::Closed => {
                Err("the store is being opened again after a storage failure".into())
            }
        }
    }

    pub async fn size_on_disk(&self) -> Result<u64, StoreError> {
        call!(self, sync size_on_disk())
    }

    /// The Postgres pool's connections, open and idle; `None` on an embedded store.
    pub fn database_connections(&self) -> Option<(u32, usize)> {
        match self.current() {
            Backend::Postgres(b) => Some(b.pool_state()),
            _ => None,
        }
    }

    /// Whether the store is shared by several instances (Postgres): the embedded-only background
    /// work (reopening after a disk failure) is not started.
    pub fn is_shared(&self) -> bool {
        matches!(self.current(), Backend::Postgres(_))
    }

    /// Writes what is queued, flushes and stops background work; `Err` when the final flush
    /// failed. The handle is closed after (calls answer [`StoreError::Closed`]), so the store's
    /// files are released as soon as no request holds it: a restart or a tool can open them.
    pub async fn close(&self) -> Result<(), StoreError> {
        let backend = std::mem::replace(
            &mut *self.backend.write().expect("store lock"),
            Backend::Closed,
        );
        match backend {
            // Joins the writer and flushes: blocking work.
            Backend::Embedded(b) => blocking(b, |b| b.close()).await,
            Backend::Postgres(b) => {
                b.close().await;
                Ok(())
            }
            Backend::Closed => Ok(()),
        }
    }
}
