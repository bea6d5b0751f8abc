//! What a message is filed under besides its record: the secondary indexes it is found by
//! (callback values, recipient) and the aggregates it counts in. Each backend moves its
//! entries as these change (the embedded one in [`super::embedded`]'s `filing`).

use super::index_value;
use crate::domain::recipient::lookup_key;
use crate::domain::MessageState;

/// What a message contributes to the secondary indexes and aggregates.
#[derive(PartialEq)]
pub(super) struct Derived {
    /// Recipient keys: the recipient's [`lookup_key`] and the business-scoped user id.
    pub recipients: Vec<String>,
    /// Indexed callback values (`store.index_callback_fields`).
    pub callback: Vec<(String, String)>,
    /// Counted callback values (`store.stats_callback_fields`).
    pub stats: Vec<(String, String)>,
    /// The status it counts under in funnels: a replied message counts as read.
    status: Option<String>,
    replied: bool,
    /// An opt-out answered it.
    opted_out: bool,
    clicked: bool,
    /// The day bucket of the stats (when the message was first seen).
    pub day: u32,
    failure: Option<String>,
    /// For a billable message, its metric: `billable:<category>\0<region>`.
    billable: Option<String>,
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
            status: funnel_status(state),
            replied: state.replied_at.is_some(),
            opted_out: state.opted_out_at.is_some(),
            clicked: !state.clicks.is_empty(),
            day: crate::store::stats::day_of(state.first_seen_at),
            failure: crate::store::stats::failure_metric(state),
            billable: crate::store::stats::billable_metric(state),
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
        if self.replied {
            metrics.push("replied".into());
        }
        if self.opted_out {
            metrics.push("opted_out".into());
        }
        metrics.extend(self.failure.clone());
        metrics.extend(self.billable.clone());
        metrics
    }
}

/// The status a message counts under in funnels: its own, except that a reply means it was
/// read (contract section 8.1), so a replied message not yet read (or played, or failed)
/// counts as read.
fn funnel_status(state: &MessageState) -> Option<String> {
    use crate::domain::Status;
    let read_or_past = matches!(
        state.status,
        Some(Status::Read | Status::Played | Status::Failed)
    );
    if state.replied_at.is_some() && !read_or_past {
        return Some(Status::Read.as_str().to_owned());
    }
    state.status.as_ref().map(|s| s.as_str().to_owned())
}
