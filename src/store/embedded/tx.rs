//! A write in progress: reads see what the batch and the running job have written so far
//! (then the engine), writes are kept in memory until the writer commits the batch as one
//! [`WriteSet`]. A job that fails is dropped from the batch without a trace, so each job is
//! all or nothing on its own while a batch of many jobs costs one commit.

use std::cell::RefCell;
use std::collections::HashMap;

use super::engine::{Engine, Space, WriteSet};
use crate::store::StoreError;

/// Per keyspace (by [`Space::index`]): key to new value, `None` for a removal. Looked up by
/// `&[u8]`, so a read allocates nothing.
type Changes = [HashMap<Vec<u8>, Option<Vec<u8>>>; Space::ALL.len()];

pub(crate) struct Tx<'e> {
    engine: &'e dyn Engine,
    /// What the batch's finished jobs wrote.
    batch: RefCell<Changes>,
    /// What the running job wrote.
    job: RefCell<Changes>,
}

impl<'e> Tx<'e> {
    pub fn new(engine: &'e dyn Engine) -> Self {
        Self {
            engine,
            batch: RefCell::default(),
            job: RefCell::default(),
        }
    }

    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let at = space.index();
        if let Some(value) = self.job.borrow()[at].get(key) {
            return Ok(value.clone());
        }
        if let Some(value) = self.batch.borrow()[at].get(key) {
            return Ok(value.clone());
        }
        self.engine.get(space, key)
    }

    pub fn insert(&self, space: Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.job.borrow_mut()[space.index()]
            .insert(key.as_ref().to_vec(), Some(value.as_ref().to_vec()));
    }

    pub fn remove(&self, space: Space, key: impl AsRef<[u8]>) {
        self.job.borrow_mut()[space.index()].insert(key.as_ref().to_vec(), None);
    }

    /// The keys under `prefix`, in order, as this transaction sees them: the engine's, with
    /// what the batch and the running job inserted and removed.
    pub fn keys_with_prefix(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = std::collections::BTreeSet::new();
        for entry in super::engine::prefixed(self.engine, space, prefix) {
            keys.insert(entry?.0);
        }
        for changes in [&self.batch, &self.job] {
            for (key, value) in changes.borrow()[space.index()].iter() {
                if !key.starts_with(prefix) {
                    continue;
                }
                if value.is_some() {
                    keys.insert(key.clone());
                } else {
                    keys.remove(key);
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// One keyspace, for code that works on a few of them.
    pub fn tree(&self, space: Space) -> TxTree<'_, 'e> {
        TxTree { tx: self, space }
    }

    /// Ends the running job: its writes join the batch, or (`keep = false`) are dropped.
    pub fn end_job(&self, keep: bool) {
        let job = std::mem::take(&mut *self.job.borrow_mut());
        if keep {
            let mut batch = self.batch.borrow_mut();
            for (space, changes) in job.into_iter().enumerate() {
                batch[space].extend(changes);
            }
        }
    }

    /// Whether the batch (its finished jobs) writes anything.
    pub fn is_empty(&self) -> bool {
        self.batch.borrow().iter().all(HashMap::is_empty)
    }

    /// The batch's writes (the running job's are not included: end it first).
    pub fn into_write_set(self) -> WriteSet {
        let mut writes = WriteSet::default();
        for (space, changes) in Space::ALL.into_iter().zip(self.batch.into_inner()) {
            for (key, value) in changes {
                writes.changes.push((space, key, value));
            }
        }
        writes
    }
}

/// One keyspace of a [`Tx`].
#[derive(Clone, Copy)]
pub(crate) struct TxTree<'t, 'e> {
    tx: &'t Tx<'e>,
    space: Space,
}

impl TxTree<'_, '_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.tx.get(self.space, key.as_ref())
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.tx.insert(self.space, key, value);
        Ok(())
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.tx.remove(self.space, key);
        Ok(())
    }

    /// See [`Tx::keys_with_prefix`].
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tx.keys_with_prefix(self.space, prefix)
    }
}
