//! Actions and the shared outbox on Postgres: listing, claiming under a lease, recording how
//! a call went (once per claim), requeueing by hand.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::ingest::Writes;
use super::reads::{decode_position, encode_position};
use super::{ms, retrying, PgStore};
use crate::observe;
use crate::rules::lifecycle::{
    Action, ActionOutcome, ActionState, Attempt, ClaimToken, RetryPolicy,
};
use crate::rules::Target;
use crate::store::outbox::Claim;
use crate::store::record::Record;
use crate::store::{ActionFilter, DueEntry, Page, RetryOutcome, StoreError};

impl PgStore {
    pub async fn action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        if id.contains('\0') {
            return Ok(None);
        }
        let body: Option<Vec<u8>> = sqlx::query_scalar("SELECT body FROM actions WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        Ok(body.map(|b| serde_json::from_slice(&b)).transpose()?)
    }

    /// A message's actions, in the order they were queued.
    pub async fn message_actions(&self, message_id: &str) -> Result<Vec<Action>, StoreError> {
        if message_id.contains('\0') {
            return Ok(Vec::new());
        }
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT body FROM actions WHERE message_id = $1 ORDER BY created_ms, id",
        )
        .bind(message_id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        decode_listed(bodies)
    }

    /// Actions matching the filter, oldest first; the cursor is the sled store's
    /// (`<created ms, u64 BE><id>`, base64).
    pub async fn actions(
        &self,
        filter: &ActionFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Action>, StoreError> {
        let after = cursor.map(decode_position).transpose()?;
        let mut rows = self.positions(filter, after, limit + 1).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more
            .then(|| rows.last().map(|(c, id, _)| encode_position(*c, id)))
            .flatten();
        Ok(Page {
            items: decode_listed(rows.into_iter().map(|r| r.2).collect())?,
            next_cursor,
        })
    }

    /// Up to `limit` matching actions after `after` (creation ms and id), oldest first.
    async fn positions(
        &self,
        filter: &ActionFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
        if filter.rule.as_deref().is_some_and(|r| r.contains('\0')) {
            return Ok(Vec::new());
        }
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, String::new()));
        Ok(sqlx::query_as(
            "SELECT created_ms, id, body FROM actions
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR rule = $2)
               AND (created_ms, id) > ($3, $4)
             ORDER BY created_ms, id
             LIMIT $5",
        )
        .bind(filter.state.map(ActionState::as_str))
        .bind(filter.rule.as_deref())
        .bind(after_ms)
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    pub async fn action_counts(&self) -> Result<Vec<(ActionState, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM actions GROUP BY state")
                .fetch_all(&mut *self.conn().await?)
                .await?;
        let counts: HashMap<String, i64> = rows.into_iter().collect();
        Ok(ActionState::ALL
            .into_iter()
            .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    /// A target's actions claimable by `now_ms` (waiting and due, or held under a lease
    /// that ran out), earliest first.
    pub async fn due_actions(
        &self,
        target: Target,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, due_ms FROM actions WHERE target = $1 AND due_ms <= $2
             ORDER BY due_ms LIMIT $3",
        )
        .bind(target.as_str())
        .bind(now_ms as i64)
        .bind(limit as i64)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, due)| DueEntry {
                key: Vec::new(),
                id,
                due_ms: due.max(0) as u64,
                target,
            })
            .collect())
    }

    pub async fn next_due_ms(&self, target: Target) -> Result<Option<u64>, StoreError> {
        let due: Option<i64> =
            sqlx::query_scalar("SELECT min(due_ms) FROM actions WHERE target = $1")
                .bind(target.as_str())
                .fetch_one(&mut *self.conn().await?)
                .await?;
        Ok(due.map(|d| d.max(0) as u64))
    }

    /// How long the most overdue claimable action has been due, in ms.
    pub async fn oldest_due_ms(&self) -> Result<u64, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT min(due_ms) FROM actions WHERE due_ms IS NOT NULL AND target IS NOT NULL",
        )
        .fetch_one(&mut *self.conn().await?)
        .await?;
        let now = ms(crate::domain::now());
        Ok(due.map_or(0, |d| now.saturating_sub(d).max(0) as u64))
    }

    /// Claims due actions for `lease`: rows another instance is claiming are skipped, not
    /// waited for. An answer (in order) is `None` when that action was taken by another
    /// instance, is no longer due, or was a timer whose awaited status has arrived (then
    /// cancelled). An action whose lease ran out (its instance died calling for it) is
    /// claimed again as a new attempt with the same id, so the same `Idempotency-Key`.
    pub async fn claim_many(
        &self,
        entries: &[DueEntry],
        lease: std::time::Duration,
    ) -> Result<Vec<Option<Action>>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let claims = retrying("claim", || self.claim_tx(entries, lease)).await?;
        Ok(claims.into_iter().map(Claim::into_sendable).collect())
    }

    async fn claim_tx(
        &self,
        entries: &[DueEntry],
        lease: std::time::Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let now = crate::domain::now();
        let lease_until = ms(now) + lease.as_millis() as i64;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut tx = self.begin().await?;
        let mut found = locked(
            &mut tx,
            "SELECT id, body FROM actions WHERE id = ANY($1) AND due_ms <= $2
             ORDER BY id FOR UPDATE SKIP LOCKED",
            &ids,
            Some(ms(now)),
        )
        .await?;
        // The states of messages with timers, to cancel those whose status arrived.
        let timed: Vec<&str> = found
            .values()
            .filter(|a| !a.until.is_empty())
            .map(|a| a.message_id.as_str())
            .collect();
        let mut states = HashMap::new();
        if !timed.is_empty() {
            let rows: Vec<(String, Vec<u8>)> =
                sqlx::query_as("SELECT id, record FROM messages WHERE id = ANY($1)")
                    .bind(&timed)
                    .fetch_all(&mut *tx)
                    .await?;
            for (id, bytes) in rows {
                states.insert(id.clone(), Record::decode(&id, &bytes)?.state);
            }
        }
        // Messages whose recipient is opted out, for the actions that skip them: one query in
        // this transaction rather than two reads per action when it is called.
        let asking: Vec<&str> = found
            .values()
            .filter(|a| a.skip_opted_out)
            .map(|a| a.message_id.as_str())
            .collect();
        let mut opted_out = std::collections::HashSet::new();
        if !asking.is_empty() {
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT l.message_id, r.body FROM lookups l JOIN recipients r ON r.key = l.value
                 WHERE l.field = '' AND l.message_id = ANY($1)",
            )
            .bind(&asking)
            .fetch_all(&mut *tx)
            .await?;
            for (message_id, body) in rows {
                let prefs: crate::domain::Preferences = serde_json::from_slice(&body)?;
                if prefs.opted_out() {
                    opted_out.insert(message_id);
                }
            }
        }
        let mut write = Writes::default();
        let mut claimed = Vec::new();
        let mut claims = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(mut old) = found.remove(entry.id.as_str()) else {
                claims.push(Claim::Gone);
                continue;
            };
            if old.in_flight {
                tracing::warn!(
                    action = %old.id,
                    "an action's lease ran out (the instance calling for it stopped); calling again"
                );
                old = old.recovered(now);
            }
            if !old.state.waiting() {
                claims.push(Claim::Gone);
                continue;
            }
            let state = states.get(&old.message_id).and_then(Option::as_ref);
            if let Some(new) = old.overtaken(state, now) {
                write.count_action(&old, -1);
                write.count_action(&new, 1);
                write.changed_actions.push(new.clone());
                claims.push(Claim::Cancelled(new));
                continue;
            }
            if old.skip_opted_out && opted_out.contains(&old.message_id) {
                let new = old.claimed().after_attempt(
                    &Attempt::Skipped {
                        reason: "opted_out".into(),
                    },
                    &NoRetries,
                    now,
                );
                write.count_action(&old, -1);
                write.count_action(&new, 1);
                write.changed_actions.push(new.clone());
                claims.push(Claim::Skipped(new));
                continue;
            }
            let new = old.claimed();
            claimed.push(new.clone());
            claims.push(Claim::Send(new));
        }
        write.changed_actions.extend(claimed);
        write.lease_until = Some(lease_until);
        write.leased_by = Some(self.inner.instance.clone());
        write.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(claims)
    }

    /// Takes back, at start, the calls this instance held when it stopped (its leases, by
    /// `store.postgres.instance_id`): they are due now instead of when the lease ends. A
    /// peer's leases are left to run out. Returns how many.
    pub async fn recover_in_flight(&self) -> Result<usize, StoreError> {
        if self.inner.instance.is_empty() {
            return Ok(0);
        }
        let now = ms(crate::domain::now());
        let mut tx = self.begin().await?;
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, body FROM actions WHERE leased_by = $1 AND due_ms > $2
             ORDER BY id FOR UPDATE SKIP LOCKED",
        )
        .bind(&self.inner.instance)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut held = Vec::new();
        for (id, body) in rows {
            // Only a call in flight; a retry waiting for its time keeps it.
            if serde_json::from_slice::<Action>(&body).is_ok_and(|a| a.in_flight) {
                held.push(id);
            }
        }
        if !held.is_empty() {
            sqlx::query("UPDATE actions SET due_ms = $1 WHERE id = ANY($2)")
                .bind(now)
                .bind(&held)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(held.len())
    }

    /// Records how claimed actions' attempts went, once per claim, in one transaction;
    /// answers in order (`None` for an action purged meanwhile).
    pub async fn complete_many(
        &self,
        done: &[(ClaimToken, Attempt)],
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Action>>, StoreError> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = retrying("complete", || self.complete_tx(done, policy, now)).await?;
        for (action, _) in recorded.iter().filter(|(_, new)| *new) {
            if let Some(action) = action {
                let outcome = ActionOutcome::of_attempt(action.state);
                observe::action(&action.rule, action.action, outcome);
            }
        }
        Ok(recorded.into_iter().map(|(action, _)| action).collect())
    }

    async fn complete_tx(
        &self,
        done: &[(ClaimToken, Attempt)],
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Result<Vec<(Option<Action>, bool)>, StoreError> {
        let ids: Vec<&str> = done.iter().map(|(c, _)| c.action_id().as_str()).collect();
        let mut tx = self.begin().await?;
        let mut found = locked(
            &mut tx,
            "SELECT id, body FROM actions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &ids,
            None,
        )
        .await?;
        let mut write = Writes::default();
        let mut recorded = Vec::with_capacity(done.len());
        for (claim, attempt) in done {
            let Some(old) = found.get(claim.action_id().as_str()) else {
                recorded.push((None, false));
                continue;
            };
            if !old.awaits(claim) {
                // Recorded before, or the lease ran out and another instance claimed it.
                recorded.push((Some(old.clone()), false));
                continue;
            }
            let new = old.after_attempt(attempt, policy, now);
            if old.state != new.state {
                write.count_action(old, -1);
                write.count_action(&new, 1);
            }
            found.insert(new.id.to_string(), new.clone());
            recorded.push((Some(new), true));
        }
        write.changed_actions = recorded
            .iter()
            .filter(|(_, new)| *new)
            .filter_map(|(a, _)| a.clone())
            .collect();
        write.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Requeues one `dead` (or `retrying`) action now, with a fresh retry schedule.
    pub async fn retry_action(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        if id.contains('\0') {
            return Ok(RetryOutcome::NotFound);
        }
        let outcome = retrying("retry", || async {
            let mut tx = self.begin().await?;
            let found = locked(
                &mut tx,
                "SELECT id, body FROM actions WHERE id = ANY($1) FOR UPDATE",
                &[id],
                None,
            )
            .await?;
            let Some(old) = found.into_values().next() else {
                return Ok(RetryOutcome::NotFound);
            };
            if !old.retryable() {
                return Ok(RetryOutcome::NotRetryable(old));
            }
            let new = old.requeued(crate::domain::now());
            requeue(&mut tx, &[(old, new.clone())]).await?;
            tx.commit().await?;
            Ok(RetryOutcome::Requeued(new))
        })
        .await?;
        if let RetryOutcome::Requeued(action) = &outcome {
            observe::action(&action.rule, action.action, ActionOutcome::Requeued);
            self.notify_outbox();
        }
        Ok(outcome)
    }

    /// Requeues every action matching the filter (its state must be given), `batch` per
    /// transaction; returns how many.
    pub async fn retry_actions(
        &self,
        filter: &ActionFilter,
        batch: usize,
    ) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut after = None;
        loop {
            let rows = self.positions(filter, after.clone(), batch).await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.0, last.1.clone()));
            let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
            let done = retrying("retry", || async {
                let mut tx = self.begin().await?;
                let found = locked(
                    &mut tx,
                    "SELECT id, body FROM actions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    &ids,
                    None,
                )
                .await?;
                let now = crate::domain::now();
                let changes: Vec<(Action, Action)> = found
                    .into_values()
                    .filter(|old| filter.requeues(old))
                    .map(|old| {
                        let new = old.requeued(now);
                        (old, new)
                    })
                    .collect();
                requeue(&mut tx, &changes).await?;
                tx.commit().await?;
                Ok(changes)
            })
            .await?;
            for (_, action) in &done {
                observe::action(&action.rule, action.action, ActionOutcome::Requeued);
            }
            total += done.len() as u64;
            self.notify_outbox();
            if rows.len() < batch {
                break;
            }
        }
        Ok(total)
    }
}

