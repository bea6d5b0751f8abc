//! The webhook write path on Postgres: a request's events folded into their messages, with
//! the indexes, counts and actions they change, in one transaction per part.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Postgres, Transaction};

use super::batch::{Part, Written};
use super::{ms, retrying, PgStore};
use crate::domain::{Event, Incoming, IngestItem, MessageId, MessageState, Preferences, Provider};
use crate::rules::lifecycle::Action;
use crate::rules::plan::Planned;
use crate::store::filing::Derived;
use crate::store::ingest::{count_unplaced, counted, overflow_key, Choices, Report, Sorted};
use crate::store::record::{self, Record};
use crate::store::{key, IngestOutcome, StoreError};

/// Events per transaction, as on sled: a big request holds row locks for one part at a time,
/// and its answer stays all or nothing (a retry finds the parts written as duplicates).
const EVENTS_PER_COMMIT: usize = 64;

impl PgStore {
    /// The stored business message a customer message answers: the one its `context` names,
    /// else the sender's latest first seen at most `store.reply_window_hours` before it (as
    /// the embedded store decides, see its `attribute`).
    async fn attribute(
        &self,
        incoming: &Incoming,
        this_request: &[Event],
    ) -> Result<Option<MessageId>, StoreError> {
        if let Some(named) = &incoming.context {
            if this_request.iter().any(|e| e.message_id == *named)
                || self.message(named.as_str()).await?.is_some()
            {
                return Ok(Some(named.clone()));
            }
        }
        let who = incoming.sender_key();
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT m.id, m.record FROM lookups l JOIN messages m ON m.id = l.message_id \
             WHERE l.field = '' AND l.value = $1 AND m.live",
        )
        .bind(&who)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let stored: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        // A message this request creates is first seen now (as the embedded store sees it).
        let mut candidates: Vec<(DateTime<Utc>, MessageId)> = this_request
            .iter()
            .filter(|e| !stored.contains(e.message_id.as_str()))
            .filter(|e| {
                Incoming::sent_to(&who, e.recipient.as_deref(), e.recipient_e164.as_deref())
            })
            .map(|e| (e.received_at, e.message_id.clone()))
            .collect();
        for (id, bytes) in &rows {
            if let Some(state) = super::reads::decode(id, bytes)? {
                candidates.push((state.first_seen_at, state.message_id));
            }
        }
        Ok(incoming.latest_answered(self.inner.reply_window_hours, candidates))
    }

    /// Stores every item of one request and returns once all of it is committed.
    pub async fn ingest(
        &self,
        provider: Provider,
        items: Vec<IngestItem>,
        received_at: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let Sorted {
            mut events,
            replies,
            opt_outs,
            rejected,
            ignored,
        } = Sorted::of(items, &self.inner.opt_out_keywords);
        let mut outcome = IngestOutcome {
            ignored,
            rejected: rejected.len() as u32,
            ..Default::default()
        };
        // Each reply lands on the message it answers, found before the write (a message
        // first stored by this very request counts when it is named by its context).
        for incoming in &replies {
            match self.attribute(incoming, &events).await? {
                Some(to) => events.push(incoming.event_on(to)),
                None => outcome.ignored += 1,
            }
        }
        // Each opt-out lands on the message its provider names, else as a reply from its
        // recipient would; its choice is written with the first part.
        let mut attributed = Vec::with_capacity(opt_outs.len());
        for item in &opt_outs {
            let to = match (&item.message, item.as_incoming()) {
                (Some(named), _) => Some(named.clone()),
                (None, Some(incoming)) => self.attribute(&incoming, &events).await?,
                (None, None) => None,
            };
            attributed.push(to);
        }
        let placed: Vec<bool> = attributed.iter().map(Option::is_some).collect();
        for (item, to) in opt_outs.iter().zip(&attributed) {
            events.extend(to.clone().map(|to| item.event_on(to)));
        }
        if !rejected.is_empty() {
            retrying("quarantine", || {
                self.quarantine(provider, &rejected, received_at)
            })
            .await?;
        }
        let mut report = Report::default();
        let mut chunks: Vec<Vec<Event>> = Vec::new();
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(EVENTS_PER_COMMIT).collect());
        }
        if chunks.is_empty() && !opt_outs.is_empty() {
            chunks.push(Vec::new());
        }
        // The opt-outs' choices go with the first part; they are needed again after it.
        let mut direct = Some((opt_outs.clone(), attributed));
        for (n, events) in chunks.into_iter().enumerate() {
            let (direct, attributed) = direct.take().unwrap_or_default();
            let part = Part {
                events,
                direct,
                attributed,
                received_at,
            };
            let written = self.commit(part).await?;
            outcome.accepted += written.accepted;
            outcome.duplicates += written.duplicates;
            report.extend(written.report);
            if n == 0 {
                count_unplaced(
                    &opt_outs,
                    &placed,
                    &written.new_choices,
                    &mut outcome,
                    &mut report,
                );
            }
        }
        if report.publish() {
            self.notify_outbox();
        }
        Ok(outcome)
    }

    /// Quarantines rejected items once each: a provider retrying a batch must not fill the
    /// quarantine with copies (their fingerprints are unique keys in `dedupe`).
    async fn quarantine(
        &self,
        provider: Provider,
        rejected: &[(String, String)],
        received_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = rejected
            .iter()
            .map(|(_, raw)| {
                let digest = Sha256::digest(raw.as_bytes());
                key(&[b"r", provider.as_str().as_bytes(), &digest])
            })
            .collect();
        // Postgres text holds no NUL; a reason quoting one gets U+FFFD instead.
        let reasons: Vec<String> = rejected
            .iter()
            .map(|(r, _)| r.replace('\0', "\u{fffd}"))
            .collect();
        let raws: Vec<&[u8]> = rejected.iter().map(|(_, raw)| raw.as_bytes()).collect();
        sqlx::query(
            "WITH fresh AS (
                 INSERT INTO dedupe (key, seen_s)
                 SELECT DISTINCT k, $2::int8 FROM UNNEST($1::bytea[]) AS k
                 ON CONFLICT DO NOTHING
                 RETURNING key
             )
             INSERT INTO rejected (provider, received_ms, reason, raw)
             SELECT DISTINCT ON (r.k) $3, $4, r.reason, r.raw
             FROM UNNEST($1::bytea[], $5::text[], $6::bytea[]) AS r(k, reason, raw)
             JOIN fresh ON fresh.key = r.k",
        )
        .bind(&keys)
        .bind(received_at.timestamp().max(0))
        .bind(provider.as_str())
        .bind(ms(received_at))
        .bind(&reasons)
        .bind(&raws)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Parts of requests (each one request's, or a part of a big one) in one transaction:
    /// the group commit (see [`super::batch`]). Message rows are locked in id order across the
    /// whole batch, then actions, then recipients, each in key order, so two batches (of one
    /// instance or two) never wait on each other in a cycle. Each part gets its own counts,
    /// which of its opt-out items' choices were new, and what to report once committed.
    pub(super) async fn write_batch(&self, parts: &[&Part]) -> Result<Vec<Written>, StoreError> {
        let mut tx = self.begin().await?;
        let mut ids: Vec<&str> = parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.message_id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, record FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut changes: BTreeMap<MessageId, Change> = BTreeMap::new();
        for (id, bytes) in rows {
            let stored = Record::decode(&id, &bytes)?;
            let before = stored
                .state
                .as_ref()
                .and_then(|s| Derived::of(Some(s), &self.inner.fields));
            let id = MessageId::parse(&id).map_err(StoreError::Corrupt)?;
            changes.insert(
                id,
                Change {
                    before,
                    after: stored,
                    existed: true,
                    changed: false,
                },
            );
        }
        let mut write = Writes::default();
        let mut written: Vec<Written> = Vec::with_capacity(parts.len());
        let mut choices = Choices::default();
        // Each part's opt-out items are numbered from its offset among the batch's.
        let mut offsets = Vec::with_capacity(parts.len());
        let mut offset = 0;
        for part in parts {
            let mut out = Written::default();
            for event in &part.events {
                let new = self.fold(&mut tx, &mut changes, &mut write, event).await?;
                if new {
                    out.report.accepted(event);
                    // What the forwards ask of it, with its message's state after it.
                    if let Some(change) = changes.get_mut(&event.message_id) {
                        if let Some(state) = &change.after.state {
                            let now = part.received_at;
                            for delivery in self.inner.rules.forwarded(state, event, now) {
                                out.report.queued(&delivery);
                                change.after.actions.push(delivery.id.to_string());
                                write.new_actions.push(delivery);
                            }
                        }
                    }
                }
                if !counted(event) {
                } else if new {
                    out.accepted += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            for (n, (item, to)) in part.direct.iter().zip(&part.attributed).enumerate() {
                choices.item(offset + n, item, to.as_ref());
            }
            offsets.push(offset);
            offset += part.direct.len();
            written.push(out);
        }
        let now = parts
            .iter()
            .map(|p| p.received_at)
            .max()
            .unwrap_or_else(crate::domain::now);
        // What the rules plan is reported with the first part (only the metrics read it).
        let report = &mut written[0].report;
        let actions = self.existing_actions(&mut tx, &changes).await?;
        for (id, change) in &mut changes {
            let (true, Some(after)) = (change.changed, &change.after.state) else {
                continue;
            };
            let new = Derived::of(Some(after), &self.inner.fields);
            write.refile(id, change.before.as_ref(), new.as_ref());
            let facets = new.map(|d| d.stats).unwrap_or_default();
            let planned = self.inner.rules.plan(after, &facets, now, |id| {
                Ok::<_, StoreError>(actions.get(id).cloned())
            })?;
            for planned in planned {
                match &planned {
                    Planned::Create(action) => {
                        write.count_action(action, 1);
                        write.new_actions.push(action.as_ref().clone());
                        change.after.actions.push(action.id.to_string());
                    }
                    Planned::Cancel { old, new } => {
                        write.count_action(old, -1);
                        write.count_action(new, 1);
                        write.changed_actions.push(new.as_ref().clone());
                    }
                }
                report.planned(&planned);
            }
            choices.message(after);
            let row = MessageRow {
                id: id.as_str().to_owned(),
                record: change.after.encode()?,
                updated_ms: ms(after.updated_at),
            };
            if change.existed {
                write.updated.push(row);
            } else {
                write.inserted.push(row);
            }
        }
        let new_choices = self.write_choices(&mut tx, choices).await?;
        write.apply(&mut tx).await?;
        tx.commit().await?;
        for ((out, offset), part) in written.iter_mut().zip(offsets).zip(parts) {
            out.new_choices = new_choices
                .iter()
                .filter(|n| (offset..offset + part.direct.len()).contains(*n))
                .map(|n| n - offset)
                .collect();
        }
        Ok(written)
    }

    /// Adds a part's choices to its recipients' preferences, rows locked in key order (so two
    /// instances cannot deadlock); which opt-out items' choices were new.
    async fn write_choices(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        choices: Choices,
    ) -> Result<HashSet<usize>, StoreError> {
        let keys = choices.keys();
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key, body FROM recipients WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .bind(&keys)
        .fetch_all(&mut **tx)
        .await?;
        let stored: HashMap<String, Vec<u8>> = rows.into_iter().collect();
        let (changed, new_choices) = choices.apply(|key| {
            stored
                .get(key)
                .map(|body| serde_json::from_slice::<Preferences>(body).map_err(StoreError::from))
                .transpose()
        })?;
        if !changed.is_empty() {
            let keys: Vec<&str> = changed.iter().map(|p| p.recipient.as_str()).collect();
            let bodies: Vec<Vec<u8>> = changed
                .iter()
                .map(serde_json::to_vec)
                .collect::<Result<_, _>>()?;
            // A concurrent first insert of the same key fails the transaction, which then
            // runs again and finds the row.
            sqlx::query(
                "INSERT INTO recipients (key, body) SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body",
            )
            .bind(&keys)
            .bind(&bodies)
            .execute(&mut **tx)
            .await?;
        }
        Ok(new_choices)
    }

    /// Folds one event into its message; false when it is a duplicate (see the sled
    /// store's `Batch::apply`: same natural key or provider event id in the record, or among
    /// the fingerprints of events summarized past the message's cap).
    async fn fold(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        changes: &mut BTreeMap<MessageId, Change>,
        write: &mut Writes,
        event: &Event,
    ) -> Result<bool, StoreError> {
        let change = changes
            .entry(event.message_id.clone())
            .or_insert_with(|| Change {
                before: None,
                after: Record::default(),
                existed: false,
                changed: false,
            });
        let summarized = change
            .after
            .state
            .as_ref()
            .is_some_and(|s| s.summary.is_some());
        let mut seen = change.after.has_seen(event);
        if !seen && summarized {
            let keys: Vec<Vec<u8>> = record::fingerprints(event)
                .into_iter()
                .flatten()
                .map(overflow_key)
                .collect();
            seen = keys.iter().any(|k| write.overflow.contains_key(k))
                || sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM dedupe WHERE key = ANY($1))",
                )
                .bind(&keys)
                .fetch_one(&mut **tx)
                .await?;
        }
        if seen {
            return Ok(false);
        }
        let received = event.received_at.timestamp().max(0);
        let (after, _, evicted) = MessageState::apply_bounded(
            change.after.state.take(),
            event.clone(),
            self.inner.max_events,
        );
        if let Some(e) = evicted {
            for fp in record::timeline_fingerprints(&event.message_id, &e)
                .into_iter()
                .flatten()
            {
                write.overflow.insert(overflow_key(fp), received);
            }
        }
        change.after.state = Some(after);
        change.changed = true;
        Ok(true)
    }

    /// The stored actions of the changed messages, locked: the rules look up what each
    /// already has (a rule fires once per message), and a timer may be cancelled.
    async fn existing_actions(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        changes: &BTreeMap<MessageId, Change>,
    ) -> Result<HashMap<String, Action>, StoreError> {
        if self.inner.rules.is_empty() {
            return Ok(HashMap::new());
        }
        // A rule's action ids, not the forwards' deliveries listed beside them.
        let ids: Vec<&str> = changes
            .iter()
            .filter(|(_, c)| c.changed)
            .flat_map(|(id, c)| {
                let ours = self.inner.rules.action_ids(id.as_str());
                c.after
                    .actions
                    .iter()
                    .filter(move |a| ours.iter().any(|o| o.as_str() == a.as_str()))
                    .map(String::as_str)
            })
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, body FROM actions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        rows.into_iter()
            .map(|(id, body)| Ok((id, serde_json::from_slice(&body)?)))
            .collect()
    }
}

