//! The outbox's keys in memory: what the dispatcher reads every round.
//!
//! Outbox entries live for seconds: each is written when an action starts waiting and removed
//! when it is claimed. In an LSM tree (fjall) every removal leaves a tombstone until compaction,
//! so a scan from the front of a target's outbox would step over every entry sent lately
//! (measured: a follow-up lag p99 of 1.3 s at 2,000 webhooks/s, against 5.5 ms on sled). One
//! process owns an embedded store and every write goes through its writer, so the writer keeps
//! this copy of the outbox's keys in step with each commit, and the dispatcher's reads never
//! touch the engine. It is loaded from the engine when the store opens.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::RwLock;

use super::engine::{all, Engine, Space, WriteSet};
use crate::store::StoreError;

#[derive(Default)]
pub(crate) struct Waiting {
    keys: RwLock<BTreeSet<Vec<u8>>>,
}

/// The outbox changes of one write set, taken before it is committed: key, and whether it
/// is added (else removed).
pub(crate) type Changes = Vec<(Vec<u8>, bool)>;

impl Waiting {
    pub fn load(engine: &dyn Engine) -> Result<Self, StoreError> {
        let keys = all(engine, Space::Outbox)
            .map(|e| e.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys: RwLock::new(keys),
        })
    }

    /// What a write set changes in the outbox.
    pub fn changes(writes: &WriteSet) -> Changes {
        writes
            .changes
            .iter()
            .filter(|(space, _, _)| *space == Space::Outbox)
            .map(|(_, key, value)| (key.clone(), value.is_some()))
            .collect()
    }

    /// Applies a committed write set's outbox changes.
    pub fn apply(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let mut keys = self.keys.write().expect("outbox keys lock");
        for (key, added) in changes {
            if added {
                keys.insert(key);
            } else {
                keys.remove(&key);
            }
        }
    }

    /// Registers the targets of the forwards that have deliveries waiting (a forward removed
    /// from the config is still dispatched, so its deliveries end as dead, saying why, rather
    /// than wait unseen).
    pub fn register_forwards(&self) {
        let prefix = crate::targets::FORWARD_PREFIX.as_bytes();
        let keys = self.keys.read().expect("outbox keys lock");
        let mut from: Vec<u8> = prefix.to_vec();
        while let Some(k) = keys
            .range::<[u8], _>((Bound::Included(from.as_slice()), Bound::Unbounded))
            .next()
            .filter(|k| k.starts_with(prefix))
        {
            let name = k.split(|b| *b == 0).next().unwrap_or_default();
            crate::targets::Target::parse(&String::from_utf8_lossy(name));
            // Past every key of this target: its name, then a byte above the separator.
            from = name.to_vec();
            from.push(1);
        }
    }

    /// Keys from `from` (inclusive) to `to` (exclusive), in order, at most `limit`.
    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>> {
        let keys = self.keys.read().expect("outbox keys lock");
        keys.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The first key starting with `prefix`.
    pub fn first(&self, prefix: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().expect("outbox keys lock");
        keys.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .next()
            .filter(|k| k.starts_with(prefix))
            .cloned()
    }
}
