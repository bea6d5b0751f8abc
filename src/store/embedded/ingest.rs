//! The embedded write path for webhooks: a request's events, folded into their messages'
//! records with the actions the rules ask for, as one writer job (see [`super::writer`]).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::actions::ActionTx;
use super::engine::Space;
use super::filing::Filing;
use super::tx::{Tx, TxTree};
use super::{json_bytes as json, Context, EmbeddedStore};
use crate::domain::{
    Event, Incoming, IngestItem, MessageId, MessageState, OptOutItem, Preferences, Provider,
};
use crate::rules::plan::Planned;
use crate::rules::Rules;
use crate::store::filing::Derived;
use crate::store::ingest::{
    count_unplaced, counted, overflow_key, Choices, IngestOutcome, Report, Sorted,
};
use crate::store::query::RejectedEvent;
use crate::store::record::{self, Record};
use crate::store::{key, StoreError};

/// Events of one request written per transaction. A bigger request is written in parts, with
/// other requests' commits between them, so that a 1 MB batch (about 1,900 events) holds up a
/// small request for one part's commit, not the whole batch's (measured: worst 19-31 ms instead
/// of 253 ms). Its answer stays all or nothing: `200` only once every part is durable; if a
/// part fails, the request fails, and the provider's retry finds the parts already written as
/// duplicates (the state is a function of the set of events, so a partial write changes
/// nothing that the retry would not).
const EVENTS_PER_COMMIT: usize = 64;

impl EmbeddedStore {
    /// Stores every item of one request and returns once all of it is durable. The request
    /// shares its transactions and flush with whatever else is being written (see
    /// [`super::writer`]), but its outcome is its own.
    pub async fn ingest(
        &self,
        provider: Provider,
        items: Vec<IngestItem>,
        received_at: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let pending = self.prepare(provider, items, received_at);
        if pending.len() == 0 {
            return Ok(IngestOutcome {
                ignored: pending.ignored,
                ..Default::default()
            });
        }
        let mut outcome = IngestOutcome::default();
        let mut reports = Vec::new();
        let mut last = None;
        for part in pending.split(EVENTS_PER_COMMIT) {
            let context = Arc::clone(&self.inner.context);
            let ((part_outcome, report), ticket) = self
                .inner
                .writer
                .write(part.len(), move |tx| write_request(tx, &context, &part))
                .await?;
            outcome.accepted += part_outcome.accepted;
            outcome.duplicates += part_outcome.duplicates;
            outcome.ignored += part_outcome.ignored;
            outcome.rejected += part_outcome.rejected;
            reports.push(report);
            last = Some(ticket);
        }
        if let Some(ticket) = last {
            self.wait_durable(ticket).await?;
        }
        let mut queued = false;
        for report in &reports {
            queued |= report.publish();
        }
        if queued {
            self.notify_outbox();
        }
        Ok(outcome)
    }

    /// Sorts a request's items; quarantined ones get their ids here, outside any transaction.
    pub(super) fn prepare(
        &self,
        provider: Provider,
        items: Vec<IngestItem>,
        received_at: DateTime<Utc>,
    ) -> Pending {
        let sorted = Sorted::of(items, &self.inner.context.opt_out_keywords);
        let rejected = sorted
            .rejected
            .into_iter()
            .map(|(reason, raw)| RejectedEvent {
                id: self.rejected_id(),
                provider,
                received_at,
                reason,
                raw,
            })
            .collect();
        Pending {
            provider,
            events: sorted.events,
            replies: sorted.replies,
            opt_outs: sorted.opt_outs,
            rejected,
            ignored: sorted.ignored,
            received_at,
        }
    }
}

/// One request's items, ready for the writer.
pub(super) struct Pending {
    provider: Provider,
    events: Vec<Event>,
    /// Customer messages, attributed in the writer (see [`attribute`]); the first part carries
    /// them.
    replies: Vec<Incoming>,
    /// Opt-outs and resumes, attributed in the writer; the first part carries them.
    opt_outs: Vec<OptOutItem>,
    rejected: Vec<RejectedEvent>,
    ignored: u32,
    received_at: DateTime<Utc>,
}

impl Pending {
    /// What there is to write.
    pub(super) fn len(&self) -> usize {
        self.events.len() + self.replies.len() + self.opt_outs.len() + self.rejected.len()
    }