/// One message's change within a part.
struct Change {
    /// What the stored message contributed to the indexes and counts.
    before: Option<Derived>,
    after: Record,
    /// Whether it has a row (updated) or is new (inserted; a concurrent insert of the same
    /// id fails the transaction, which then runs again and finds it).
    existed: bool,
    changed: bool,
}

pub(super) struct MessageRow {
    pub id: String,
    pub record: Vec<u8>,
    pub updated_ms: i64,
}

/// A transaction's writes, gathered so that each table gets one statement.
#[derive(Default)]
pub(super) struct Writes {
    pub inserted: Vec<MessageRow>,
    pub updated: Vec<MessageRow>,
    /// (field, value, message id); recipients under the field `""`.
    pub unfiled: HashSet<(String, String, String)>,
    pub filed: HashSet<(String, String, String)>,
    /// Net count changes by (field, value, day, metric).
    pub counts: HashMap<(String, String, u32, String), i64>,
    pub new_actions: Vec<Action>,
    pub changed_actions: Vec<Action>,
    /// Fingerprints of events summarized past their message's cap, with when first seen.
    pub overflow: HashMap<Vec<u8>, i64>,
    /// The end of the lease of the changed actions that are now in flight (claimed).
    pub lease_until: Option<i64>,
    /// The instance whose lease the changed actions are under (a claim).
    pub leased_by: Option<String>,
}