/// Writes requeued actions and moves their counts.
async fn requeue(
    tx: &mut Transaction<'static, Postgres>,
    changes: &[(Action, Action)],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut write = Writes::default();
    for (old, new) in changes {
        write.count_action(old, -1);
        write.count_action(new, 1);
    }
    write.changed_actions = changes.iter().map(|(_, n)| n.clone()).collect();
    write.apply(tx).await
}

/// The actions a locking `SELECT id, body ... WHERE id = ANY($1) [AND due_ms <= $2]` finds.
async fn locked(
    tx: &mut Transaction<'static, Postgres>,
    query: &str,
    ids: &[&str],
    now_ms: Option<i64>,
) -> Result<HashMap<String, Action>, StoreError> {
    let mut q = sqlx::query_as::<_, (String, Vec<u8>)>(query).bind(ids);
    if let Some(now) = now_ms {
        q = q.bind(now);
    }
    q.fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(id, body)| Ok((id, serde_json::from_slice(&body)?)))
        .collect()
}

/// Listed actions; one that cannot be read is left out (counted and logged).
fn decode_listed(bodies: Vec<Vec<u8>>) -> Result<Vec<Action>, StoreError> {
    let mut out = Vec::with_capacity(bodies.len());
    for body in bodies {
        match serde_json::from_slice(&body) {
            Ok(action) => out.push(action),
            Err(error) => crate::store::unreadable("action", "?", &error.into()),
        }
    }
    Ok(out)
}

/// A policy for an outcome that never retries (a skip).
struct NoRetries;

impl RetryPolicy for NoRetries {
    fn delay(&self, _: &str, _: u32, _: Option<chrono::Duration>) -> Option<chrono::Duration> {
        None
    }
}