    /// The request in parts of at most `events` events, in order; the first part carries
    /// the quarantined and ignored items.
    fn split(mut self, events: usize) -> Vec<Pending> {
        if self.events.len() <= events {
            return vec![self];
        }
        let rest = self.events.split_off(events);
        let mut parts = vec![self];
        let template = &parts[0];
        let (provider, received_at) = (template.provider, template.received_at);
        let mut rest = rest.into_iter().peekable();
        while rest.peek().is_some() {
            parts.push(Pending {
                provider,
                events: rest.by_ref().take(events).collect(),
                replies: Vec::new(),
                opt_outs: Vec::new(),
                rejected: Vec::new(),
                ignored: 0,
                received_at,
            });
        }
        parts
    }
}

/// Writes one request (or one part of a big one): its events folded into their messages,
/// the indexes and counts moved, the actions the rules ask for queued, its quarantined items
/// kept (once per raw body).
fn write_request(
    tx: &Tx<'_>,
    context: &Context,
    p: &Pending,
) -> Result<(IngestOutcome, Report), StoreError> {
    let fields = &context.fields;
    let rules = &*context.rules;
    let mut outcome = IngestOutcome {
        ignored: p.ignored,
        rejected: p.rejected.len() as u32,
        ..Default::default()
    };
    let mut report = Report::default();
    let mut batch = Batch::default();
    // What the forwards ask of each accepted event, with its message's state after it.
    let mut deliveries = Vec::new();
    let forwarding = !rules.forwards().is_empty();
    let mut forward = |batch: &Batch, event: &Event| {
        if let Some(state) = batch.state(&event.message_id).filter(|_| forwarding) {
            deliveries.extend(rules.forwarded(state, event, p.received_at));
        }
    };
    let (messages, dedupe) = (tx.tree(Space::Messages), tx.tree(Space::Dedupe));
    for event in &p.events {
        if batch.apply((messages, dedupe), event.clone(), context)? {
            outcome.accepted += 1;
            report.accepted(event);
            forward(&batch, event);
        } else {
            outcome.duplicates += 1;
        }
    }
    let recipients = tx.tree(Space::IdxRecipient);
    for incoming in &p.replies {
        let Some(to) = attribute(incoming, &batch, (messages, recipients), context)? else {
            outcome.ignored += 1;
            continue;
        };
        let event = incoming.event_on(to);
        if batch.apply((messages, dedupe), event.clone(), context)? {
            outcome.accepted += 1;
            report.accepted(&event);
            forward(&batch, &event);
        } else {
            outcome.duplicates += 1;
        }
    }
    let mut choices = Choices::default();
    let mut placed = Vec::with_capacity(p.opt_outs.len());
    for (n, item) in p.opt_outs.iter().enumerate() {
        let to = match (&item.message, item.as_incoming()) {
            (Some(named), _) => Some(named.clone()),
            (None, Some(incoming)) => {
                attribute(&incoming, &batch, (messages, recipients), context)?
            }
            (None, None) => None,
        };
        if let Some(to) = &to {
            let event = item.event_on(to.clone());
            let new = batch.apply((messages, dedupe), event.clone(), context)?;
            if new {
                report.accepted(&event);
                forward(&batch, &event);
            }
            if counted(&event) {
                *if new {
                    &mut outcome.accepted
                } else {
                    &mut outcome.duplicates
                } += 1;
            }
        }
        choices.item(n, item, to.as_ref());
        placed.push(to.is_some());
    }
    let filing = Filing::of(tx);
    let action_tx = ActionTx::of(tx);
    // A forward's delivery is one outbox entry holding the whole delivery (no action record,
    // index entry or count until an attempt fails; see `outbox::record_attempt`).
    for delivery in deliveries {
        if let Some(key) = delivery.outbox_key() {
            action_tx.outbox.insert(key, json(&delivery)?)?;
            report.queued(&delivery);
        }
    }
    let idx_time = tx.tree(Space::IdxTime);
    for (id, change) in &mut batch.states {
        let (true, Some(after)) = (change.changed, &change.after.state) else {
            continue;
        };
        let old_time = change.before.as_ref().map(|(k, _)| k);
        let new_time = super::time_key(after);
        if old_time != Some(&new_time) {
            if let Some(k) = old_time {
                idx_time.remove(k.as_slice())?;
            }
            idx_time.insert(new_time, [])?;
        }
        let old = change.before.as_ref().map(|(_, d)| d);
        let new = Derived::of(Some(after), fields);
        filing.refile(id, old, new.as_ref())?;
        let facets = new.map(|d| d.stats).unwrap_or_default();
        let created = queue_actions(&action_tx, rules, after, facets, p.received_at, &mut report)?;
        change.after.actions.extend(created);
        messages.insert(id.as_str().as_bytes(), change.after.encode()?)?;
        choices.message(after);
    }
    let stored = tx.tree(Space::Recipients);
    let (changed, new_choices) = choices.apply(|key| {
        stored
            .get(key.as_bytes())?
            .map(|bytes| super::from_json::<Preferences>(&bytes))
            .transpose()
    })?;
    for prefs in changed {
        stored.insert(prefs.recipient.as_bytes(), json(&prefs)?)?;
    }
    count_unplaced(
        &p.opt_outs,
        &placed,
        &new_choices,
        &mut outcome,
        &mut report,
    );
    for r in &p.rejected {
        // A provider retrying a batch must not fill the quarantine with copies.
        let digest = Sha256::digest(r.raw.as_bytes());
        let fingerprint = key(&[b"r", p.provider.as_str().as_bytes(), &digest]);
        if dedupe.get(&fingerprint)?.is_none() {
            dedupe.insert(fingerprint, p.received_at.timestamp().max(0).to_be_bytes())?;
            tx.insert(Space::Rejected, r.id.to_be_bytes(), json(r)?);
        }
    }
    Ok((outcome, report))
}

