//! What both backends' ingest shares: a webhook's answer, a request's items by kind, what a
//! commit reports to the metrics, and the key of an event summarized past its message's cap.
//! The write paths are [`super::embedded`]'s and [`super::postgres`]'s.

use serde::Serialize;

use std::collections::{BTreeMap, HashSet};

use crate::domain::optout::{is_keyword, Choice, OptOutSource};
use crate::domain::{
    Event, EventKind, Incoming, IngestItem, MessageId, MessageState, OptOutItem, Preferences,
};
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
    /// Opt-outs and resumes, attributed where they are written.
    pub opt_outs: Vec<OptOutItem>,
    /// Quarantined items: reason, raw text.
    pub rejected: Vec<(String, String)>,
    pub ignored: u32,
}

impl Sorted {
    /// Sorts the items; a reply whose text is one of `opt_out_keywords` also says stop.
    pub(super) fn of(items: Vec<IngestItem>, opt_out_keywords: &[String]) -> Self {
        let mut sorted = Sorted {
            events: Vec::new(),
            replies: Vec::new(),
            opt_outs: Vec::new(),
            rejected: Vec::new(),
            ignored: 0,
        };
        for item in items {
            match item {
                IngestItem::Event(e) => sorted.events.push(*e),
                IngestItem::Reply(r) => {
                    if is_keyword(r.reply.text.as_deref(), opt_out_keywords) {
                        sorted.opt_outs.push(r.keyword_opt_out());
                    }
                    sorted.replies.push(*r)
                }
                IngestItem::OptOut(o) => sorted.opt_outs.push(*o),
                IngestItem::Ignored => sorted.ignored += 1,
                IngestItem::Rejected { reason, raw } => sorted.rejected.push((reason, raw)),
            }
        }
        sorted
    }
}

/// The recipients' choices one request (or part) adds (contract section 8.2), by recipient
/// key: those of its opt-out items that name a recipient, and those the `opt_out` events of
/// the messages it changed say (a BIK opt-out names only its message, whose recipient may be
/// known only once its statuses arrive). Adding a choice twice changes nothing, so both
/// backends simply add all of them to what is stored.
#[derive(Default)]
pub(super) struct Choices {
    /// Each choice with the opt-out item it came from, if one (to count that item).
    by_key: BTreeMap<String, Vec<(Choice, Option<usize>)>>,
}

impl Choices {
    /// Opt-out item number `n`, attributed to `to`.
    pub(super) fn item(&mut self, n: usize, item: &OptOutItem, to: Option<&MessageId>) {
        if let Some(key) = item.recipient_key() {
            let choice = item.choice(to);
            self.by_key.entry(key).or_default().push((choice, Some(n)));
        }
    }

    /// A message the request changed.
    pub(super) fn message(&mut self, state: &MessageState) {
        if let Some((key, choices)) = crate::domain::optout::choices_on(state) {
            let list = self.by_key.entry(key).or_default();
            list.extend(choices.into_iter().map(|c| (c, None)));
        }
    }

    /// The recipient keys to load, in order (Postgres locks them in this order).
    pub(super) fn keys(&self) -> Vec<&str> {
        self.by_key.keys().map(String::as_str).collect()
    }

    /// Adds every choice to its recipient's stored preferences (`stored` loads them); returns
    /// the preferences that changed, to write, and the items whose choice changed something.
    pub(super) fn apply<E>(
        self,
        mut stored: impl FnMut(&str) -> Result<Option<Preferences>, E>,
    ) -> Result<(Vec<Preferences>, HashSet<usize>), E> {
        let (mut changed, mut counted) = (Vec::new(), HashSet::new());
        for (key, choices) in self.by_key {
            let mut prefs = stored(&key)?.unwrap_or_else(|| Preferences::new(key));
            let mut any = false;
            for (choice, item) in choices {
                if prefs.add(choice) {
                    any = true;
                    counted.extend(item);
                }
            }
            if any {
                changed.push(prefs);
            }
        }
        Ok((changed, counted))
    }
}

/// Whether an event counts in a webhook's answer: all do but the `opt_out` event of a
/// keyword reply, which is counted as its reply.
pub(super) fn counted(event: &Event) -> bool {
    event
        .opt_out
        .as_ref()
        .is_none_or(|o| o.source != OptOutSource::Keyword)
}

/// How the opt-out items that landed on no message count in a request's answer (those that
/// did count as their event): accepted when their choice was new (`counted`), a duplicate
/// when it was not, ignored when they named no recipient either. Keyword opt-outs are not
/// counted: their reply is.
pub(super) fn count_unplaced(
    items: &[OptOutItem],
    placed: &[bool],
    counted: &HashSet<usize>,
    outcome: &mut IngestOutcome,
    report: &mut Report,
) {
    for (n, (item, placed)) in items.iter().zip(placed).enumerate() {
        if *placed || item.source == OptOutSource::Keyword {
            continue;
        }
        if counted.contains(&n) {
            outcome.accepted += 1;
            report.events.push((EventKind::OptOut, String::new()));
        } else if item.recipient_key().is_some() {
            outcome.duplicates += 1;
        } else {
            outcome.ignored += 1;
        }
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

    /// A forward's delivery queued.
    pub(super) fn queued(&mut self, delivery: &crate::store::Action) {
        self.actions.push((
            delivery.rule.to_string(),
            delivery.action,
            ActionOutcome::Queued,
        ));
    }

    pub(super) fn planned(&mut self, planned: &Planned) {
        let action = planned.action();
        self.actions
            .push((action.rule.to_string(), action.action, planned.outcome()));
    }

    /// Whether it queued an action.
    pub(super) fn queues(&self) -> bool {
        self.actions.iter().any(|a| a.2 == ActionOutcome::Queued)
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
