//! The fjall engine (fjall 3, an LSM tree): one `Database` with a keyspace per [`Space`], so
//! one journal, and a write set is one cross-keyspace `WriteBatch`. The journal is persisted
//! with `PersistMode::SyncData` by the flusher, never per batch: the fsync runs under
//! fjall's journal lock, so group commit stays flowhook's (see [`super::durability`]).
//!
//! After any failed commit or flush this handle takes no more writes: a failed write may
//! leave part of a batch in the journal's buffer, and a failed fsync poisons the database.
//! The store is then opened again in place (see [`crate::store::Healer`]), which recovers
//! the journal up to its last whole batch.
//!
//! Memory: a 64 MiB memtable per keyspace (fjall's default) would be 768 MiB for twelve
//! keyspaces, and reopening replays unflushed journals into memtables. The memtables here are
//! small (16 MiB for records, 4 MiB for indexes and actions, 2 MiB for the rest; 50 MiB at
//! most), a clean close writes them out so the next open replays nothing, the block cache is
//! `store.cache_capacity_bytes` (32 MiB when unset), and at most [`MAX_CACHED_FILES`] table files are kept open.

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::engine::{Engine, Entries, Space, WriteSet};
use crate::store::StoreError;

/// Table files fjall keeps open at most: inside the descriptors flowhook reserves for
/// everything but inbound connections ([`crate::fd_limit::RESERVED`]).
pub(crate) const MAX_CACHED_FILES: usize = 128;

// The open table files, with a margin for the journal, the lock and the mark, fit in the
// descriptors kept beside inbound connections.
const _: () = assert!(MAX_CACHED_FILES as u64 + 32 <= crate::fd_limit::RESERVED);

const MIB: u64 = 1024 * 1024;

pub(crate) struct FjallEngine {
    db: Database,
    keyspaces: Vec<Keyspace>,
    /// Set by a failed commit or flush, with its error: this handle takes no more writes.
    failed: Mutex<Option<String>>,
}

impl FjallEngine {
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        Self::open_with(path, cache_capacity, false)
    }

    fn open_with(path: &Path, cache_capacity: u64, temporary: bool) -> Result<Self, StoreError> {
        // lsm-tree resolves a default relative path against the working directory when it
        // opens a keyspace, and panics if there is none (a directory deleted under the process).
        if let Err(error) = std::env::current_dir() {
            return Err(StoreError::Unopenable(format!(
                "the store at {} cannot be opened: fjall needs a working directory, and this \
                 process's is gone ({error}); start flowhook from a directory that exists",
                path.display()
            )));
        }
        let db = Database::builder(path)
            .cache_size(cache_capacity)
            .manual_journal_persist(true)
            .max_cached_files(Some(MAX_CACHED_FILES))
            .temporary(temporary)
            .open()
            .map_err(|error| match error {
                fjall::Error::Locked => super::mark::in_use(path, ""),
                error => super::mark::unopenable(path, &format!("fjall: {error}")),
            })?;
        let keyspaces = Space::ALL
            .iter()
            .map(|space| {
                let memtable = match space {
                    Space::Messages => 16,
                    Space::IdxCallback
                    | Space::IdxRecipient
                    | Space::IdxTime
                    | Space::Actions
                    | Space::ActionIdx => 4,
                    _ => 2,
                } * MIB;
                db.keyspace(space.name(), || {
                    KeyspaceCreateOptions::default()
                        .manual_journal_persist(true)
                        .max_memtable_size(memtable)
                })
            })
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        Ok(Self {
            db,
            keyspaces,
            failed: Mutex::new(None),
        })
    }

    /// A store in a temporary directory, removed when dropped (tests).
    #[cfg(test)]
    pub fn temporary() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory").keep();
        Self::open_with(&dir, 8 * MIB, true).expect("temporary fjall")
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space.index()]
    }

    /// `result`, marking the handle failed if it is an error.
    fn watch<T>(&self, result: fjall::Result<T>) -> Result<T, StoreError> {
        result.map_err(|error| {
            let mut failed = self.failed.lock().expect("fjall failure lock");
            failed.get_or_insert_with(|| error.to_string());
            backend(error)
        })
    }

    fn writable(&self) -> Result<(), StoreError> {
        match &*self.failed.lock().expect("fjall failure lock") {
            Some(error) => Err(StoreError::Backend(
                format!(
                    "{error} (an earlier write failed; the store takes writes again once it \
                     has been opened again)"
                )
                .into(),
            )),
            None => Ok(()),
        }
    }
}