/// The stored business message a customer message answers (contract section 8.1): the one
/// its `context` names, else the latest message of the same recipient (any phone form) first
/// seen at most `store.reply_window_hours` before it and not after flowhook received it;
/// `None` when there is neither. Messages this request already touched count as stored.
fn attribute(
    incoming: &Incoming,
    batch: &Batch,
    (messages, recipients): (TxTree<'_, '_>, TxTree<'_, '_>),
    context: &Context,
) -> Result<Option<MessageId>, StoreError> {
    let first_seen = |id: &MessageId| -> Result<Option<DateTime<Utc>>, StoreError> {
        if let Some(change) = batch.states.get(id) {
            return Ok(change.after.state.as_ref().map(|s| s.first_seen_at));
        }
        Ok(match messages.get(id.as_str().as_bytes())? {
            Some(bytes) => Record::decode(id.as_str(), &bytes)?
                .state
                .map(|s| s.first_seen_at),
            None => None,
        })
    };
    if let Some(named) = &incoming.context {
        if first_seen(named)?.is_some() {
            return Ok(Some(named.clone()));
        }
    }
    let who = incoming.sender_key();
    let prefix = key(&[who.as_bytes(), b""]);
    let mut candidates: Vec<MessageId> = Vec::new();
    for k in recipients.keys_with_prefix(&prefix)? {
        let Ok(id) = std::str::from_utf8(&k[prefix.len()..]) else {
            continue;
        };
        candidates.extend(MessageId::parse(id).ok());
    }
    // Messages this request created are not in the index yet.
    candidates.extend(batch.states.iter().filter_map(|(id, c)| {
        let s = c.after.state.as_ref()?;
        Incoming::sent_to(&who, s.recipient.as_deref(), s.recipient_e164.as_deref())
            .then(|| id.clone())
    }));
    let mut seen = Vec::with_capacity(candidates.len());
    for id in candidates {
        if let Some(at) = first_seen(&id)? {
            seen.push((at, id));
        }
    }
    Ok(incoming.latest_answered(context.reply_window_hours, seen))
}

