//! Retention, checking and backup on Postgres.

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::ingest::{MessageRow, Writes};
use super::reads::{rejected_event, RejectedRow};
use super::{ms, PgStore, RETENTION_LOCK};
use crate::domain::{MessageId, MessageState, Preferences};
use crate::rules::lifecycle::Action;
use crate::store::backup::{lines, Line};
use crate::store::filing::Derived;
use crate::store::record::Record;
use crate::store::{BackupError, Checked, Moved, Purged, StoreError};

/// Rows removed (or read, for a check or an export) per statement.
const BATCH: i64 = 500;

impl PgStore {
    /// Purges what is older than the cutoffs, like the sled store's purge, unless another
    /// instance is purging now (it holds the advisory lock; this one then does nothing).
    pub async fn purge(
        &self,
        messages_before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        let mut lock = self.conn().await?;
        // Never back into the pool: a session lock must not outlive this purge.
        lock.close_on_drop();
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RETENTION_LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !ours {
            return Ok(Purged::default());
        }
        let started = std::time::Instant::now();
        let mut purged = Purged::default();
        let result = self
            .purge_locked(messages_before, dedupe_before, &mut purged)
            .await;
        metrics::histogram!(crate::observe::DB_SECONDS, "op" => "purge")
            .record(started.elapsed().as_secs_f64());
        result.map(|()| purged)
    }

