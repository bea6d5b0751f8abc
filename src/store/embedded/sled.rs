//! The sled engine (sled 0.34.7, the default): a tree per keyspace; a write set is one sled
//! transaction over the trees it touches; a flush is `Db::flush`.
//!
//! sled's recovery treats a torn or damaged log as its end, silently: the commit mark
//! ([`super::mark`]) is what notices.

use std::ops::Bound;
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::engine::{Engine, Entries, Space, WriteSet};
use crate::store::StoreError;

pub(crate) struct SledEngine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl SledEngine {
    /// Opens (or creates) the sled store at `path`. A store sled cannot open (or panics
    /// opening, as a damaged file can make it) is refused with the way out, not a panic.
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .flush_every_ms(None);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        let opened = match opened {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(error)) => Err(error.to_string()),
            Err(panic) => Err(format!(
                "sled could not read its files ({})",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("it panicked")
            )),
        };
        let db = opened.map_err(|error| unopenable(path, &error))?;
        Self::with_db(db)
    }

    /// A store in memory, removed when dropped (tests).
    #[cfg(test)]
    pub fn temporary() -> Self {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .expect("temporary sled");
        Self::with_db(db).expect("temporary sled trees")
    }

    pub fn with_db(db: sled::Db) -> Result<Self, StoreError> {
        let trees = Space::ALL
            .iter()
            .map(|space| db.open_tree(space.name()))
            .collect::<Result<_, _>>()?;
        Ok(Self { db, trees })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space.index()]
    }
}

/// Why sled could not open `path`, with what to do.
fn unopenable(path: &Path, error: &str) -> StoreError {
    if error.contains("lock") {
        return super::mark::in_use(path, &format!(" ({error})"));
    }
    // sled says "corrupted data" without naming the file; a snapshot is the one file that can
    // simply be removed (sled rebuilds it from its log).
    let snapshot = error.contains("snap")
        || (error.contains("corrupt")
            && std::fs::read_dir(path).is_ok_and(|dir| {
                dir.flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with("snap."))
            }));
    let advice = if snapshot {
        "If a snapshot file (snap.* in that directory) is what is damaged, move it out of the \
         directory: sled rebuilds it from its log. Otherwise: "
    } else {
        ""
    };
    super::mark::unopenable_with(path, error, advice)
}

impl Engine for SledEngine {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    fn range<'a>(
        &'a self,
        space: Space,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
    ) -> Entries<'a> {
        let owned = |b: Bound<&[u8]>| b.map(<[u8]>::to_vec);
        let range = self
            .tree(space)
            .range::<Vec<u8>, _>((owned(from), owned(to)));
        let entry = |e: sled::Result<(sled::IVec, sled::IVec)>| {
            e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        };
        if reverse {
            Box::new(range.rev().map(entry))
        } else {
            Box::new(range.map(entry))
        }
    }

    fn commit(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut touched = [false; Space::ALL.len()];
        for (space, _, _) in &writes.changes {
            touched[space.index()] = true;
        }
        // The trees it touches, and where each sits in that list.
        let mut slot = [usize::MAX; Space::ALL.len()];
        let mut trees = Vec::new();
        for space in Space::ALL {
            if touched[space.index()] {
                slot[space.index()] = trees.len();
                trees.push(self.tree(space));
            }
        }
        if trees.is_empty() {
            return Ok(());
        }
        trees
            .as_slice()
            .transaction(|txs: &Vec<TransactionalTree>| {
                for (space, key, value) in &writes.changes {
                    let tree = &txs[slot[space.index()]];
                    match value {
                        Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
                        None => tree.remove(key.as_slice())?,
                    };
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::from(e),
            })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn is_empty(&self, space: Space) -> Result<bool, StoreError> {
        Ok(self.tree(space).is_empty())
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}
