//! Filing a message besides its record: the secondary indexes it is found by (callback
//! values, recipient) and the aggregates it counts in, moved as its derived values change.

use sled::transaction::TransactionalTree;

use super::{index_value, key, TxResult};
use crate::domain::recipient::lookup_key;
use crate::domain::{MessageId, MessageState};

/// What a message contributes to the secondary indexes and aggregates.
#[derive(PartialEq)]
pub(super) struct Derived {
    /// Recipient keys: the recipient's [`lookup_key`] and the business-scoped user id.
    pub recipients: Vec<String>,
    /// Indexed callback values (`store.index_callback_fields`).
    pub callback: Vec<(String, String)>,
    /// Counted callback values (`store.stats_callback_fields`).
    pub stats: Vec<(String, String)>,
    status: Option<String>,
    clicked: bool,
    /// The day bucket of the stats (when the message was first seen).
    pub day: u32,
    failure: Option<String>,
}

impl Derived {
    pub(super) fn of(state: Option<&MessageState>, fields: &super::Fields) -> Option<Self> {
        let state = state?;
        // The state's `recipient_e164` is `lookup_key`'s answer already, when there is one.
        let values = |names: &[String]| -> Vec<(String, String)> {
            names
                .iter()
                .filter_map(|f| Some((f.clone(), index_value(state.callback_field(f)?)?)))
                .collect()
        };
        let mut recipients: Vec<String> = state
            .recipient_e164
            .clone()
            .or_else(|| state.recipient.as_deref().map(lookup_key))
            .into_iter()
            .chain(state.recipient_user_id.clone())
            .filter(|r| !r.is_empty() && !r.contains('\0') && r.len() <= 256)
            .collect();
        recipients.dedup();
        Some(Self {
            recipients,
            callback: values(&fields.index),
            stats: values(&fields.stats),
            status: state.status.as_ref().map(|s| s.as_str().to_owned()),
            clicked: !state.clicks.is_empty(),
            day: super::stats::day_of(state.first_seen_at),
            failure: super::stats::failure_metric(state),
        })
    }

    /// The counters it counts in: each counted callback value, on its day, per metric.
    pub(super) fn counters(&self) -> Vec<(&str, &str, u32, String)> {
        let metrics = self.metrics();
        self.stats
            .iter()
            .flat_map(|(f, v)| {
                metrics
                    .iter()
                    .map(move |m| (f.as_str(), v.as_str(), self.day, m.clone()))
            })
            .collect()
    }

    fn metrics(&self) -> Vec<String> {
        let mut metrics = vec!["messages".to_owned()];
        metrics.extend(self.status.as_ref().map(|s| format!("status:{s}")));
        if self.clicked {
            metrics.push("clicked".into());
        }
        metrics.extend(self.failure.clone());
        metrics
    }
}

/// The trees a message is filed in besides `messages`.
pub(super) struct Filing<'a> {
    pub callback: &'a TransactionalTree,
    pub recipient: &'a TransactionalTree,
    pub aggregates: &'a TransactionalTree,
}

impl Filing<'_> {
    /// Moves a message's index entries and aggregate counts from its old to its new state.
    pub(super) fn refile(
        &self,
        id: &MessageId,
        old: Option<&Derived>,
        new: Option<&Derived>,
    ) -> TxResult<()> {
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
    fn file(&self, id: &MessageId, d: &Derived, delta: i64) -> TxResult<()> {
        let id = id.as_str().as_bytes();
        let mut entries: Vec<(&TransactionalTree, Vec<u8>)> = Vec::new();
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
            let k = super::stats::stats_key(field, value, day, &metric);
            super::stats::add(self.aggregates, k, delta)?;
        }
        for (tree, k) in entries {
            if delta > 0 {
                tree.insert(k, &[])?;
            } else {
                tree.remove(k)?;
            }
        }
        Ok(())
    }
}
