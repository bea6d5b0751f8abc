//! The outbox side of actions: what is due, claiming it for a call, recording how the call
//! went (once per claim), and putting calls a crash cut off back. See [`super::actions`] for
//! the invariants between an action, its index entries and its outbox entry.

use chrono::{DateTime, Utc};

use super::actions::{outbox_prefix, overall_key, ActionTx};
use super::engine::{all, Space};
use super::{from_json, EmbeddedStore};
use crate::domain::MessageState;
use crate::observe;
use crate::rules::lifecycle::{
    Action, ActionOutcome, ActionState, Attempt, ClaimToken, RetryPolicy,
};
use crate::rules::Target;
use crate::store::outbox::{clock_ms, Claim, DueEntry};
use crate::store::record::Record;
use crate::store::StoreError;

impl EmbeddedStore {
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
        for k in self.inner.waiting.range(&prefix, &end, limit) {
            let Some(rest) = k.get(prefix.len()..).filter(|r| r.len() >= 8) else {
                continue;
            };
            out.push(DueEntry {
                id: String::from_utf8_lossy(&rest[8..]).into_owned(),
                due_ms: u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
                key: k.clone(),
                target,
            });
        }
        Ok(out)
    }

    /// When a target's earliest waiting action is due (unix ms), if any waits.
    pub fn next_due_ms(&self, target: Target) -> Result<Option<u64>, StoreError> {
        let prefix = outbox_prefix(target);
        let first = self.inner.waiting.first(&prefix);
        Ok(first.and_then(|k| {
            let due = k.get(prefix.len()..prefix.len() + 8)?;
            Some(u64::from_be_bytes(due.try_into().ok()?))
        }))
    }

    /// How many actions are in each state.
    pub fn action_counts(&self) -> Result<Vec<(ActionState, i64)>, StoreError> {
        ActionState::ALL
            .into_iter()
            .map(|state| {
                let count = self.engine().get(Space::Aggregates, &overall_key(state))?;
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
    pub async fn claim_many(
        &self,
        entries: &[DueEntry],
    ) -> Result<Vec<Option<Action>>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // A forward's delivery queued directly is claimed in memory: it leaves the waiting
        // keys (so no pass takes it again) but stays in the outbox on disk until its outcome
        // is recorded, so a crash sends it again. Nothing to write.
        let mut answers: Vec<Option<Option<Action>>> = Vec::with_capacity(entries.len());
        let mut rest = Vec::new();
        for entry in entries {
            match self.direct_delivery(entry)? {
                Some(delivery) => {
                    self.inner.waiting.apply(vec![(entry.key.clone(), false)]);
                    answers.push(Some(Some(delivery)));
                }
                None => {
                    answers.push(None);
                    rest.push(entry.clone());
                }
            }
        }
        let claimed = if rest.is_empty() {
            Vec::new()
        } else {
            self.action_write(move |tx| {
                rest.iter()
                    .map(|entry| claim_one(tx, entry))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
            .0
        };
        // Counted once the write is in.
        let mut claimed = claimed.into_iter().map(Claim::into_sendable);
        Ok(answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| claimed.next().flatten()))
            .collect())
    }

    /// The delivery an outbox entry holds, claimed, when it is a forward's delivery queued
    /// directly (an action's entry holds nothing).
    fn direct_delivery(&self, entry: &DueEntry) -> Result<Option<Action>, StoreError> {
        if entry.target.forward_name().is_none() {
            return Ok(None);
        }
        match self.engine().get(Space::Outbox, &entry.key)? {
            Some(value) if !value.is_empty() => {
                let mut delivery = from_json::<Action>(&value)?.claimed();
                delivery.direct = Some(entry.key.clone());
                Ok(Some(delivery))
            }
            _ => Ok(None),
        }
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
        let delays = Delays::of(done, policy);
        let direct: Vec<Vec<u8>> = done
            .iter()
            .filter_map(|(claim, _)| claim.direct().map(<[u8]>::to_vec))
            .collect();
        let done = done.to_vec();
        let written = self
            .action_write(move |tx| {
                done.iter()
                    .map(|(claim, attempt)| record_attempt(tx, claim, attempt, &delays, now))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await;
        let durable = match written {
            Ok((recorded, ticket)) => self.wait_durable(ticket).await.map(|_| recorded),
            Err(error) => Err(error),
        };
        let recorded = match durable {
            Ok(recorded) => recorded,
            Err(error) => {
                // Not recorded: deliveries claimed directly wait again, to be sent again.
                self.inner
                    .waiting
                    .apply(direct.into_iter().map(|k| (k, true)).collect());
                return Err(error);
            }
        };
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
    /// Runs on the blocking pool (or a thread of its own).
    pub fn recover_in_flight(&self) -> Result<usize, StoreError> {
        let ids: Vec<String> = all(self.engine(), Space::Inflight)
            .map(|e| e.map(|(k, _)| String::from_utf8_lossy(&k).into_owned()))
            .collect::<Result<_, _>>()?;
        let count = ids.len();
        let now = crate::domain::now();
        for part in ids.chunks(500) {
            let part = part.to_vec();
            self.action_write_blocking(move |tx| {
                for id in &part {
                    match tx.load(id)? {
                        Some(old) if old.in_flight => tx.update(&old, &old.recovered(now))?,
                        // A mark without an in-flight action is left over; drop it.
                        _ => tx.inflight.remove(id.as_bytes())?,
                    }
                }
                Ok(())
            })?;
        }
        Ok(count)
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

/// Claims one entry inside a transaction (see [`Store::claim_many`]).
fn claim_one(tx: &ActionTx<'_, '_>, entry: &DueEntry) -> Result<Claim, StoreError> {
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
        let state: Option<MessageState> = match tx.messages.get(old.message_id.as_bytes())? {
            Some(b) => Record::decode(&old.message_id, &b)?.state,
            None => None,
        };
        if let Some(new) = old.overtaken(state.as_ref(), crate::domain::now()) {
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
    tx: &ActionTx<'_, '_>,
    claim: &ClaimToken,
    attempt: &Attempt,
    policy: &Delays,
    now: DateTime<Utc>,
) -> Result<(Option<Action>, bool), StoreError> {
    let id = claim.action_id();
    if let Some(key) = claim.direct() {
        return record_direct(tx, key, attempt, policy, now);
    }
    let Some(old) = tx.load(id)? else {
        // Purged while in flight: only its mark is left.
        tx.inflight.remove(id.as_bytes())?;
        return Ok((None, false));
    };
    if !old.awaits(claim) {
        return Ok((Some(old), false));
    }
    let new = old.after_attempt(attempt, policy, now);
    tx.update(&old, &new)?;
    Ok((Some(new), true))
}

/// Records an attempt of a forward's delivery claimed directly: delivered, its outbox entry
/// goes; else it becomes an action (retrying or dead, filed like any other and listed on its
/// message) and its entry goes. An entry already gone was recorded before.
fn record_direct(
    tx: &ActionTx<'_, '_>,
    key: &[u8],
    attempt: &Attempt,
    policy: &Delays,
    now: DateTime<Utc>,
) -> Result<(Option<Action>, bool), StoreError> {
    let Some(value) = tx.outbox.get(key)? else {
        return Ok((None, false));
    };
    tx.outbox.remove(key)?;
    let claimed = from_json::<Action>(&value)?.claimed();
    let new = claimed.after_attempt(attempt, policy, now);
    if new.state != ActionState::Delivered {
        tx.create(&new)?;
        if let Some(bytes) = tx.messages.get(new.message_id.as_bytes())? {
            let mut record = Record::decode(&new.message_id, &bytes)?;
            record.actions.push(new.id.to_string());
            tx.messages
                .insert(new.message_id.as_bytes(), record.encode()?)?;
        }
    }
    Ok((Some(new), true))
}

/// A retry policy's answers for the actions being recorded, taken before the write goes to
/// the writer thread (which cannot borrow the caller's policy): for each action, the delay
/// after its 1st, 2nd, ... failure, until the schedule ends (a schedule that answers `None`
/// for a failure count does for every larger one).
struct Delays {
    by_action: std::collections::HashMap<String, Vec<chrono::Duration>>,
}

/// More failures than any schedule has steps.
const MAX_STEPS: u32 = 10_000;

impl Delays {
    fn of(done: &[(ClaimToken, Attempt)], policy: &(dyn RetryPolicy + Sync)) -> Self {
        let by_action = done
            .iter()
            .map(|(claim, attempt)| {
                let id = claim.action_id();
                // Only a call worth another try asks the schedule.
                let steps = match attempt {
                    Attempt::Retry { retry_after, .. } => (1..=MAX_STEPS)
                        .map_while(|failures| policy.delay(id, failures, *retry_after))
                        .collect(),
                    _ => Vec::new(),
                };
                (id.to_string(), steps)
            })
            .collect();
        Self { by_action }
    }
}

impl RetryPolicy for Delays {
    fn delay(
        &self,
        action_id: &str,
        failures: u32,
        _at_least: Option<chrono::Duration>,
    ) -> Option<chrono::Duration> {
        let steps = self.by_action.get(action_id)?;
        steps.get(failures.checked_sub(1)? as usize).copied()
    }
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

    async fn store_with_one_due_action() -> EmbeddedStore {
        let rules = crate::rules::tests::on_read();
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

    /// Records one attempt, as `Store::complete` does.
    async fn complete(store: &EmbeddedStore, claim: &ClaimToken, attempt: &Attempt) -> Action {
        let done = [(claim.clone(), attempt.clone())];
        let now = crate::domain::now();
        let recorded = store.complete_many(&done, &Steps, now).await.unwrap();
        recorded.into_iter().next().flatten().unwrap()
    }

    #[tokio::test]
    async fn an_outcome_is_recorded_once_per_claim() {
        let store = store_with_one_due_action().await;
        let due = store
            .due_actions(Target::parse("http").unwrap(), clock_ms(), 10)
            .unwrap();
        let claimed = store
            .claim_many(&due)
            .await
            .unwrap()
            .pop()
            .flatten()
            .unwrap();
        let claim = claimed.claim_token();
        let busy = Attempt::Retry {
            error: "busy".into(),
            status: Some(503),
            body: None,
            retry_after: None,
        };
        let first = complete(&store, &claim, &busy).await;
        assert_eq!(first.state, ActionState::Retrying);
        // The same outcome again (as after a flush that failed although the write stayed):
        // nothing moves, not the schedule, not the counts.
        let again = complete(&store, &claim, &busy).await;
        assert_eq!(again, first);
        let delivered = Attempt::Delivered { status: 200 };
        let late = complete(&store, &claim, &delivered).await;
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
