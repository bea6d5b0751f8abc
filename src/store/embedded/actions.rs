//! The embedded outbox's bookkeeping: how the store files what
//! [`crate::rules::lifecycle`] decides.
//!
//! An action is created in the same write set as the event that triggered it. From then on
//! every change of state is one write set over the action, its index entries, its outbox
//! entry and the aggregates, so the four never disagree:
//!
//! - an action has an outbox entry (`<due ms><id>`) exactly while it is `pending` or
//!   `retrying` and not in flight;
//! - a claimed action is marked in flight and listed in `inflight`, which a start after a crash
//!   puts back in the outbox (so a call cut off by a crash is made again, with the same
//!   `Idempotency-Key`).

use std::ops::Bound;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::durability::Ticket;
use super::engine::Space;
use super::tx::{Tx, TxTree};
use super::{from_json, json_bytes, EmbeddedStore};
use crate::observe;
use crate::rules::lifecycle::{Action, ActionOutcome, ActionState};
use crate::rules::Target;
use crate::store::query::Page;
use crate::store::record::Record;
use crate::store::{key, ActionFilter, RetryOutcome, StoreError};

impl Action {
    /// The outbox key while the action waits for an attempt.
    pub(super) fn outbox_key(&self) -> Option<Vec<u8>> {
        let (target, due) = self.waits_for()?;
        Some(outbox_key(target, due.max(0) as u64, &self.id))
    }

    /// The action's index entries: by state, and by rule and state (listing all actions, or a
    /// rule's, merges the states; see [`EmbeddedStore::actions`]). A message's actions are listed
    /// in its record.
    fn index_entries(&self) -> [Vec<u8>; 2] {
        let created = self.created_key();
        let state = self.state.as_str().as_bytes();
        [
            key(&[b"s", state, &created]),
            key(&[b"q", self.rule.as_bytes(), state, &created]),
        ]
    }

    /// Creation time then id: list order.
    fn created_key(&self) -> Vec<u8> {
        let mut k = (self.created_at.timestamp_millis().max(0) as u64)
            .to_be_bytes()
            .to_vec();
        k.extend_from_slice(self.id.as_bytes());
        k
    }
}

