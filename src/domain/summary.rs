//! A bounded timeline: past `store.max_events_per_message`, the events in the middle of a
//! message's timeline are summarized instead of kept one by one.
//!
//! The timeline keeps the `cap / 2` earliest and the rest latest distinct events (by the
//! timeline's order); every event between them is folded into a [`Summary`]. Both the kept
//! events and the summary are functions of the set of events (the fold is commutative), so
//! the state stays independent of arrival order. The summary keeps what derived fields and
//! rules need: counts, receive times, the earliest event of each kind and status or URL, and
//! the latest failure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::TimelineEvent;
use super::Status;

/// Representatives kept, at most: the earliest summarized event of each kind and status (or
/// click URL), the earliest first.
pub const MAX_REPRESENTATIVES: usize = 64;

/// The events of a message that are counted but not listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many distinct events are summarized.
    pub events: u64,
    #[serde(with = "super::time_format::option")]
    pub first_received_at: Option<DateTime<Utc>>,
    #[serde(with = "super::time_format::option")]
    pub last_received_at: Option<DateTime<Utc>>,
    /// The earliest summarized event of each kind and status or URL (see
    /// [`MAX_REPRESENTATIVES`]), in timeline order.
    pub representatives: Vec<TimelineEvent>,
    /// The latest summarized failed event.
    pub latest_failure: Option<TimelineEvent>,
}

impl Summary {
    /// Folds one event in. Commutative: any order of the same events gives the same summary.
    pub fn absorb(&mut self, event: TimelineEvent) {
        self.events += 1;
        self.first_received_at = Some(
            self.first_received_at
                .map_or(event.received_at, |t| t.min(event.received_at)),
        );
        self.last_received_at = Some(
            self.last_received_at
                .map_or(event.received_at, |t| t.max(event.received_at)),
        );
        if event.status == Some(Status::Failed)
            && self
                .latest_failure
                .as_ref()
                .is_none_or(|f| f.sort_key() < event.sort_key())
        {
            self.latest_failure = Some(event.clone());
        }
        let subject = |e: &TimelineEvent| (e.kind, e.subject().to_owned());
        match self
            .representatives
            .iter()
            .position(|r| subject(r) == subject(&event))
        {
            Some(i) if self.representatives[i].sort_key() <= event.sort_key() => return,
            Some(i) => {
                self.representatives.remove(i);
            }
            None => {}
        }
        let at = self
            .representatives
            .partition_point(|r| r.sort_key() < event.sort_key());
        self.representatives.insert(at, event);
        self.representatives.truncate(MAX_REPRESENTATIVES);
    }
}

/// Inserts `incoming` into a sorted timeline capped at `cap` events. Returns whether the
/// timeline changed and the event, if any, that no longer fits (for the summary).
pub(super) fn insert_bounded(
    events: &mut Vec<TimelineEvent>,
    incoming: TimelineEvent,
    cap: usize,
) -> (bool, Option<TimelineEvent>) {
    let changed = match events.binary_search_by(|e| e.sort_key().cmp(&incoming.sort_key())) {
        Ok(i) if incoming.preferred_over(&events[i]) => {
            events[i] = incoming;
            true
        }
        Ok(_) => false,
        Err(i) => {
            events.insert(i, incoming);
            true
        }
    };
    let cap = cap.max(2);
    let evicted = (events.len() > cap).then(|| events.remove(cap / 2));
    (changed, evicted)
}
