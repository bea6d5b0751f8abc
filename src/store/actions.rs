//! Follow-up actions as both backends file them: where an action waits in the outbox, what it
//! counts in, and the filters for listing and requeueing them. Every transition is decided in
//! [`crate::rules::lifecycle`]; each backend persists it atomically.

pub use crate::rules::lifecycle::{
    Action, ActionOutcome, ActionState, Attempt, ClaimToken, RetryPolicy,
};
use crate::rules::Target;

impl Action {
    /// Where and when its next attempt goes while it waits for one (not in flight): what
    /// both backends file in their outbox.
    pub(super) fn waits_for(&self) -> Option<(Target, i64)> {
        if !self.state.waiting() || self.in_flight {
            return None;
        }
        Some((self.target()?, self.next_attempt_at?.timestamp_millis()))
    }

    /// The counters it counts in, while in its state: `action:<state>` per counted callback
    /// value and day (its facets, its bucket).
    pub(super) fn counters(&self) -> impl Iterator<Item = (&str, &str, u32, String)> + '_ {
        let metric = format!("action:{}", self.state);
        self.facets
            .iter()
            .map(move |(f, v)| (f.as_str(), v.as_str(), self.bucket, metric.clone()))
    }
}

/// Filters for listing actions.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub state: Option<ActionState>,
    pub rule: Option<String>,
}

impl ActionFilter {
    /// Whether a bulk retry of this filter requeues `action`: in the filter's state (a bulk
    /// retry always names one) and not in flight.
    pub(super) fn requeues(&self, action: &Action) -> bool {
        !action.in_flight && Some(action.state) == self.state
    }
}

/// What a single retry request found.
#[derive(Debug)]
pub enum RetryOutcome {
    Requeued(Action),
    NotRetryable(Action),
    NotFound,
}