    async fn purge_locked(
        &self,
        before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
        purged: &mut Purged,
    ) -> Result<(), StoreError> {
        let window = ms(dedupe_before);
        let mut after = (i64::MIN, String::new());
        loop {
            let mut tx = self.begin().await?;
            // A message being written now is skipped: its write moves it out of range anyway.
            let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT id, record, updated_ms FROM messages
                 WHERE updated_ms < $1 AND (updated_ms, id) > ($2, $3)
                 ORDER BY updated_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED",
            )
            .bind(ms(before))
            .bind(after.0)
            .bind(&after.1)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else { break };
            after = (last.2, last.0.clone());
            let full = rows.len() as i64 == BATCH;
            let mut write = Writes::default();
            let (mut gone, mut tombstones, mut actions) = (Vec::new(), Vec::new(), Vec::new());
            for (id, bytes, updated_ms) in rows {
                let record = match Record::decode(&id, &bytes) {
                    Ok(record) => record,
                    Err(error) => {
                        crate::store::unreadable("message", &id, &error);
                        continue;
                    }
                };
                let in_window = updated_ms >= window;
                let Some(state) = &record.state else {
                    // A tombstone: gone once its events can no longer be retried.
                    if !in_window {
                        gone.push(id);
                        purged.dedupe_keys += 1;
                    }
                    continue;
                };
                if in_window {
                    tombstones.push(MessageRow {
                        id: id.clone(),
                        record: record.tombstone().encode()?,
                        updated_ms,
                    });
                } else {
                    gone.push(id.clone());
                }
                let message_id = MessageId::parse(&id).map_err(StoreError::Corrupt)?;
                write.refile(
                    &message_id,
                    Derived::of(Some(state), &self.inner.fields).as_ref(),
                    None,
                );
                purged.messages += 1;
                actions.extend(record.actions);
            }
            let deleted: Vec<Vec<u8>> =
                sqlx::query_scalar("DELETE FROM actions WHERE id = ANY($1) RETURNING body")
                    .bind(&actions)
                    .fetch_all(&mut *tx)
                    .await?;
            for body in deleted {
                if let Ok(action) = serde_json::from_slice::<Action>(&body) {
                    write.count_action(&action, -1);
                }
                purged.actions += 1;
            }
            sqlx::query("DELETE FROM messages WHERE id = ANY($1)")
                .bind(&gone)
                .execute(&mut *tx)
                .await?;
            if !tombstones.is_empty() {
                sqlx::query(
                    "UPDATE messages SET record = t.record, live = false
                     FROM UNNEST($1::text[], $2::bytea[]) AS t(id, record)
                     WHERE messages.id = t.id",
                )
                .bind(tombstones.iter().map(|t| t.id.as_str()).collect::<Vec<_>>())
                .bind(
                    tombstones
                        .iter()
                        .map(|t| t.record.as_slice())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await?;
            }
            write.apply(&mut tx).await?;
            tx.commit().await?;
            if !full {
                break;
            }
        }
        for (table, column, cutoff, counter) in [
            ("rejected", "received_ms", ms(before), &mut purged.rejected),
            (
                "dedupe",
                "seen_s",
                dedupe_before.timestamp(),
                &mut purged.dedupe_keys,
            ),
        ] {
            let key = if table == "rejected" { "id" } else { "key" };
            loop {
                let n = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE {key} IN
                       (SELECT {key} FROM {table} WHERE {column} < $1 LIMIT $2)"
                ))
                .bind(cutoff)
                .bind(BATCH)
                .execute(&mut *self.conn().await?)
                .await?
                .rows_affected();
                *counter += n;
                if (n as i64) < BATCH {
                    break;
                }
            }
        }
        self.compact_counts().await
    }

    /// Folds the counters' deltas into one row per key (dropping the ones that sum to 0).
    /// Rows that writers append meanwhile are not seen by the delete, so none is lost.
    async fn compact_counts(&self) -> Result<(), StoreError> {
        sqlx::query(
            "WITH gone AS (DELETE FROM counts RETURNING field, value, day, metric, n)
             INSERT INTO counts (field, value, day, metric, n)
             SELECT field, value, day, metric, sum(n)::int8 FROM gone
             GROUP BY field, value, day, metric HAVING sum(n) <> 0",
        )
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Reads every stored record and reports the ones that cannot be read.
    pub async fn check(&self) -> Result<Checked, StoreError> {
        let mut checked = Checked::default();
        checked.messages = self
            .check_rows(
                "SELECT id, record FROM messages WHERE id > $1 ORDER BY id LIMIT $2",
                "message",
                |id, bytes| Record::decode(id, bytes).err().map(|e| e.to_string()),
                &mut checked.unreadable,
            )
            .await?;
        checked.actions = self
            .check_rows(
                "SELECT id, body FROM actions WHERE id > $1 ORDER BY id LIMIT $2",
                "action",
                |_, body| {
                    serde_json::from_slice::<Action>(body)
                        .err()
                        .map(|e| e.to_string())
                },
                &mut checked.unreadable,
            )
            .await?;
        checked.recipients = self
            .check_rows(
                "SELECT key, body FROM recipients WHERE key > $1 ORDER BY key LIMIT $2",
                "recipient",
                |_, body| {
                    serde_json::from_slice::<Preferences>(body)
                        .err()
                        .map(|e| e.to_string())
                },
                &mut checked.unreadable,
            )
            .await?;
        let mut after = i64::MIN;
        loop {
            let rows = self.rejected_after(after).await?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            for row in rows {
                checked.rejected += 1;
                let id = row.0;
                if rejected_event(row).is_none() {
                    checked.unreadable.push((
                        "rejected",
                        id.to_string(),
                        "its provider, time or text cannot be read".into(),
                    ));
                }
            }
        }
        Ok(checked)
    }

    /// Reads every (id, bytes) row of `query` (see [`PgStore::after_id`]) and adds those
    /// `unreadable_why` finds fault with to `unreadable`, as `kind`; how many it read.
    async fn check_rows(
        &self,
        query: &str,
        kind: &'static str,
        unreadable_why: impl Fn(&str, &[u8]) -> Option<String>,
        unreadable: &mut Vec<(&'static str, String, String)>,
    ) -> Result<u64, StoreError> {
        let (mut read, mut after) = (0, String::new());
        loop {
            let rows = self.after_id(query, &after).await?;
            let Some((last, _)) = rows.last() else {
                return Ok(read);
            };
            after = last.clone();
            for (id, bytes) in rows {
                read += 1;
                if let Some(why) = unreadable_why(&id, &bytes) {
                    unreadable.push((kind, id, why));
                }
            }
        }
    }

    /// One page of (id, bytes) rows of `query`, which takes the id to start after and
    /// [`BATCH`].
    async fn after_id(
        &self,
        query: &str,
        after: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(query)
            .bind(after)
            .bind(BATCH)
            .fetch_all(&mut *self.conn().await?)
            .await?)
    }

    async fn rejected_after(&self, after: i64) -> Result<Vec<RejectedRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, provider, received_ms, reason, raw FROM rejected
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// Writes every message (state, timeline, actions) and quarantined event as JSON lines,
    /// in the sled store's format: either backend imports what the other exports.
    pub async fn export(&self, out: &mut (dyn Write + Send)) -> Result<Moved, BackupError> {
        let mut moved = Moved::default();
        let mut after = String::new();
        loop {
            let rows = self
                .after_id(
                    "SELECT id, record FROM messages WHERE live AND id > $1 ORDER BY id LIMIT $2",
                    &after,
                )
                .await?;
            let Some((last, _)) = rows.last() else { break };
            after = last.clone();
            let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let actions: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT message_id, id, body FROM actions WHERE message_id = ANY($1)
                 ORDER BY message_id, created_ms, id",
            )
            .bind(&ids)
            .fetch_all(&mut *self.conn().await?)
            .await
            .map_err(StoreError::from)?;
            let mut by_message: std::collections::HashMap<String, Vec<Action>> =
                std::collections::HashMap::new();
            for (message_id, id, body) in actions {
                match serde_json::from_slice(&body) {
                    Ok(action) => by_message.entry(message_id).or_default().push(action),
                    Err(error) => {
                        crate::store::unreadable("action", &id, &StoreError::from(error));
                        moved.skipped += 1;
                    }
                }
            }
            for (id, bytes) in rows {
                let message = match Record::decode(&id, &bytes) {
                    Ok(Record {
                        state: Some(state), ..
                    }) => state,
                    Ok(_) => continue,
                    Err(error) => {
                        crate::store::unreadable("message", &id, &error);
                        moved.skipped += 1;
                        continue;
                    }
                };
                let line = Line::Message {
                    message: Box::new(message),
                    actions: by_message.remove(&id).unwrap_or_default(),
                };
                moved.write(out, &line)?;
            }
        }
        let mut after = i64::MIN;
        loop {
            let rows = self.rejected_after(after).await?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            for row in rows {
                let Some(rejected) = rejected_event(row) else {
                    moved.skipped += 1;
                    continue;
                };
                moved.write(out, &Line::Rejected { rejected })?;
            }
        }
        let mut after = String::new();
        loop {
            let rows = self
                .after_id(
                    "SELECT key, body FROM recipients WHERE key > $1 ORDER BY key LIMIT $2",
                    &after,
                )
                .await?;
            let Some((last, _)) = rows.last() else { break };
            after = last.clone();
            for (key, body) in rows {
                match serde_json::from_slice::<Preferences>(&body) {
                    Ok(recipient) => moved.write(out, &Line::Recipient { recipient })?,
                    Err(error) => {
                        crate::store::unreadable("recipient", &key, &error.into());
                        moved.skipped += 1;
                    }
                }
            }
        }
        out.flush()?;
        Ok(moved)
    }

    /// Restores an export (from either backend) into this database, which must hold no
    /// messages, actions or quarantined events.
    pub async fn import(&self, input: &mut (dyn BufRead + Send)) -> Result<Moved, BackupError> {
        let used: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM messages) OR EXISTS (SELECT 1 FROM actions)
                 OR EXISTS (SELECT 1 FROM rejected) OR EXISTS (SELECT 1 FROM recipients)",
        )
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(StoreError::from)?;
        if used {
            return Err(BackupError::NotEmpty);
        }
        let mut moved = Moved::default();
        let mut batch = Vec::new();
        for line in lines(input) {
            let line = line?;
            moved.count(&line);
            batch.push(line);
            if batch.len() as i64 == BATCH {
                self.restore(std::mem::take(&mut batch)).await?;
            }
        }
        self.restore(batch).await?;
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('rejected', 'id'),
                           (SELECT coalesce(max(id), 0) + 1 FROM rejected), false)",
        )
        .execute(&mut *self.conn().await?)
        .await
        .map_err(StoreError::from)?;
        Ok(moved)
    }

    /// Files imported lines as ingest would have, in one transaction.
    async fn restore(&self, lines: Vec<Line>) -> Result<(), StoreError> {
        let mut tx: Transaction<'static, Postgres> = self.begin().await?;
        let mut write = Writes::default();
        let mut rejected: Vec<crate::store::RejectedEvent> = Vec::new();
        let mut recipients: Vec<(String, Vec<u8>)> = Vec::new();
        for line in lines {
            match line {
                Line::Message { message, actions } => {
                    let message: &MessageState = &message;
                    let ids: Vec<String> = actions.iter().map(|a| a.id.to_string()).collect();
                    write.inserted.push(MessageRow {
                        id: message.message_id.as_str().to_owned(),
                        record: Record::encode_parts(Some(message), &[], &ids)?,
                        updated_ms: ms(message.updated_at),
                    });
                    let filed = Derived::of(Some(message), &self.inner.fields);
                    write.refile(&message.message_id, None, filed.as_ref());
                    for mut action in actions {
                        // A call in flight when the export was taken is simply due again.
                        action.in_flight = false;
                        write.count_action(&action, 1);
                        write.new_actions.push(action);
                    }
                }
                Line::Rejected { rejected: r } => rejected.push(r),
                Line::Recipient { recipient } => {
                    let body = serde_json::to_vec(&recipient)?;
                    recipients.push((recipient.recipient, body));
                }
            }
        }
        write.apply(&mut tx).await?;
        if !recipients.is_empty() {
            let (keys, bodies): (Vec<String>, Vec<Vec<u8>>) = recipients.into_iter().unzip();
            sqlx::query(
                "INSERT INTO recipients (key, body) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
            )
            .bind(&keys)
            .bind(&bodies)
            .execute(&mut *tx)
            .await?;
        }
        if !rejected.is_empty() {
            sqlx::query(
                "INSERT INTO rejected (id, provider, received_ms, reason, raw)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::bytea[])",
            )
            .bind(rejected.iter().map(|r| r.id as i64).collect::<Vec<_>>())
            .bind(
                rejected
                    .iter()
                    .map(|r| r.provider.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rejected
                    .iter()
                    .map(|r| ms(r.received_at))
                    .collect::<Vec<_>>(),
            )
            .bind(
                rejected
                    .iter()
                    .map(|r| r.reason.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rejected
                    .iter()
                    .map(|r| r.raw.as_bytes())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