/// Queues what the rules ask for a message that just changed (see [`Rules::plan`]): each
/// (message, rule) at most once, in the same transaction as the events. Each outcome is added
/// to `report`; returns the ids of the actions created, for the message's record.
fn queue_actions(
    tx: &ActionTx<'_, '_>,
    rules: &Rules,
    state: &MessageState,
    facets: Vec<(String, String)>,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<Vec<String>, StoreError> {
    let mut created = Vec::new();
    for planned in rules.plan(state, &facets, now, |id| tx.load(id))? {
        match &planned {
            Planned::Create(action) => {
                tx.create(action)?;
                created.push(action.id.to_string());
            }
            Planned::Cancel { old, new } => tx.update(old, new)?,
        }
        report.planned(&planned);
    }
    Ok(created)
}

/// The messages a request touches, before and after.
#[derive(Default)]
struct Batch {
    states: HashMap<MessageId, Change>,
}

/// One message's change within a request.
struct Change {
    /// Where the stored message was filed before the request: its time-index key and what it
    /// contributed to indexes and counts (kept instead of a copy of its whole state).
    before: Option<(Vec<u8>, Derived)>,
    after: Record,
    /// Whether an event was folded in (or an older timeline re-sorted), so it must be written.
    changed: bool,
}

impl Batch {
    /// A message's state as the request has left it so far.
    fn state(&self, id: &MessageId) -> Option<&MessageState> {
        self.states.get(id)?.after.state.as_ref()
    }

    /// Folds one event in; false when it is a duplicate: the message's record already has an
    /// event with its provider event id or its natural key (message, kind, status or URL,
    /// time, participant), or it was summarized past the message's cap (`o` keys in `dedupe`).
    fn apply(
        &mut self,
        trees: (TxTree<'_, '_>, TxTree<'_, '_>),
        event: Event,
        context: &Context,
    ) -> Result<bool, StoreError> {
        let (messages, dedupe) = trees;
        let id = event.message_id.clone();
        let mut change = match self.states.remove(&id) {
            Some(change) => change,
            None => {
                let stored = match messages.get(id.as_str().as_bytes())? {
                    Some(bytes) => Record::decode(id.as_str(), &bytes)?,
                    None => Record::default(),
                };
                let before = stored.state.as_ref().and_then(|s| {
                    Some((super::time_key(s), Derived::of(Some(s), &context.fields)?))
                });
                Change {
                    before,
                    after: stored,
                    changed: false,
                }
            }
        };
        let summarized = change
            .after
            .state
            .as_ref()
            .is_some_and(|s| s.summary.is_some());
        let mut seen = change.after.has_seen(&event);
        if !seen && summarized {
            for fp in record::fingerprints(&event).into_iter().flatten() {
                seen |= dedupe.get(overflow_key(fp))?.is_some();
            }
        }
        if !seen {
            let received = event.received_at.timestamp().max(0).to_be_bytes();
            let (after, _, evicted) =
                MessageState::apply_bounded(change.after.state.take(), event, context.max_events);
            if let Some(e) = evicted {
                for fp in record::timeline_fingerprints(&id, &e).into_iter().flatten() {
                    dedupe.insert(overflow_key(fp), received)?;
                }
            }
            change.after.state = Some(after);
            change.changed = true;
        }
        self.states.insert(id, change);
        Ok(!seen)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::StoreSettings;
    use crate::domain::CallbackData;
    use crate::domain::EventKind;
    use crate::store::{temporary, Lookup};

    pub(in crate::store) fn status_event(
        id: &str,
        status: &str,
        secs: i64,
        campaign: &str,
    ) -> IngestItem {
        IngestItem::Event(Box::new(Event {
            callback: CallbackData::decode(&json!({ "campaign": campaign }), 4096),
            ..Event::test_status(id, status, secs)
        }))
    }

    pub(in crate::store) fn count(store: &EmbeddedStore, campaign: &str, metric: &str) -> i64 {
        store.stat_total("campaign", campaign, metric)
    }

    async fn ingest(store: &EmbeddedStore, items: Vec<IngestItem>) -> IngestOutcome {
        store
            .ingest(Provider::Bik, items, Utc::now())
            .await
            .unwrap()
    }

    fn click(id: &str, n: i64) -> IngestItem {
        let mut e = Event::test_status(id, "sent", n);
        e.kind = EventKind::Click;
        e.status = None;
        e.url = Some(format!("https://shop/{n}"));
        e.event_id = Some(format!("click-{n}"));
        IngestItem::Event(Box::new(e))
    }

    #[tokio::test]
    async fn a_big_request_is_written_in_parts_with_one_answer() {
        let store = temporary(&StoreSettings::default());
        let mut items: Vec<IngestItem> = (0..600)
            .map(|n| status_event(&format!("big-{n}"), "sent", 1, "c"))
            .collect();
        // A copy of the first event in the third part, and a quarantined item.
        items.push(status_event("big-0", "sent", 1, "c"));
        items.push(IngestItem::Rejected {
            reason: "no id".into(),
            raw: "{}".into(),
        });
        items.push(IngestItem::Ignored);
        let outcome = ingest(&store, items).await;
        assert_eq!(
            (
                outcome.accepted,
                outcome.duplicates,
                outcome.rejected,
                outcome.ignored
            ),
            (600, 1, 1, 1)
        );
        assert_eq!(count(&store, "c", "messages"), 600);
    }

    #[tokio::test]
    async fn past_its_cap_a_message_summarizes_counts_and_still_recognizes_duplicates() {
        let settings = StoreSettings {
            max_events_per_message: 10,
            ..StoreSettings::default()
        };
        let rules = crate::rules::tests::on_read();
        let store = crate::store::temporary_with(&settings, rules);
        let clicks: Vec<IngestItem> = (0..30).map(|n| click("big", n)).collect();
        assert_eq!(ingest(&store, clicks).await.accepted, 30);
        // A `read` in the middle of the timeline: summarized at once, yet it moves the state
        // and fires the rule.
        let read = || status_event("big", "read", 15, "c");
        assert_eq!(ingest(&store, vec![read()]).await.accepted, 1);
        let m = store.message("big").unwrap().unwrap();
        assert_eq!(m.events.len(), 10);
        assert_eq!(m.events_total(), 31);
        assert_eq!(m.status.as_ref().map(|s| s.as_str()), Some("read"));
        assert_eq!(store.message_actions("big").unwrap().len(), 1);
        // Retries of summarized events, by natural key or by event id, are duplicates.
        let again = ingest(&store, vec![read(), click("big", 12)]).await;
        assert_eq!((again.accepted, again.duplicates), (0, 2));
        assert_eq!(store.message("big").unwrap().unwrap().events_total(), 31);
    }

    #[tokio::test]
    async fn a_message_moving_forward_moves_one_count_not_two() {
        let store = temporary(&StoreSettings::default());
        ingest(
            &store,
            vec![
                status_event("m1", "delivered", 2, "c1"),
                status_event("m2", "sent", 1, "c1"),
            ],
        )
        .await;
        assert_eq!(
            (
                count(&store, "c1", "status:delivered"),
                count(&store, "c1", "status:sent")
            ),
            (1, 1)
        );
        ingest(
            &store,
            vec![
                status_event("m1", "read", 3, "c1"),
                status_event("m1", "sent", 1, "c1"),
            ],
        )
        .await;
        assert_eq!(count(&store, "c1", "status:delivered"), 0);
        assert_eq!(count(&store, "c1", "status:read"), 1);
        assert_eq!(count(&store, "c1", "status:sent"), 1);
        assert_eq!(count(&store, "c1", "messages"), 2);
        let outcome = ingest(&store, vec![status_event("m1", "read", 3, "c1")]).await;
        assert_eq!(outcome.duplicates, 1);
        assert_eq!(count(&store, "c1", "status:read"), 1);
    }

    #[tokio::test]
    async fn duplicates_within_one_batch_are_counted_once() {
        let store = temporary(&StoreSettings::default());
        let outcome = ingest(
            &store,
            vec![
                status_event("m1", "sent", 1, "c"),
                status_event("m1", "sent", 1, "c"),
            ],
        )
        .await;
        assert_eq!((outcome.accepted, outcome.duplicates), (1, 1));
        assert_eq!(store.message("m1").unwrap().unwrap().events.len(), 1);
    }

    #[tokio::test]
    async fn a_retried_rejected_event_is_quarantined_once() {
        let store = temporary(&StoreSettings::default());
        let bad = || IngestItem::Rejected {
            reason: "message id is missing".into(),
            raw: "{}".into(),
        };
        assert_eq!(ingest(&store, vec![bad()]).await.rejected, 1);
        assert_eq!(ingest(&store, vec![bad()]).await.rejected, 1);
        assert_eq!(store.rejected(10, None).unwrap().items.len(), 1);
    }

    #[tokio::test]
    async fn index_entries_follow_the_callback_data_the_state_settles_on() {
        let store = temporary(&StoreSettings::default());
        ingest(&store, vec![status_event("m1", "read", 5, "late")]).await;
        // An earlier event with other callback data arrives later: the state takes the earliest.
        ingest(&store, vec![status_event("m1", "sent", 1, "early")]).await;
        let find = |v: &str| {
            let lookup = Lookup::Callback {
                field: "campaign".into(),
                value: v.into(),
            };
            store.lookup(&lookup, 10, None).unwrap().items.len()
        };
        assert_eq!((find("early"), find("late")), (1, 0));
        assert_eq!(
            (
                count(&store, "late", "messages"),
                count(&store, "early", "status:read")
            ),
            (0, 1)
        );
    }
}
