//! What both backends' ingest shares: a webhook's answer, a request's items by kind, what a
//! commit reports to the metrics, and the key of an event summarized past its message's cap.
//! The write paths are [`super::embedded`]'s and [`super::postgres`]'s.

use serde::Serialize;

use crate::domain::{Event, EventKind, Incoming, IngestItem};
use crate::observe;
use crate::rules::plan::Planned;
use crate::store::actions::ActionOutcome;
use crate::targets::ActionKind;

/// The body of a webhook's `200`: how the request's events were counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IngestOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    pub ignored: u32,
    pub rejected: u32,
}

/// A request's items by kind, as both backends write them.
pub(super) struct Sorted {
    pub events: Vec<Event>,
    /// Customer messages, attributed where they are written.
    pub replies: Vec<Incoming>,
    /// Quarantined items: reason, raw text.
    pub rejected: Vec<(String, String)>,
    pub ignored: u32,
}

impl Sorted {
    pub(super) fn of(items: Vec<IngestItem>) -> Self {
        let mut sorted = Sorted {
            events: Vec::new(),
            replies: Vec::new(),
            rejected: Vec::new(),
            ignored: 0,
        };
        for item in items {
            match item {
                IngestItem::Event(e) => sorted.events.push(*e),
                IngestItem::Reply(r) => sorted.replies.push(*r),
                IngestItem::Ignored => sorted.ignored += 1,
                IngestItem::Rejected { reason, raw } => sorted.rejected.push((reason, raw)),
            }
        }
        sorted
    }
}

/// What one request's commit did, for the metrics once it is durable (either backend).
#[derive(Default)]
pub(super) struct Report {
    /// Accepted events: kind and status.
    events: Vec<(EventKind, String)>,
    /// Actions queued, skipped or cancelled: rule, action, outcome.
    actions: Vec<(String, ActionKind, ActionOutcome)>,
}

impl Report {
    pub(super) fn accepted(&mut self, event: &Event) {
        let status = event.status.as_ref().map_or("", |s| s.as_str());
        self.events.push((event.kind, status.to_owned()));
    }

    pub(super) fn planned(&mut self, planned: &Planned) {
        let action = planned.action();
        self.actions
            .push((action.rule.to_string(), action.action, planned.outcome()));
    }

    pub(super) fn extend(&mut self, other: Report) {
        self.events.extend(other.events);
        self.actions.extend(other.actions);
    }

    /// Counts it in the metrics, once the commit is durable; whether an action was queued
    /// (the dispatcher is then woken).
    pub(super) fn publish(&self) -> bool {
        for (kind, status) in &self.events {
            metrics::counter!(observe::EVENTS, "kind" => kind.as_str(), "status" => status.clone())
                .increment(1);
        }
        for (rule, action, outcome) in &self.actions {
            observe::action(rule, *action, *outcome);
        }
        self.actions.iter().any(|a| a.2 == ActionOutcome::Queued)
    }
}

/// The `dedupe` key remembering an event summarized past its message's cap.
pub(super) fn overflow_key(fingerprint: u64) -> Vec<u8> {
    let mut k = b"o\0".to_vec();
    k.extend_from_slice(&fingerprint.to_be_bytes());
    k
}