impl Writes {
    /// Moves a message's lookups and counts from `old` to `new` (as the sled store's
    /// `Filing::refile`).
    pub fn refile(&mut self, id: &MessageId, old: Option<&Derived>, new: Option<&Derived>) {
        if old == new {
            return;
        }
        let entries = |d: &Derived| -> HashSet<(String, String, String)> {
            let id = id.as_str().to_owned();
            d.recipients
                .iter()
                .map(|r| (String::new(), r.clone(), id.clone()))
                .chain(
                    d.callback
                        .iter()
                        .map(|(f, v)| (f.clone(), v.clone(), id.clone())),
                )
                .collect()
        };
        let (old_entries, new_entries) = (
            old.map(entries).unwrap_or_default(),
            new.map(entries).unwrap_or_default(),
        );
        self.unfiled
            .extend(old_entries.difference(&new_entries).cloned());
        self.filed
            .extend(new_entries.difference(&old_entries).cloned());
        for (d, delta) in [(old, -1), (new, 1)] {
            for (field, value, day, metric) in d.map(Derived::counters).unwrap_or_default() {
                self.count(field, value, day, metric, delta);
            }
        }
    }

    /// Counts an action in (`delta = 1`) or out of (`-1`) its state, per counted value.
    pub fn count_action(&mut self, action: &Action, delta: i64) {
        for (field, value, day, metric) in action.counters() {
            self.count(field, value, day, metric, delta);
        }
    }

