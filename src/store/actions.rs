//! Follow-up actions and the durable outbox: how the store persists what
//! [`crate::rules::lifecycle`] decides.
//!
//! An action is created in the same transaction as the event that triggered it. From then on
//! every change of state is one transaction over the action, its index entries, its outbox
//! entry and the aggregates, so the four never disagree:
//!
//! - an action has an outbox entry (`<due ms><id>`) exactly while it is `pending` or
//!   `retrying` and not in flight;
//! - a claimed action is marked in flight and listed in `inflight`, which a start after a crash
//!   puts back in the outbox (so a call cut off by a crash is made again, with the same
//!   `Idempotency-Key`).

use std::ops::Bound;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use chrono::{DateTime, Utc};
use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::query::Page;
use super::record::Record;
use super::{abort, from_json, json_bytes, key, SledStore, StoreError, Ticket, TxResult};
use crate::domain::MessageState;
use crate::observe;
pub use crate::rules::lifecycle::{
    Action, ActionOutcome, ActionState, Attempt, ClaimToken, RetryPolicy,
};
use crate::rules::{reached, Target};

impl Action {
    /// The outbox key while the action waits for an attempt.
    fn outbox_key(&self) -> Option<Vec<u8>> {
        if !self.state.waiting() || self.in_flight {
            return None;
        }
        let due = self.next_attempt_at?.timestamp_millis().max(0) as u64;
        Some(outbox_key(self.target()?, due, &self.id))
    }

    /// The action's index entries: by state, and by rule and state (listing all actions, or a
    /// rule's, merges the states; see [`SledStore::actions`]). A message's actions are listed
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

fn outbox_prefix(target: Target) -> Vec<u8> {
    key(&[target.as_str().as_bytes(), b""])
}

/// The trees an action change touches, inside a transaction.
pub(super) struct ActionTx<'a> {
    pub actions: &'a TransactionalTree,
    pub index: &'a TransactionalTree,
    pub outbox: &'a TransactionalTree,
    pub aggregates: &'a TransactionalTree,
    /// The in-flight marks; only transactions that claim or settle calls need it (ingest,
    /// which never changes `in_flight`, leaves it out).
    pub inflight: Option<&'a TransactionalTree>,
}

