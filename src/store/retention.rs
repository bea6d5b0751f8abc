//! Retention: messages (with their indexes, counts and actions) whose last event is older than
//! `store.retention_days`, quarantined events as old, and quarantine fingerprints and
//! tombstones older than `store.dedupe_days` are purged in the background, in bounded batches.

use std::ops::Bound;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sled::transaction::ConflictableTransactionError::Abort;
use sled::Transactional;

use super::actions::ActionTx;
use super::filing::{Derived, Filing};
use super::record::Record;
use super::{abort, time_key, SledStore, Store, StoreError};
use crate::background::{self, Background};
use crate::config::StoreSettings;

/// Entries removed per transaction.
const BATCH: usize = 500;

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub messages: u64,
    pub actions: u64,
    pub rejected: u64,
    pub dedupe_keys: u64,
}

impl SledStore {
    /// Purges what is older than the cutoffs: messages last updated before `messages_before`
    /// (and quarantined events received before it), dedupe keys first seen before
    /// `dedupe_before`.
    pub fn purge(
        &self,
        messages_before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        self.purge_messages(messages_before, dedupe_before, &mut purged)?;
        self.purge_rejected(messages_before, &mut purged)?;
        self.purge_dedupe(dedupe_before, &mut purged)?;
        self.inner.flusher.committed();
        Ok(purged)
    }

    /// Purges messages last updated before `before`, with their indexes, counts and actions.
    /// One still inside the dedupe window (updated at or after `dedupe_before`, when
    /// `retention_days < dedupe_days`) leaves a tombstone of its events' fingerprints, removed
    /// in a later pass once the window is over.
    fn purge_messages(
        &self,
        before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
        purged: &mut Purged,
    ) -> Result<(), StoreError> {
        let t = &self.inner.trees;
        let end = (before.timestamp_millis().max(0) as u64)
            .to_be_bytes()
            .to_vec();
        let window = dedupe_before.timestamp_millis().max(0) as u64;
        let mut start = Bound::Unbounded;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            for entry in t
                .idx_time
                .range((start.clone(), Bound::Excluded(end.clone())))
                .take(BATCH)
            {
                let (k, _) = entry?;
                let id = String::from_utf8_lossy(k.get(8..).unwrap_or_default()).into_owned();
                batch.push((k.to_vec(), id));
            }
            let Some(last) = batch.last() else {
                return Ok(());
            };
            start = Bound::Excluded(last.0.clone());
            let fields = &self.inner.fields;
            let (messages, actions, tombstones) = (
                &t.messages,
                &t.idx_time,
                &t.idx_callback,
                &t.idx_recipient,
                &t.aggregates,
                &t.actions,
                &t.action_idx,
                &t.outbox,
                &t.inflight,
            )
                .transaction(
                    |(
                        messages,
                        idx_time,
                        idx_callback,
                        idx_recipient,
                        aggregates,
                        actions,
                        action_idx,
                        outbox,
                        inflight,
                    )| {
                        let filing = Filing {
                            callback: idx_callback,
                            recipient: idx_recipient,
                            aggregates,
                        };
                        let action_tx = ActionTx {
                            actions,
                            index: action_idx,
                            outbox,
                            aggregates,
                            inflight: Some(inflight),
                        };
                        let (mut n_messages, mut n_actions, mut n_tombstones) = (0, 0, 0);
                        for (k, id) in &batch {
                            let Some(bytes) = messages.get(id.as_bytes())? else {
                                idx_time.remove(k.as_slice())?;
                                continue;
                            };
                            let record = Record::decode(id, &bytes).map_err(Abort)?;
                            let updated_ms =
                                u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                            let in_window = updated_ms >= window;
                            let Some(state) = &record.state else {
                                // A tombstone: gone once its events can no longer be retried.
                                if !in_window {
                                    messages.remove(id.as_bytes())?;
                                    idx_time.remove(k.as_slice())?;
                                    n_tombstones += 1;
                                }
                                continue;
                            };
                            if time_key(state) != *k {
                                // Updated since: it has a newer entry and stays.
                                idx_time.remove(k.as_slice())?;
                                continue;
                            }
                            if in_window {
                                let tomb = record.tombstone().encode().map_err(Abort)?;
                                messages.insert(id.as_bytes(), tomb)?;
                            } else {
                                messages.remove(id.as_bytes())?;
                                idx_time.remove(k.as_slice())?;
                            }
                            let old = Derived::of(Some(state), fields);
                            filing.refile(&state.message_id, old.as_ref(), None)?;
                            n_messages += 1;
                            for action_id in &record.actions {
                                if let Some(action) = action_tx.load(action_id)? {
                                    action_tx.delete(&action)?;
                                    n_actions += 1;
                                }
                            }
                        }
                        Ok((n_messages, n_actions, n_tombstones))
                    },
                )
                .map_err(abort)?;
            purged.messages += messages;
            purged.actions += actions;
            purged.dedupe_keys += tombstones;
            if batch.len() < BATCH {
                return Ok(());
            }
        }
    }

    fn purge_rejected(&self, before: DateTime<Utc>, purged: &mut Purged) -> Result<(), StoreError> {
        let tree = &self.inner.trees.rejected;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0u64;
            let mut done = true;
            for entry in tree.iter().take(BATCH) {
                let (k, v) = entry?;
                let event: super::RejectedEvent = serde_json::from_slice(&v)?;
                // Ids follow arrival, so the first newer one ends the purge.
                if event.received_at >= before {
                    break;
                }
                batch.remove(k);
                n += 1;
                done = n < BATCH as u64;
            }
            tree.apply_batch(batch)?;
            purged.rejected += n;
            if done {
                return Ok(());
            }
        }
    }

    fn purge_dedupe(&self, before: DateTime<Utc>, purged: &mut Purged) -> Result<(), StoreError> {
        let tree = &self.inner.trees.dedupe;
        let cutoff = before.timestamp();
        let mut expired = Vec::with_capacity(BATCH);
        let remove = |expired: &mut Vec<sled::IVec>| -> Result<(), StoreError> {
            let mut batch = sled::Batch::default();
            for k in expired.drain(..) {
                batch.remove(k);
            }
            Ok(tree.apply_batch(batch)?)
        };
        for entry in tree.iter() {
            let (k, v) = entry?;
            let first_seen = <[u8; 8]>::try_from(v.as_ref())
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MAX);
            if first_seen < cutoff {
                expired.push(k);
                purged.dedupe_keys += 1;
                if expired.len() == BATCH {
                    remove(&mut expired)?;
                }
            }
        }
        remove(&mut expired)
    }
}

