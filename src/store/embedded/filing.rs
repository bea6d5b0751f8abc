//! Filing a message besides its record: moves its secondary index entries and aggregate
//! counts as its [`Derived`] values change.

use super::engine::Space;
use super::tx::{Tx, TxTree};
use crate::domain::MessageId;
use crate::store::filing::Derived;
use crate::store::{key, StoreError};

/// The trees a message is filed in besides `messages`.
pub(super) struct Filing<'t, 'e> {
    pub callback: TxTree<'t, 'e>,
    pub recipient: TxTree<'t, 'e>,
    pub aggregates: TxTree<'t, 'e>,
}

impl<'t, 'e> Filing<'t, 'e> {
    pub(super) fn of(tx: &'t Tx<'e>) -> Self {
        Self {
            callback: tx.tree(Space::IdxCallback),
            recipient: tx.tree(Space::IdxRecipient),
            aggregates: tx.tree(Space::Aggregates),
        }
    }

    /// Moves a message's index entries and aggregate counts from its old to its new state.
    pub(super) fn refile(
        &self,
        id: &MessageId,
        old: Option<&Derived>,
        new: Option<&Derived>,
    ) -> Result<(), StoreError> {
        if old == new {
            return Ok(());
        }
        if let Some(old) = old {
            self.file(id, old, -1)?;
        }
        if let Some(new) = new {
            self.file(id, new, 1)?;
        }
        Ok(())
    }

    /// Files (`delta = 1`) or unfiles (`delta = -1`) one state.
    fn file(&self, id: &MessageId, d: &Derived, delta: i64) -> Result<(), StoreError> {
        let id = id.as_str().as_bytes();
        let mut entries: Vec<(TxTree<'_, '_>, Vec<u8>)> = Vec::new();
        for r in &d.recipients {
            entries.push((self.recipient, key(&[r.as_bytes(), id])));
        }
        for (field, value) in &d.callback {
            entries.push((
                self.callback,
                key(&[field.as_bytes(), value.as_bytes(), id]),
            ));
        }
        for (field, value, day, metric) in d.counters() {
            let k = crate::store::stats::stats_key(field, value, day, &metric);
            super::stats::add(self.aggregates, k, delta)?;
        }
        for (tree, k) in entries {
            if delta > 0 {
                tree.insert(k, [])?;
            } else {
                tree.remove(k)?;
            }
        }
        Ok(())
    }
}
