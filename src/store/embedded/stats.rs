//! The embedded store's counters: moved in the same write set as what they count, and
//! summed per value for `/v1/stats` (see [`crate::store::stats`] for the keys and metrics).

use std::collections::BTreeMap;

use super::engine::{prefixed, Space};
use super::tx::TxTree;
use super::EmbeddedStore;
use crate::store::stats::{group, Group};
use crate::store::StoreError;

impl EmbeddedStore {
    /// Counts per value of an indexed callback field, for messages first seen on days
    /// `from..=to` (inclusive; `None` is open). Reads only counters.
    pub fn stats(
        &self,
        field: &str,
        from: Option<u32>,
        to: Option<u32>,
    ) -> Result<Vec<Group>, StoreError> {
        let mut prefix = field.as_bytes().to_vec();
        prefix.push(0);
        let mut sums: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for entry in prefixed(self.engine(), Space::Aggregates, &prefix) {
            let (k, v) = entry?;
            let rest = &k[prefix.len()..];
            let Some(split) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let (value, rest) = (&rest[..split], &rest[split + 1..]);
            let Some((day, metric)) = rest.split_first_chunk::<4>() else {
                continue;
            };
            let day = u32::from_be_bytes(*day);
            if from.is_some_and(|f| day < f) || to.is_some_and(|t| day > t) {
                continue;
            }
            let n = super::read_i64(Some(&v));
            *sums
                .entry(String::from_utf8_lossy(value).into_owned())
                .or_default()
                .entry(String::from_utf8_lossy(metric).into_owned())
                .or_default() += n;
        }
        Ok(sums
            .into_iter()
            .map(|(value, metrics)| group(value, &metrics))
            .filter(|g| g.messages != 0 || g.actions_delivered != 0 || g.actions_dead != 0)
            .collect())
    }
}

/// Adds `delta` to a counter; a counter that reaches 0 is removed.
pub(super) fn add(tree: TxTree<'_, '_>, k: Vec<u8>, delta: i64) -> Result<(), StoreError> {
    let current = super::read_i64(tree.get(&k)?.as_deref());
    match current + delta {
        0 => tree.remove(k)?,
        n => tree.insert(k, n.to_be_bytes())?,
    };
    Ok(())
}

#[cfg(test)]
impl EmbeddedStore {
    /// One metric of one value, summed over every day.
    pub(crate) fn stat_total(&self, field: &str, value: &str, metric: &str) -> i64 {
        let mut prefix = crate::store::stats::stats_key(field, value, 0, "");
        prefix.truncate(prefix.len() - 4);
        prefixed(self.engine(), Space::Aggregates, &prefix)
            .map(|e| e.unwrap())
            .filter(|(k, _)| &k[prefix.len() + 4..] == metric.as_bytes())
            .map(|(_, v)| super::read_i64(Some(&v)))
            .sum()
    }
}