/// The background purge: a thread that runs [`Store::purge`] every
/// `store.purge_interval_seconds` (with Postgres, on one instance at a time).
pub struct Janitor {
    worker: Background,
}

impl Janitor {
    pub fn start(store: Store, settings: &StoreSettings) -> std::io::Result<Self> {
        let interval = Duration::from_secs_f64(settings.purge_interval_seconds);
        let retention = days(settings.retention_days);
        let dedupe = days(f64::from(settings.dedupe_days));
        let worker = Background::spawn(
            "flowhook-purge",
            || {},
            move |token| {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "retention cannot run: no runtime for it");
                        return;
                    }
                };
                while !background::sleep(&token, interval) {
                    let now = Utc::now();
                    match runtime.block_on(store.purge(now - retention, now - dedupe)) {
                        Ok(purged) if purged != Purged::default() => {
                            for (kind, n) in [
                                ("messages", purged.messages),
                                ("actions", purged.actions),
                                ("rejected", purged.rejected),
                                ("dedupe_keys", purged.dedupe_keys),
                            ] {
                                metrics::counter!(crate::observe::PURGED, "kind" => kind)
                                    .increment(n);
                            }
                            tracing::info!(
                                messages = purged.messages,
                                actions = purged.actions,
                                rejected = purged.rejected,
                                dedupe_keys = purged.dedupe_keys,
                                "purged expired data"
                            );
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "purge failed; will try again"),
                    }
                }
            },
        )?;
        Ok(Self { worker })
    }

    pub fn stop(&self) {
        self.worker.stop();
    }
}

