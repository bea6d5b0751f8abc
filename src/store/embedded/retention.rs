//! The embedded store's purge: what retention removes (see [`crate::store::retention`] for
//! when), in bounded batches, each one writer job.

use std::ops::Bound;

use chrono::{DateTime, Utc};

use super::actions::ActionTx;
use super::engine::{all, Space};
use super::filing::Filing;
use super::{time_key, EmbeddedStore};
use crate::store::filing::Derived;
use crate::store::record::Record;
use crate::store::{Purged, RejectedEvent, StoreError};

/// Entries removed per write.
const BATCH: usize = 500;

impl EmbeddedStore {
    /// Purges what is older than the cutoffs: messages last updated before `messages_before`
    /// (and quarantined events received before it), dedupe keys first seen before
    /// `dedupe_before`. Runs on the blocking pool.
    pub fn purge(
        &self,
        messages_before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        self.purge_messages(messages_before, dedupe_before, &mut purged)?;
        self.purge_rejected(messages_before, &mut purged)?;
        self.purge_dedupe(dedupe_before, &mut purged)?;
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
        let end = (before.timestamp_millis().max(0) as u64)
            .to_be_bytes()
            .to_vec();
        let window = dedupe_before.timestamp_millis().max(0) as u64;
        let mut start: Option<Vec<u8>> = None;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            let from = match &start {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Unbounded,
            };
            let scan = self
                .engine()
                .range(Space::IdxTime, from, Bound::Excluded(&end), false);
            for entry in scan.take(BATCH) {
                let (k, _) = entry?;
                let id = String::from_utf8_lossy(k.get(8..).unwrap_or_default()).into_owned();
                batch.push((k, id));
            }
            let Some(last) = batch.last() else {
                return Ok(());
            };
            start = Some(last.0.clone());
            let full = batch.len() == BATCH;
            let context = std::sync::Arc::clone(&self.inner.context);
            let ((messages, actions, tombstones), _) =
                self.inner.writer.write_blocking(batch.len(), move |tx| {
                    let fields = &context.fields;
                    let (messages, idx_time) = (tx.tree(Space::Messages), tx.tree(Space::IdxTime));
                    let filing = Filing::of(tx);
                    let action_tx = ActionTx::of(tx);
                    let (mut n_messages, mut n_actions, mut n_tombstones) = (0, 0, 0);
                    for (k, id) in &batch {
                        let Some(bytes) = messages.get(id.as_bytes())? else {
                            idx_time.remove(k.as_slice())?;
                            continue;
                        };
                        let record = Record::decode(id, &bytes)?;
                        let updated_ms = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
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
                            messages.insert(id.as_bytes(), record.tombstone().encode()?)?;
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
                })?;
            purged.messages += messages;
            purged.actions += actions;
            purged.dedupe_keys += tombstones;
            if !full {
                return Ok(());
            }
        }
    }

    fn purge_rejected(&self, before: DateTime<Utc>, purged: &mut Purged) -> Result<(), StoreError> {
        loop {
            let mut expired = Vec::new();
            let mut done = true;
            for entry in all(self.engine(), Space::Rejected).take(BATCH) {
                let (k, v) = entry?;
                let event: RejectedEvent = serde_json::from_slice(&v)?;
                // Ids follow arrival, so the first newer one ends the purge.
                if event.received_at >= before {
                    break;
                }
                expired.push(k);
                done = expired.len() < BATCH;
            }
            purged.rejected += expired.len() as u64;
            self.remove_all(Space::Rejected, expired)?;
            if done {
                return Ok(());
            }
        }
    }

    fn purge_dedupe(&self, before: DateTime<Utc>, purged: &mut Purged) -> Result<(), StoreError> {
        let cutoff = before.timestamp();
        let mut expired = Vec::with_capacity(BATCH);
        let mut from: Option<Vec<u8>> = None;
        loop {
            // A scan never spans a write: it restarts after the last key it read.
            let start = match &from {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Unbounded,
            };
            let mut read = 0;
            for entry in self
                .engine()
                .range(Space::Dedupe, start, Bound::Unbounded, false)
                .take(BATCH * 8)
            {
                let (k, v) = entry?;
                read += 1;
                let first_seen = <[u8; 8]>::try_from(v.as_slice())
                    .map(i64::from_be_bytes)
                    .unwrap_or(i64::MAX);
                from = Some(k.clone());
                if first_seen < cutoff {
                    expired.push(k);
                    purged.dedupe_keys += 1;
                }
            }
            self.remove_all(Space::Dedupe, std::mem::take(&mut expired))?;
            if read < BATCH * 8 {
                return Ok(());
            }
        }
    }

    /// Removes keys of one keyspace, as one write.
    fn remove_all(&self, space: Space, keys: Vec<Vec<u8>>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.inner.writer.write_blocking(keys.len(), move |tx| {
            for k in keys {
                tx.remove(space, k);
            }
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::config::StoreSettings;
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

    async fn ingest(store: &EmbeddedStore, items: Vec<IngestItem>, received: i64) {
        store
            .ingest(Provider::Generic, items, at(received))
            .await
            .unwrap();
    }

    /// Purges on the blocking pool, as [`crate::store::Store::purge`] does.
    async fn purge(store: &EmbeddedStore, before: DateTime<Utc>, dedupe: DateTime<Utc>) -> Purged {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.purge(before, dedupe))
            .await
            .unwrap()
            .unwrap()
    }

    fn count(store: &EmbeddedStore, metric: &str) -> i64 {
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

        let purged = purge(&store, at(5), at(-1)).await;
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
        assert_eq!(purge(&store, at(5), at(-1)).await, Purged::default());
    }

    #[tokio::test]
    async fn a_retry_is_a_duplicate_for_as_long_as_its_message_is_kept() {
        let store = temporary(&StoreSettings::default());
        ingest(&store, vec![event("m", "sent", 0)], 0).await;
        let again = || vec![event("m", "sent", 0)];
        // Dedupe reads the message's own record: no separate key, nothing to expire.
        let purged = purge(&store, at(-100), at(5)).await;
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
        let purged = purge(&store, at(5), at(-100)).await;
        assert_eq!((purged.messages, purged.dedupe_keys), (1, 0));
        assert!(store.message("m").unwrap().is_none(), "gone for the API");
        let outcome = store
            .ingest(Provider::Generic, vec![event("m", "sent", 0)], at(6))
            .await
            .unwrap();
        assert_eq!(outcome.duplicates, 1, "a retried event is still recognized");
        assert!(store.message("m").unwrap().is_none());
        // Once the window is over the tombstone goes, and the event counts as new again.
        let purged = purge(&store, at(5), at(5)).await;
        assert_eq!((purged.messages, purged.dedupe_keys), (0, 1));
        let outcome = store
            .ingest(Provider::Generic, vec![event("m", "sent", 0)], at(7))
            .await
            .unwrap();
        assert_eq!(outcome.accepted, 1);
        assert!(store.message("m").unwrap().is_some());
    }
}