    fn count(&mut self, field: &str, value: &str, day: u32, metric: String, delta: i64) {
        let key = (field.to_owned(), value.to_owned(), day, metric);
        *self.counts.entry(key).or_default() += delta;
    }

    /// Writes everything gathered in one statement (one round trip): a data-modifying `WITH`
    /// part per kind of change that has rows, each fed by `UNNEST` arrays. The parts touch
    /// different rows, so that they share one snapshot changes nothing. Leaving out the empty
    /// parts matters: each costs an executor node even with no rows (see bench/results.md).
    pub async fn apply(self, tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        let mut st = Statement::default();
        for (rows, name, sql) in [
            (
                &self.inserted,
                "new_messages",
                "INSERT INTO messages (id, record, updated_ms, live)
                 SELECT id, record, updated_ms, true
                 FROM UNNEST($1::text[], $2::bytea[], $3::int8[]) AS m(id, record, updated_ms)",
            ),
            (
                &self.updated,
                "old_messages",
                "UPDATE messages SET record = m.record, updated_ms = m.updated_ms, live = true
                 FROM UNNEST($1::text[], $2::bytea[], $3::int8[]) AS m(id, record, updated_ms)
                 WHERE messages.id = m.id",
            ),
        ] {
            if !rows.is_empty() {
                st.part(name, sql);
                st.arg(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())?;
                st.arg(rows.iter().map(|r| r.record.as_slice()).collect::<Vec<_>>())?;
                st.arg(rows.iter().map(|r| r.updated_ms).collect::<Vec<_>>())?;
            }
        }
        for (set, name, sql) in [
            (
                &self.unfiled,
                "unfiled",
                "DELETE FROM lookups
                 USING UNNEST($1::text[], $2::text[], $3::text[]) AS d(field, value, message_id)
                 WHERE lookups.field = d.field AND lookups.value = d.value
                   AND lookups.message_id = d.message_id",
            ),
            (
                &self.filed,
                "filed",
                "INSERT INTO lookups (field, value, message_id)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
                 ON CONFLICT DO NOTHING",
            ),
        ] {
            if !set.is_empty() {
                let (fields, values, ids) = columns(set);
                st.part(name, sql);
                st.arg(fields)?;
                st.arg(values)?;
                st.arg(ids)?;
            }
        }
        let mut counts: Vec<_> = self.counts.iter().filter(|(_, n)| **n != 0).collect();
        counts.sort();
        if !counts.is_empty() {
            st.part(
                "counted",
                "INSERT INTO counts (field, value, day, metric, n)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::bytea[], $5::int8[])",
            );
            st.arg(counts.iter().map(|c| c.0 .0.as_str()).collect::<Vec<_>>())?;
            st.arg(counts.iter().map(|c| c.0 .1.as_str()).collect::<Vec<_>>())?;
            st.arg(counts.iter().map(|c| c.0 .2 as i32).collect::<Vec<_>>())?;
            st.arg(counts.iter().map(|c| c.0 .3.as_bytes()).collect::<Vec<_>>())?;
            st.arg(counts.iter().map(|c| *c.1).collect::<Vec<_>>())?;
        }
        if !self.new_actions.is_empty() {
            let a = ActionColumns::of(&self.new_actions, self.lease_until)?;
            st.part(
                "new_actions",
                "INSERT INTO actions (id, message_id, rule, state, target, due_ms, created_ms, body)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::int8[], $7::int8[], $8::bytea[])",
            );
            st.arg(a.ids)?;
            st.arg(a.message_ids)?;
            st.arg(a.rules)?;
            st.arg(a.states)?;
            st.arg(a.targets)?;
            st.arg(a.due)?;
            st.arg(a.created)?;
            st.arg(a.bodies)?;
        }
        if !self.changed_actions.is_empty() {
            let a = ActionColumns::of(&self.changed_actions, self.lease_until)?;
            let sql = match self.leased_by {
                None => {
                    "UPDATE actions SET state = u.state, due_ms = u.due_ms, body = u.body
                     FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bytea[])
                         AS u(id, state, due_ms, body)
                     WHERE actions.id = u.id"
                }
                Some(_) => {
                    "UPDATE actions SET state = u.state, due_ms = u.due_ms, body = u.body,
                         leased_by = $5::text
                     FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bytea[])
                         AS u(id, state, due_ms, body)
                     WHERE actions.id = u.id"
                }
            };
            st.part("old_actions", sql);
            st.arg(a.ids)?;
            st.arg(a.states)?;
            st.arg(a.due)?;
            st.arg(a.bodies)?;
            if let Some(instance) = self.leased_by {
                st.arg(instance)?;
            }
        }
        if !self.overflow.is_empty() {
            let mut overflow: Vec<_> = self.overflow.iter().collect();
            overflow.sort();
            st.part(
                "overflow",
                "INSERT INTO dedupe (key, seen_s) SELECT * FROM UNNEST($1::bytea[], $2::int8[])
                 ON CONFLICT DO NOTHING",
            );
            st.arg(
                overflow
                    .iter()
                    .map(|(k, _)| k.as_slice())
                    .collect::<Vec<_>>(),
            )?;
            st.arg(overflow.iter().map(|(_, s)| **s).collect::<Vec<_>>())?;
        }
        st.execute(tx).await
    }
}