fn backend(error: fjall::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

impl Engine for FjallEngine {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .keyspace(space)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn range<'a>(
        &'a self,
        space: Space,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
    ) -> Entries<'a> {
        let range = self.keyspace(space).range::<&[u8], _>((from, to));
        let entry = |guard: fjall::Guard| {
            guard
                .into_inner()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(backend)
        };
        if reverse {
            Box::new(range.rev().map(entry))
        } else {
            Box::new(range.map(entry))
        }
    }

    fn commit(&self, writes: WriteSet) -> Result<(), StoreError> {
        self.writable()?;
        let mut batch = self.db.batch();
        for (space, key, value) in writes.changes {
            let keyspace = self.keyspace(space);
            match value {
                Some(value) => batch.insert(keyspace, key, value),
                // An outbox entry or an in-flight mark is written once and removed once, within
                // seconds. A single-delete tombstone and its insert cancel out when the
                // memtable is flushed, so scans of those keyspaces (the in-flight marks and the
                // outbox's keys are read in full at every open) do not step over a tombstone
                // per call made, and compaction has less to do: measured on a 1M-message store
                // just after a bulk load, RSS after opening 116 -> 70 MB, after 2,000 reads
                // 130 -> 96 MB, the open itself 2.2 -> 0.6 s. Were a key ever written twice
                // before its removal, its older write could come back; every outbox entry and
                // in-flight mark is checked against its action when read and dropped when stale,
                // so that is harmless.
                None if matches!(space, Space::Outbox | Space::Inflight) => {
                    batch.remove_weak(keyspace, key)
                }
                None => batch.remove(keyspace, key),
            }
        }
        self.watch(batch.commit())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.watch(self.db.persist(PersistMode::SyncData))
    }

    /// Also writes every memtable out to a table, so that the next open has no journal to
    /// replay into memory: it opens at once and small.
    fn close(&self) -> Result<(), StoreError> {
        self.flush()?;
        if !self.healthy() {
            return Ok(());
        }
        for keyspace in &self.keyspaces {
            self.watch(keyspace.rotate_memtable_and_wait())?;
        }
        self.watch(self.db.persist(PersistMode::SyncAll))
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.disk_space().map_err(backend)
    }

    fn healthy(&self) -> bool {
        self.failed.lock().expect("fjall failure lock").is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// lsm-tree before 3.1.9 could return a stale version of a key rewritten often (its issue
    /// 315), which is what flowhook does to a message's record and a campaign's counters. A
    /// few hot keys rewritten thousands of times, with memtables flushed to tables and tables
    /// compacted along the way, always read back as the model says.
    #[test]
    fn hot_keys_rewritten_often_read_back_their_latest_value() {
        let engine = FjallEngine::temporary();
        let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
        let keys: Vec<Vec<u8>> = (0..4u8).map(|k| vec![b'k', k]).collect();
        for round in 0..6_000u64 {
            let key = &keys[(round * 7 % 4) as usize];
            let stored = engine
                .get(Space::Aggregates, key)
                .unwrap()
                .map(|v| u64::from_be_bytes(v.try_into().unwrap()));
            assert_eq!(stored, model.get(key).copied(), "round {round}");
            let next = stored.unwrap_or(0) + round;
            let mut writes = WriteSet::default();
            writes.insert(Space::Aggregates, key.clone(), next.to_be_bytes());
            // A second keyspace in the same batch, as every commit has.
            writes.insert(Space::Meta, b"seq".to_vec(), round.to_be_bytes());
            engine.commit(writes).unwrap();
            model.insert(key.clone(), next);
            if round % 250 == 0 {
                engine.flush().unwrap();
                engine
                    .keyspace(Space::Aggregates)
                    .rotate_memtable_and_wait()
                    .unwrap();
            }
            if round % 2_000 == 1_999 {
                engine.keyspace(Space::Aggregates).major_compact().unwrap();
            }
        }
        let scanned: HashMap<Vec<u8>, u64> = engine
            .range(Space::Aggregates, Bound::Unbounded, Bound::Unbounded, false)
            .map(|e| {
                let (k, v) = e.unwrap();
                (k, u64::from_be_bytes(v.try_into().unwrap()))
            })
            .collect();
        assert_eq!(scanned, model);
    }

    /// Outbox keys come and go (written, then removed with a single-delete tombstone), some
    /// written again after their removal; across memtable flushes and compactions a scan shows
    /// exactly the keys the model holds.
    #[test]
    fn keys_written_and_removed_in_turn_scan_as_the_model_says() {
        let engine = FjallEngine::temporary();
        let mut model = std::collections::BTreeSet::new();
        for round in 0..4_000u64 {
            let key = (round * 7919 % 300).to_be_bytes().to_vec();
            let mut writes = WriteSet::default();
            if model.contains(&key) {
                writes.remove(Space::Outbox, key.clone());
                model.remove(&key);
            } else {
                writes.insert(Space::Outbox, key.clone(), []);
                model.insert(key);
            }
            engine.commit(writes).unwrap();
            if round % 500 == 0 {
                engine
                    .keyspace(Space::Outbox)
                    .rotate_memtable_and_wait()
                    .unwrap();
            }
            if round % 1_500 == 1_499 {
                engine.keyspace(Space::Outbox).major_compact().unwrap();
            }
            if round % 100 == 0 {
                let scanned: std::collections::BTreeSet<Vec<u8>> = engine
                    .range(Space::Outbox, Bound::Unbounded, Bound::Unbounded, false)
                    .map(|e| e.unwrap().0)
                    .collect();
                assert_eq!(scanned, model, "round {round}");
            }
        }
    }
}