impl ActionTx<'_> {
    pub fn load(&self, id: &str) -> TxResult<Option<Action>> {
        self.actions
            .get(id.as_bytes())?
            .map(|bytes| from_json(&bytes))
            .transpose()
    }

    pub fn create(&self, action: &Action) -> TxResult<()> {
        self.actions
            .insert(action.id.as_bytes(), json_bytes(action)?)?;
        for k in action.index_entries() {
            self.index.insert(k, &[])?;
        }
        if let Some(k) = action.outbox_key() {
            self.outbox.insert(k, &[])?;
        }
        self.count(action, 1)
    }

    /// Writes `new` over `old`, moving index entries, outbox entry and counts.
    pub fn update(&self, old: &Action, new: &Action) -> TxResult<()> {
        self.actions.insert(new.id.as_bytes(), json_bytes(new)?)?;
        if old.state != new.state {
            for k in old.index_entries() {
                self.index.remove(k)?;
            }
            for k in new.index_entries() {
                self.index.insert(k, &[])?;
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
                self.outbox.insert(k, &[])?;
            }
        }
        if old.in_flight != new.in_flight {
            let inflight = self
                .inflight
                .expect("in-flight changes need the inflight tree");
            if new.in_flight {
                inflight.insert(new.id.as_bytes(), &[])?;
            } else {
                inflight.remove(new.id.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Removes an action and everything filed for it.
    pub fn delete(&self, action: &Action) -> TxResult<()> {
        self.actions.remove(action.id.as_bytes())?;
        for k in action.index_entries() {
            self.index.remove(k)?;
        }
        if let Some(k) = action.outbox_key() {
            self.outbox.remove(k)?;
        }
        if let Some(inflight) = self.inflight {
            inflight.remove(action.id.as_bytes())?;
        }
        self.count(action, -1)
    }

    /// Actions by state (`action:<state>`): per callback value and day for the stats, and
    /// overall (under the empty field, which no indexed field can be) for the metrics.
    fn count(&self, action: &Action, delta: i64) -> TxResult<()> {
        let metric = format!("action:{}", action.state);
        for (field, value) in &action.facets {
            let k = super::stats::stats_key(field, value, action.bucket, &metric);
            super::stats::add(self.aggregates, k, delta)?;
        }
        super::stats::add(self.aggregates, overall_key(action.state), delta)
    }
}

/// A due outbox entry.
#[derive(Debug, Clone)]
pub struct DueEntry {
    /// The outbox entry: a claim token only the store reads.
    pub(super) key: Vec<u8>,
    pub id: String,
    pub due_ms: u64,
    pub target: Target,
}

/// Filters for listing actions.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub state: Option<ActionState>,
    pub rule: Option<String>,
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
fn overall_key(state: ActionState) -> Vec<u8> {
    key(&[b"", b"", format!("action:{state}").as_bytes()])
}

impl SledStore {
    fn action_tx<R>(
        &self,
        f: impl Fn(&ActionTx<'_>, &TransactionalTree) -> TxResult<R>,
    ) -> Result<R, StoreError> {
        Ok(self.action_tx_ticket(f)?.0)
    }

    fn action_tx_ticket<R>(
        &self,
        f: impl Fn(&ActionTx<'_>, &TransactionalTree) -> TxResult<R>,
    ) -> Result<(R, Ticket), StoreError> {
        let t = &self.inner.trees;
        let result = (
            &t.actions,
            &t.action_idx,
            &t.outbox,
            &t.aggregates,
            &t.inflight,
            &t.messages,
        )
            .transaction(|(actions, index, outbox, aggregates, inflight, messages)| {
                let tx = ActionTx {
                    actions,
                    index,
                    outbox,
                    aggregates,
                    inflight: Some(inflight),
                };
                f(&tx, messages)
            })
            .map_err(abort)?;
        // Callers that need the change on disk wait for the ticket; for the others a lost
        // update is redone after a crash (at-least-once).
        Ok((result, self.inner.flusher.committed()))
    }

    pub fn action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        self.inner
            .trees
            .actions
            .get(id.as_bytes())?
            .map(|b| serde_json::from_slice(&b).map_err(StoreError::from))
            .transpose()
    }

    /// A message's actions, in the order they were queued.
    pub fn message_actions(&self, message_id: &str) -> Result<Vec<Action>, StoreError> {
        let Some(bytes) = self.inner.trees.messages.get(message_id.as_bytes())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in Record::decode(message_id, &bytes)?.actions {
            if let Some(action) = self.action(&id)? {
                out.push(action);
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
            let range = self
                .inner
                .trees
                .action_idx
                .range::<Vec<u8>, _>((start, Bound::Unbounded));
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

    /// A target's outbox entries due by `now_ms`, earliest first, at most `limit`.
    pub fn due_actions(
        &self,
        target: Target,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let prefix = outbox_prefix(target);
        let mut end = prefix.clone();
        end.extend_from_slice(&(now_ms + 1).to_be_bytes());
        let mut out = Vec::new();
        for entry in self
            .inner
            .trees
            .outbox
            .range(prefix.as_slice()..end.as_slice())
            .take(limit)
        {
            let (k, _) = entry?;
            let Some(rest) = k.get(prefix.len()..).filter(|r| r.len() >= 8) else {
                continue;
            };
            out.push(DueEntry {
                id: String::from_utf8_lossy(&rest[8..]).into_owned(),
                due_ms: u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
                key: k.to_vec(),
                target,
            });
        }
        Ok(out)
    }

    /// When a target's earliest waiting action is due (unix ms), if any waits.
    pub fn next_due_ms(&self, target: Target) -> Result<Option<u64>, StoreError> {
        let prefix = outbox_prefix(target);
        Ok(self
            .inner
            .trees
            .outbox
            .scan_prefix(&prefix)
            .next()
            .transpose()?
            .and_then(|(k, _)| {
                let due = k.get(prefix.len()..prefix.len() + 8)?;
                Some(u64::from_be_bytes(due.try_into().ok()?))
            }))
    }

    /// How many actions are in each state.
    pub fn action_counts(&self) -> Result<Vec<(ActionState, i64)>, StoreError> {
        ActionState::ALL
            .into_iter()
            .map(|state| {
                let count = self.inner.trees.aggregates.get(overall_key(state))?;
                Ok((state, super::read_i64(count.as_deref())))
            })
            .collect()
    }

    /// How long the most overdue waiting action has been due, in ms (0 when none is).
    pub fn oldest_due_ms(&self) -> Result<u64, StoreError> {
        let now = clock_ms();
        let mut oldest = 0;
        for target in Target::all() {
            if let Some(due) = self.next_due_ms(target)? {
                oldest = oldest.max(now.saturating_sub(due));
            }
        }
        Ok(oldest)
    }

    /// Takes due actions for sending, in one transaction: each is marked in flight and its
    /// attempt counted. An answer (in order) is `None` when that action is no longer waiting,
    /// or when it was a timer whose awaited status has arrived (it is then cancelled).
    pub fn claim_many(&self, entries: &[DueEntry]) -> Result<Vec<Option<Action>>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let claimed = self.action_tx(|tx, messages| {
            entries
                .iter()
                .map(|entry| claim_one(tx, messages, entry))
                .collect::<TxResult<Vec<_>>>()
        })?;
        // Counted once the transaction is in (its closure may run more than once).
        Ok(claimed
            .into_iter()
            .map(|claim| match claim {
                Claim::Send(action) => Some(action),
                Claim::Cancelled(action) => {
                    observe::action(&action.rule, action.action, ActionOutcome::Cancelled);
                    None
                }
                Claim::Gone => None,
            })
            .collect())
    }

    /// Records how a claimed action's attempt went, and returns once that is on disk (so a
    /// crash can repeat only calls still in flight).
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

    /// [`Store::complete`] for several attempts in one transaction and one flush, answers in
    /// order.
    pub async fn complete_many(
        &self,
        done: &[(ClaimToken, Attempt)],
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Action>>, StoreError> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let (recorded, ticket) = self.action_tx_ticket(|tx, _| {
            done.iter()
                .map(|(claim, attempt)| record_attempt(tx, claim, attempt, policy, now))
                .collect::<TxResult<Vec<_>>>()
        })?;
        self.wait_durable(ticket).await?;
        // Counted once: an outcome recorded before (a second try after a failed flush) is not.
        for action in recorded
            .iter()
            .filter_map(|(action, new)| action.as_ref().filter(|_| *new))
        {
            let outcome = ActionOutcome::of_attempt(action.state);
            observe::action(&action.rule, action.action, outcome);
        }
        Ok(recorded.into_iter().map(|(action, _)| action).collect())
    }

    /// Puts every action a crash left in flight back in the outbox, due now.
    pub fn recover_in_flight(&self) -> Result<usize, StoreError> {
        let ids: Vec<String> = self
            .inner
            .trees
            .inflight
            .iter()
            .keys()
            .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect::<Result<_, _>>()?;
        let now = crate::domain::now();
        for id in &ids {
            self.action_tx(|tx, _| {
                match tx.load(id)? {
                    Some(old) if old.in_flight => tx.update(&old, &old.recovered(now))?,
                    // A mark without an in-flight action is left over; drop it.
                    _ => {
                        if let Some(inflight) = tx.inflight {
                            inflight.remove(id.as_bytes())?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(ids.len())
    }

    /// Requeues one `dead` (or `retrying`) action now, with a fresh retry schedule.
    pub fn retry_action(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let outcome = self.action_tx(|tx, _| {
            let Some(old) = tx.load(id)? else {
                return Ok(RetryOutcome::NotFound);
            };
            if !old.retryable() {
                return Ok(RetryOutcome::NotRetryable(old));
            }
            let new = old.requeued(crate::domain::now());
            tx.update(&old, &new)?;
            Ok(RetryOutcome::Requeued(new))
        })?;
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
            let done = self.action_tx(|tx, _| {
                let mut done = Vec::new();
                for id in &ids {
                    let Some(old) = tx.load(id)? else { continue };
                    if old.in_flight || Some(old.state) != filter.state {
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

    /// Wakes when something was added to the outbox.
    pub async fn outbox_changed(&self) {
        self.inner.outbox_changed.notified().await
    }

    /// Wakes a dispatcher waiting in [`Store::outbox_changed`].
    pub fn notify_outbox(&self) {
        self.inner.outbox_changed.notify_one();
    }
}

/// The action id at the end of an index key.
fn index_id(k: &[u8], from: usize) -> String {
    String::from_utf8_lossy(k.get(from..).unwrap_or_default()).into_owned()
}

/// What one claim transaction decided.
/// Claims one entry inside a transaction (see [`Store::claim_many`]).
fn claim_one(tx: &ActionTx<'_>, messages: &TransactionalTree, entry: &DueEntry) -> TxResult<Claim> {
    let Some(old) = tx.load(&entry.id)? else {
        tx.outbox.remove(entry.key.as_slice())?;
        return Ok(Claim::Gone);
    };
    if old.outbox_key().as_deref() != Some(entry.key.as_slice()) {
        // A stale entry: the action moved on since the scan (its own key, if it has
        // one, is another).
        tx.outbox.remove(entry.key.as_slice())?;
        return Ok(Claim::Gone);
    }
    if !old.until.is_empty() {
        let state: Option<MessageState> = match messages.get(old.message_id.as_bytes())? {
            Some(b) => {
                Record::decode(&old.message_id, &b)
                    .map_err(sled::transaction::ConflictableTransactionError::Abort)?
                    .state
            }
            None => None,
        };
        if let Some(status) = state
            .as_ref()
            .and_then(|s| old.until.iter().find(|u| reached(s, u).is_some()))
        {
            let reason = format!("cancelled: message reached {status}");
            let new = old.cancelled(crate::domain::now(), reason);
            tx.update(&old, &new)?;
            return Ok(Claim::Cancelled(new));
        }
    }
    let new = old.claimed();
    tx.update(&old, &new)?;
    Ok(Claim::Send(new))
}

/// Records one attempt inside a transaction (see [`Store::complete`]): the action after it,
/// and whether this call recorded it (false when the claim's outcome already was).
fn record_attempt(
    tx: &ActionTx<'_>,
    claim: &ClaimToken,
    attempt: &Attempt,
    policy: &(dyn RetryPolicy + Sync),
    now: DateTime<Utc>,
) -> TxResult<(Option<Action>, bool)> {
    let id = claim.action_id();
    let Some(old) = tx.load(id)? else {
        // Purged while in flight: only its mark is left.
        if let Some(inflight) = tx.inflight {
            inflight.remove(id.as_bytes())?;
        }
        return Ok((None, false));
    };
    if !old.awaits(claim) {
        return Ok((Some(old), false));
    }
    let new = old.after_attempt(attempt, policy, now);
    tx.update(&old, &new)?;
    Ok((Some(new), true))
}

enum Claim {
    Send(Action),
    Cancelled(Action),
    Gone,
}

/// What a single retry request found.
#[derive(Debug)]
pub enum RetryOutcome {
    Requeued(Action),
    NotRetryable(Action),
    NotFound,
}

/// `now` in unix ms, the outbox's clock.
pub fn clock_ms() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreSettings;
    use crate::domain::Event;
    use crate::store::IngestItem;

    struct Steps;

    impl RetryPolicy for Steps {
        fn delay(
            &self,
            _: &str,
            failures: u32,
            _: Option<chrono::Duration>,
        ) -> Option<chrono::Duration> {
            (failures < 3).then(|| chrono::Duration::seconds(60 * i64::from(failures)))
        }
    }

    async fn store_with_one_due_action() -> SledStore {
        let rules = crate::rules::tests::rules_for(
            r#"
[[rules]]
name = "on-read"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "http://127.0.0.1:9/hook", body = { id = "{{message_id}}" } }
"#,
        );
        let store = crate::store::temporary_with(&StoreSettings::default(), rules);
        let read = Event::test_status("wamid.ONCE==", "read", 1);
        store
            .ingest(
                crate::domain::Provider::Bik,
                vec![IngestItem::Event(Box::new(read))],
                crate::domain::now(),
            )
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn an_outcome_is_recorded_once_per_claim() {
        let store = store_with_one_due_action().await;
        let due = store
            .due_actions(Target::parse("http").unwrap(), clock_ms(), 10)
            .unwrap();
        let claimed = store.claim_many(&due).unwrap().pop().flatten().unwrap();
        let claim = claimed.claim_token();
        let busy = Attempt::Retry {
            error: "busy".into(),
            status: Some(503),
            body: None,
            retry_after: None,
        };
        let first = store
            .complete(&claim, &busy, &Steps, crate::domain::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.state, ActionState::Retrying);
        // The same outcome again (as after a flush that failed although the write stayed):
        // nothing moves, not the schedule, not the counts.
        let again = store
            .complete(&claim, &busy, &Steps, crate::domain::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, first);
        let delivered = Attempt::Delivered { status: 200 };
        let late = store
            .complete(&claim, &delivered, &Steps, crate::domain::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            late.state,
            ActionState::Retrying,
            "an old claim's outcome is stale"
        );
        let counts: std::collections::HashMap<_, _> =
            store.action_counts().unwrap().into_iter().collect();
        assert_eq!(counts.get(&ActionState::Retrying), Some(&1));
        assert_eq!(counts.get(&ActionState::Delivered).copied().unwrap_or(0), 0);
    }
}