fn days(days: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((days * 86_400_000.0) as i64)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{Event, Provider};
    use crate::store::{temporary, IngestItem, Lookup};

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_255_200 + secs, 0).unwrap()
    }

    fn event(id: &str, status: &str, received: i64) -> IngestItem {
        IngestItem::Event(Box::new(Event {
            provider: Provider::Generic,
            received_at: at(received),
            channel: None,
            ..Event::test_status(id, status, received)
        }))
    }

    async fn ingest(store: &SledStore, items: Vec<IngestItem>, received: i64) {
        store
            .ingest(Provider::Generic, items, at(received))
            .await
            .unwrap();
    }

    fn count(store: &SledStore, metric: &str) -> i64 {
        store.stat_total("campaign", "c", metric)
    }

    #[tokio::test]
    async fn purging_removes_old_messages_with_their_indexes_and_counts() {
        let store = temporary(&StoreSettings::default());
        ingest(&store, vec![event("old", "sent", 0)], 0).await;
        ingest(&store, vec![event("kept", "sent", 10)], 10).await;
        // A later event keeps a message alive.
        ingest(&store, vec![event("touched", "sent", 0)], 0).await;
        ingest(&store, vec![event("touched", "read", 20)], 20).await;
        let bad = IngestItem::Rejected {
            reason: "no id".into(),
            raw: "{}".into(),
        };
        ingest(&store, vec![bad], 0).await;
        assert_eq!(count(&store, "messages"), 3);

        let purged = store.purge(at(5), at(-1)).unwrap();
        assert_eq!(
            (purged.messages, purged.rejected, purged.dedupe_keys),
            (1, 1, 0)
        );
        assert!(store.message("old").unwrap().is_none());
        assert!(store.message("kept").unwrap().is_some());
        assert!(store.message("touched").unwrap().is_some());
        assert_eq!(count(&store, "messages"), 2);
        assert_eq!(count(&store, "status:sent"), 1);
        let by_recipient = store
            .lookup(&Lookup::Recipient("+91".into()), 10, None)
            .unwrap();
        assert_eq!(by_recipient.items.len(), 2);
        assert!(store.rejected(10, None).unwrap().items.is_empty());
        assert_eq!(store.purge(at(5), at(-1)).unwrap(), Purged::default());
    }

    #[tokio::test]
    async fn a_retry_is_a_duplicate_for_as_long_as_its_message_is_kept() {
        let store = temporary(&StoreSettings::default());
        ingest(&store, vec![event("m", "sent", 0)], 0).await;
        let again = || vec![event("m", "sent", 0)];
        // Dedupe reads the message's own record: no separate key, nothing to expire.
        let purged = store.purge(at(-100), at(5)).unwrap();
        assert_eq!(purged, Purged::default());
        let outcome = store
            .ingest(Provider::Generic, again(), at(6))
            .await
            .unwrap();
        assert_eq!((outcome.accepted, outcome.duplicates), (0, 1));
    }

    #[tokio::test]
    async fn a_message_purged_inside_the_dedupe_window_leaves_a_tombstone_until_it_ends() {
        let store = temporary(&StoreSettings::default());
        ingest(&store, vec![event("m", "sent", 0)], 0).await;
        // Retention is over (cutoff 5) but the dedupe window is not (cutoff -100).
        let purged = store.purge(at(5), at(-100)).unwrap();
        assert_eq!((purged.messages, purged.dedupe_keys), (1, 0));
        assert!(store.message("m").unwrap().is_none(), "gone for the API");
        let outcome = store
            .ingest(Provider::Generic, vec![event("m", "sent", 0)], at(6))
            .await
            .unwrap();
        assert_eq!(outcome.duplicates, 1, "a retried event is still recognized");
        assert!(store.message("m").unwrap().is_none());
        // Once the window is over the tombstone goes, and the event counts as new again.
        let purged = store.purge(at(5), at(5)).unwrap();
        assert_eq!((purged.messages, purged.dedupe_keys), (0, 1));
        let outcome = store
            .ingest(Provider::Generic, vec![event("m", "sent", 0)], at(7))
            .await
            .unwrap();
        assert_eq!(outcome.accepted, 1);
        assert!(store.message("m").unwrap().is_some());
    }
}
