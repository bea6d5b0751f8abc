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

use chrono::{DateTime, Utc};

use super::{
    Action, ActionFilter, ActionState, Attempt, BackupError, Checked, ClaimToken, DueEntry, Group,
    IngestItem, IngestOutcome, Lookup, Moved, Page, Purged, RejectedEvent, RetryOutcome,
    RetryPolicy, SledStore, StoreError,
};
use crate::config::StoreSettings;
use crate::domain::{MessageState, Provider};
use crate::rules::{Rules, Target};

/// A cheap, cloneable handle on the open store, whatever its backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    writes: std::sync::Arc<WriteHealth>,
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
}

/// `match` on the backend, binding it to `$b` in `$body`.
macro_rules! on_backend {
    ($self:ident, $b:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sled($b) => $body,
        }
    };
}

impl From<SledStore> for Store {
    fn from(store: SledStore) -> Self {
        Self {
            backend: Backend::Sled(store),
            writes: Default::default(),
        }
    }
}

impl Store {
    /// Opens (or creates) the store `settings` name; `rules` decide what ingest queues.
    pub fn open(
        settings: &StoreSettings,
        rules: std::sync::Arc<Rules>,
    ) -> Result<Self, StoreError> {
        Ok(SledStore::open(settings, rules)?.into())
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
        on_backend!(self, b => b.index_fields())
    }

    pub fn stats_fields(&self) -> &[String] {
        on_backend!(self, b => b.stats_fields())
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
        on_backend!(self, b => b.outbox_changed().await)
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
        on_backend!(self, b => b.readiness())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        on_backend!(self, b => b.size_on_disk())
    }

    /// Makes everything durable and stops background work; later writes are not durable.
    /// Writes what is queued and flushes; `Err` when the final flush failed.
    pub fn close(&self) -> Result<(), StoreError> {
        on_backend!(self, b => b.close())
    }
}