/// One write statement built from parts: `WITH <name> AS (<part>), ... SELECT 1`. A part's SQL
/// numbers its own parameters from `$1`; they are renumbered after the earlier parts'. Each
/// distinct combination of parts is one statement text, prepared once per connection.
#[derive(Default)]
struct Statement {
    parts: Vec<String>,
    args: PgArguments,
    params: usize,
}

impl Statement {
    fn part(&mut self, name: &str, sql: &str) {
        let count = sql.matches('$').count();
        let mut body = sql.to_owned();
        // Highest first, so that `$1` does not match the start of `$10`.
        for i in (1..=count).rev() {
            body = body.replace(&format!("${i}:"), &format!("#{}:", self.params + i));
        }
        self.params += count;
        self.parts
            .push(format!("{name} AS ({})", body.replace('#', "$")));
    }

    fn arg<'q, T>(&mut self, value: T) -> Result<(), StoreError>
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        self.args.add(value).map_err(StoreError::Backend)
    }

    async fn execute(self, tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let sql = format!("WITH {} SELECT 1", self.parts.join(",\n"));
        sqlx::query_with(&sql, self.args).execute(&mut **tx).await?;
        Ok(())
    }
}

/// Actions as the columns of their rows.
struct ActionColumns {
    ids: Vec<String>,
    message_ids: Vec<String>,
    rules: Vec<String>,
    states: Vec<&'static str>,
    targets: Vec<Option<&'static str>>,
    due: Vec<Option<i64>>,
    created: Vec<i64>,
    bodies: Vec<Vec<u8>>,
}