/// `<target>\0<due ms><id>`: each target's entries in due order, so the dispatcher reads
/// only targets with room for another call.
fn outbox_key(target: Target, due_ms: u64, id: &str) -> Vec<u8> {
    let mut k = key(&[target.as_str().as_bytes(), b""]);
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn outbox_prefix(target: Target) -> Vec<u8> {
    key(&[target.as_str().as_bytes(), b""])
}

/// The keyspaces an action change touches, inside a write.
pub(super) struct ActionTx<'t, 'e> {
    pub actions: TxTree<'t, 'e>,
    pub index: TxTree<'t, 'e>,
    pub outbox: TxTree<'t, 'e>,
    pub aggregates: TxTree<'t, 'e>,
    pub inflight: TxTree<'t, 'e>,
    /// The messages' records (a timer reads its message's state).
    pub messages: TxTree<'t, 'e>,
}

impl<'t, 'e> ActionTx<'t, 'e> {
    pub fn of(tx: &'t Tx<'e>) -> Self {
        Self {
            actions: tx.tree(Space::Actions),
            index: tx.tree(Space::ActionIdx),
            outbox: tx.tree(Space::Outbox),
            aggregates: tx.tree(Space::Aggregates),
            inflight: tx.tree(Space::Inflight),
            messages: tx.tree(Space::Messages),
        }
    }

    pub fn load(&self, id: &str) -> Result<Option<Action>, StoreError> {
        self.actions
            .get(id.as_bytes())?
            .map(|bytes| from_json(&bytes))
            .transpose()
    }

    pub fn create(&self, action: &Action) -> Result<(), StoreError> {
        self.actions
            .insert(action.id.as_bytes(), json_bytes(action)?)?;
        for k in action.index_entries() {
            self.index.insert(k, [])?;
        }
        if let Some(k) = action.outbox_key() {
            self.outbox.insert(k, [])?;
        }
        self.count(action, 1)
    }

    /// Writes `new` over `old`, moving index entries, outbox entry and counts.
    pub fn update(&self, old: &Action, new: &Action) -> Result<(), StoreError> {
        self.actions.insert(new.id.as_bytes(), json_bytes(new)?)?;
        if old.state != new.state {
            for k in old.index_entries() {
                self.index.remove(k)?;
            }
            for k in new.index_entries() {
                self.index.insert(k, [])?;
            }
            self.count(old, -1)?;
            self.count(new, 1)?;
        }
        let (before, after) = (old.outbox_key(), new.outbox_key());
        if before != after {
            if let Some(k) = before {
                self.outbox.remove(k)?;
            }
            if let Some(k) = after {
                self.outbox.insert(k, [])?;
            }
        }
        if old.in_flight != new.in_flight {
            if new.in_flight {
                self.inflight.insert(new.id.as_bytes(), [])?;
            } else {
                self.inflight.remove(new.id.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Removes an action and everything filed for it.
    pub fn delete(&self, action: &Action) -> Result<(), StoreError> {
        self.actions.remove(action.id.as_bytes())?;
        for k in action.index_entries() {
            self.index.remove(k)?;
        }
        if let Some(k) = action.outbox_key() {
            self.outbox.remove(k)?;
        }
        self.inflight.remove(action.id.as_bytes())?;
        self.count(action, -1)
    }

    /// Actions by state (`action:<state>`): per callback value and day for the stats, and
    /// overall (under the empty field, which no indexed field can be) for the metrics.
    fn count(&self, action: &Action, delta: i64) -> Result<(), StoreError> {
        for (field, value, day, metric) in action.counters() {
            let k = crate::store::stats::stats_key(field, value, day, &metric);
            super::stats::add(self.aggregates, k, delta)?;
        }
        super::stats::add(self.aggregates, overall_key(action.state), delta)
    }
}

impl ActionFilter {
    /// The index prefixes whose entries (`<created><id>` after the prefix) together list the
    /// matching actions: one for a given state, else one per state.
    fn prefixes(&self) -> Vec<Vec<u8>> {
        let states = match self.state {
            Some(state) => vec![state],
            None => ActionState::ALL.to_vec(),
        };
        states
            .into_iter()
            .map(|state| {
                let mut prefix = match &self.rule {
                    None => key(&[b"s", state.as_str().as_bytes()]),
                    Some(rule) => key(&[b"q", rule.as_bytes(), state.as_str().as_bytes()]),
                };
                prefix.push(0);
                prefix
            })
            .collect()
    }
}

/// The counter of all actions in one state (the empty field, which no indexed field can be).
pub(super) fn overall_key(state: ActionState) -> Vec<u8> {
    key(&[b"", b"", format!("action:{state}").as_bytes()])
}

impl EmbeddedStore {
    /// Runs `write` on the writer (see [`super::writer`]); its result once committed, and
    /// the ticket to wait for when the change must be durable. Callers that do not wait
    /// are at-least-once: a change lost in a crash is made again.
    pub(super) async fn action_write<R: Send + 'static>(
        &self,
        write: impl FnOnce(&ActionTx<'_, '_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<(R, Ticket), StoreError> {
        self.inner
            .writer
            .write(1, move |tx| write(&ActionTx::of(tx)))
            .await
    }

    /// [`EmbeddedStore::action_write`] from the blocking pool.
    pub(super) fn action_write_blocking<R: Send + 'static>(
        &self,
        write: impl FnOnce(&ActionTx<'_, '_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<(R, Ticket), StoreError> {
        self.inner
            .writer
            .write_blocking(1, move |tx| write(&ActionTx::of(tx)))
    }

    pub fn action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        self.engine()
            .get(Space::Actions, id.as_bytes())?
            .map(|b| serde_json::from_slice(&b).map_err(StoreError::from))
            .transpose()
    }

    /// A message's actions, in the order they were queued.
    pub fn message_actions(&self, message_id: &str) -> Result<Vec<Action>, StoreError> {
        let Some(bytes) = self.engine().get(Space::Messages, message_id.as_bytes())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in Record::decode(message_id, &bytes)?.actions {
            match self.action(&id) {
                Ok(Some(action)) => out.push(action),
                Ok(None) => {}
                // One unreadable action does not hide the message's others.
                Err(error) if error.is_unreadable() => {
                    crate::store::unreadable("action", &id, &error)
                }
                Err(error) => return Err(error),
            }
        }
        // Upgraded stores listed them in id order.
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Up to `limit` index positions (`<created><id>`) of the actions matching `filter`,
    /// after `after`, oldest first: the filter's index ranges (one per state when no state is
    /// given) merged.
    fn positions(
        &self,
        filter: &ActionFilter,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut found = Vec::new();
        for prefix in filter.prefixes() {
            let start = match after {
                Some(after) => Bound::Excluded([prefix.as_slice(), after].concat()),
                None => Bound::Included(prefix.clone()),
            };
            let start = start.as_ref().map(Vec::as_slice);
            let range = self
                .engine()
                .range(Space::ActionIdx, start, Bound::Unbounded, false);
            for entry in range.take(limit) {
                let (k, _) = entry?;
                if !k.starts_with(&prefix) {
                    break;
                }
                found.push(k[prefix.len()..].to_vec());
            }
        }
        found.sort_unstable();
        found.truncate(limit);
        Ok(found)
    }

    /// Actions matching the filter, oldest first.
    pub fn actions(
        &self,
        filter: &ActionFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Action>, StoreError> {
        let after = cursor
            .map(|c| URL_SAFE_NO_PAD.decode(c).map_err(|_| StoreError::BadCursor))
            .transpose()?;
        if after.as_ref().is_some_and(|a| a.len() < 8) {
            return Err(StoreError::BadCursor);
        }
        let mut positions = self.positions(filter, after.as_deref(), limit.saturating_add(1))?;
        let more = positions.len() > limit;
        positions.truncate(limit);
        let mut items = Vec::with_capacity(positions.len());
        for position in &positions {
            if let Some(action) = self.action(&index_id(position, 8))? {
                items.push(action);
            }
        }
        Ok(Page {
            items,
            next_cursor: more
                .then(|| positions.last().map(|p| URL_SAFE_NO_PAD.encode(p)))
                .flatten(),
        })
    }

    /// Requeues one `dead` (or `retrying`) action now, with a fresh retry schedule.
    pub async fn retry_action(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let id = id.to_owned();
        let (outcome, _) = self
            .action_write(move |tx| {
                let Some(old) = tx.load(&id)? else {
                    return Ok(RetryOutcome::NotFound);
                };
                if !old.retryable() {
                    return Ok(RetryOutcome::NotRetryable(old));
                }
                let new = old.requeued(crate::domain::now());
                tx.update(&old, &new)?;
                Ok(RetryOutcome::Requeued(new))
            })
            .await?;
        if let RetryOutcome::Requeued(action) = &outcome {
            observe::action(&action.rule, action.action, ActionOutcome::Requeued);
            self.notify_outbox();
        }
        Ok(outcome)
    }

    /// Requeues every action in `state` (and of `rule`, if given), `batch` per transaction, so
    /// that memory stays bounded however many match. Returns how many were requeued.
    pub fn retry_actions(&self, filter: &ActionFilter, batch: usize) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let positions = self.positions(filter, after.as_deref(), batch)?;
            let Some(last) = positions.last() else {
                break;
            };
            after = Some(last.clone());
            let ids: Vec<String> = positions.iter().map(|p| index_id(p, 8)).collect();
            let requeues = filter.clone();
            let batch_ids = ids.clone();
            let (done, _) = self.action_write_blocking(move |tx| {
                let mut done = Vec::new();
                for id in &batch_ids {
                    let Some(old) = tx.load(id)? else { continue };
                    if !requeues.requeues(&old) {
                        continue;
                    }
                    tx.update(&old, &old.requeued(crate::domain::now()))?;
                    done.push((old.rule, old.action));
                }
                Ok(done)
            })?;
            for (rule, action) in &done {
                observe::action(rule, *action, ActionOutcome::Requeued);
            }
            total += done.len() as u64;
            self.notify_outbox();
            if ids.len() < batch {
                break;
            }
        }
        Ok(total)
    }
}

/// The action id at the end of an index key.
fn index_id(k: &[u8], from: usize) -> String {
    String::from_utf8_lossy(k.get(from..).unwrap_or_default()).into_owned()
}