impl ActionColumns {
    fn of(actions: &[Action], lease_until: Option<i64>) -> Result<Self, StoreError> {
        Ok(Self {
            ids: actions.iter().map(|a| a.id.to_string()).collect(),
            message_ids: actions.iter().map(|a| a.message_id.clone()).collect(),
            rules: actions.iter().map(|a| a.rule.to_string()).collect(),
            states: actions.iter().map(|a| a.state.as_str()).collect(),
            targets: actions
                .iter()
                .map(|a| a.target().map(|t| t.as_str()))
                .collect(),
            due: actions.iter().map(|a| due_ms(a, lease_until)).collect(),
            created: actions.iter().map(|a| ms(a.created_at)).collect(),
            bodies: actions
                .iter()
                .map(serde_json::to_vec)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A set of lookups as three sorted columns (field, value, message id).
fn columns(set: &HashSet<(String, String, String)>) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let mut rows: Vec<_> = set.iter().collect();
    rows.sort();
    (
        rows.iter().map(|r| r.0.as_str()).collect(),
        rows.iter().map(|r| r.1.as_str()).collect(),
        rows.iter().map(|r| r.2.as_str()).collect(),
    )
}

/// When an action may next be claimed: its next attempt while it waits, the end of its lease
/// while it is in flight (`lease_until`, else at once: a call a backup caught in flight is
/// simply due again), nothing once it is done.
fn due_ms(action: &Action, lease_until: Option<i64>) -> Option<i64> {
    if action.in_flight && action.target().is_some() {
        return Some(lease_until.unwrap_or_else(|| ms(crate::domain::now())));
    }
    action.waits_for().map(|(_, due)| due)
}
