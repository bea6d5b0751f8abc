//! The life of a follow-up action, as pure functions: created by a rule (queued or skipped),
//! claimed for an attempt, then delivered, retried on the schedule, dead, cancelled (a timer
//! whose awaited status arrived), requeued by hand, or put back after a crash. The store only
//! persists what these return; every transition is unit-tested here without one.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{reached, ActionKind, Outbound, Target};
use crate::domain::{MessageState, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    /// Waiting for its first attempt (or, for a timer, its deadline).
    Pending,
    /// Failed at least once; waiting for the next attempt.
    Retrying,
    Delivered,
    /// Gave up: a final error, or the retry schedule ran out. Can be retried by hand.
    Dead,
    /// Never sent: a field its templates name is missing, or no valid request could be made.
    Skipped,
    /// A `missing_status` timer whose awaited status arrived in time.
    Cancelled,
}

impl ActionState {
    pub const ALL: [ActionState; 6] = [
        Self::Pending,
        Self::Retrying,
        Self::Delivered,
        Self::Dead,
        Self::Skipped,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Waiting for an attempt: pending or retrying.
    pub fn waiting(self) -> bool {
        matches!(self, Self::Pending | Self::Retrying)
    }
}

impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action's id: `act_` and 24 hex digits, derived from its message and rule (so a rule
/// fires at most once per message), and the `Idempotency-Key` of every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(String);

/// A rule's `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleName(String);

macro_rules! text_id {
    ($($t:ident),*) => {$(
        impl $t {
            pub fn new(text: impl Into<String>) -> Self {
                Self(text.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        /// Hashes and compares as its text, so maps keyed by it can be read with a `&str`.
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
text_id!(ActionId, RuleName);

/// One follow-up call and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub id: ActionId,
    pub message_id: String,
    pub rule: RuleName,
    /// What it does (`bik.initiate_flow`, `http.post`, ...); stored by name.
    pub action: ActionKind,
    pub state: ActionState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    pub last_response: Option<String>,
    #[serde(with = "crate::domain::time_format::option")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(with = "crate::domain::time_format")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::domain::time_format::option")]
    pub completed_at: Option<DateTime<Utc>>,
    /// The request; `None` for skipped actions.
    pub request: Option<Outbound>,
    /// A timer is cancelled when the message reaches any of these.
    #[serde(default)]
    pub until: Vec<Status>,
    /// The indexed callback values the action counts under in the aggregates.
    #[serde(default)]
    pub facets: Vec<(String, String)>,
    /// `attempts` when the retry schedule last started over (a manual retry).
    #[serde(default)]
    pub schedule_from: u32,
    /// The stats' day bucket: the day its message was first seen.
    #[serde(default)]
    pub bucket: u32,
    #[serde(default)]
    pub in_flight: bool,
    /// Skipped, not sent, if its message's recipient is opted out when it is due (the rule's
    /// `skip_opted_out`; actions stored before opt-outs were kept read as `true`, the
    /// default).
    #[serde(default = "yes")]
    pub skip_opted_out: bool,
    /// A forward's delivery queued directly in the embedded store's outbox (no action record
    /// until an attempt fails): that outbox entry's key, while it is in flight. Never stored.
    #[serde(skip)]
    pub direct: Option<Vec<u8>>,
}

fn yes() -> bool {
    true
}

impl Action {
    /// Where its request goes; `None` for one without a request (skipped, never sent).
    pub fn target(&self) -> Option<Target> {
        self.request.as_ref().map(|r| r.target)
    }
}

/// What happened to an action, as the metrics (`flowhook_actions_total{outcome}`) and logs
/// count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    Queued,
    Skipped,
    Cancelled,
    Delivered,
    Retried,
    Dead,
    Requeued,
}

impl ActionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::Requeued => "requeued",
        }
    }

    /// The outcome of a recorded attempt, by the state it left the action in.
    pub fn of_attempt(state: ActionState) -> Self {
        match state {
            ActionState::Delivered => Self::Delivered,
            ActionState::Retrying => Self::Retried,
            ActionState::Skipped => Self::Skipped,
            _ => Self::Dead,
        }
    }
}

/// How one attempt went, as the dispatcher saw it.
#[derive(Debug, Clone)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    /// Worth another try; `retry_after` when the answer said when.
    Retry {
        error: String,
        status: Option<u16>,
        body: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Final.
    Failed {
        error: String,
        status: Option<u16>,
        body: Option<String>,
    },
    /// Not made: its recipient is opted out (the reason says so).
    Skipped {
        reason: String,
    },
}

/// When the next attempt of a failed action should be, if any.
pub trait RetryPolicy {
    /// `failures` counts the failed attempts since the schedule (re)started, from 1.
    /// `at_least` is what the target asked for (`Retry-After`): it can lengthen the delay,
    /// never shorten it.
    fn delay(&self, action_id: &str, failures: u32, at_least: Option<Duration>)
        -> Option<Duration>;
}

/// Which claim an outcome belongs to: the action and the attempt it was claimed for. An
/// outcome is recorded once per claim, so recording it again (after a flush failed and the
/// first write may or may not have stayed) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    id: ActionId,
    attempt: u32,
    /// See [`Action::direct`].
    direct: Option<Vec<u8>>,
}

impl ClaimToken {
    pub fn action_id(&self) -> &ActionId {
        &self.id
    }

    /// The outbox key of a delivery claimed directly (see [`Action::direct`]).
    pub fn direct(&self) -> Option<&[u8]> {
        self.direct.as_deref()
    }
}

impl Action {
    /// Taken for an attempt: in flight, one more attempt counted.
    pub fn claimed(&self) -> Action {
        let mut new = self.clone();
        new.in_flight = true;
        new.attempts += 1;
        new
    }

    /// The token of this claim (of an action as [`Action::claimed`] returned it).
    pub fn claim_token(&self) -> ClaimToken {
        ClaimToken {
            id: self.id.clone(),
            attempt: self.attempts,
            direct: self.direct.clone(),
        }
    }

    /// Whether an outcome of `claim` is still to be recorded: the action is in flight for
    /// that very attempt.
    pub fn awaits(&self, claim: &ClaimToken) -> bool {
        self.in_flight && self.id == claim.id && self.attempts == claim.attempt
    }

    /// What an attempt made of a claimed action: delivered, retrying when the schedule has a
    /// next step, or dead.
    pub fn after_attempt(
        &self,
        attempt: &Attempt,
        policy: &(dyn RetryPolicy + Sync),
        now: DateTime<Utc>,
    ) -> Action {
        let mut new = self.clone();
        new.in_flight = false;
        match attempt {
            Attempt::Delivered { status } => {
                new.state = ActionState::Delivered;
                new.last_status = Some(*status);
                new.last_error = None;
                new.last_response = None;
                new.next_attempt_at = None;
                new.completed_at = Some(now);
            }
            Attempt::Retry {
                error,
                status,
                body,
                retry_after,
            } => {
                new.last_error = Some(error.clone());
                new.last_status = *status;
                new.last_response = body.clone();
                let failures = new.attempts.saturating_sub(new.schedule_from);
                match policy.delay(&self.id, failures, *retry_after) {
                    Some(delay) => {
                        new.state = ActionState::Retrying;
                        new.next_attempt_at = Some(now + delay);
                    }
                    None => {
                        new.state = ActionState::Dead;
                        new.last_error =
                            Some(format!("gave up after {} attempts: {error}", new.attempts));
                        new.next_attempt_at = None;
                        new.completed_at = Some(now);
                    }
                }
            }
            Attempt::Skipped { reason } => {
                new.state = ActionState::Skipped;
                new.last_error = Some(reason.clone());
                new.next_attempt_at = None;
                new.completed_at = Some(now);
            }
            Attempt::Failed {
                error,
                status,
                body,
            } => {
                new.state = ActionState::Dead;
                new.last_error = Some(error.clone());
                new.last_status = *status;
                new.last_response = body.clone();
                new.next_attempt_at = None;
                new.completed_at = Some(now);
            }
        }
        new
    }

    /// A timer that will not fire: its awaited status arrived.
    pub fn cancelled(&self, now: DateTime<Utc>, reason: String) -> Action {
        let mut new = self.clone();
        new.state = ActionState::Cancelled;
        new.next_attempt_at = None;
        new.completed_at = Some(now);
        new.last_error = Some(reason);
        new
    }

    /// A timer found due whose message has meanwhile reached a status it awaits: the action
    /// cancelled instead of fired. `None` when it awaits nothing, or nothing it awaits came.
    pub fn overtaken(&self, state: Option<&MessageState>, now: DateTime<Utc>) -> Option<Action> {
        let status = state.and_then(|s| self.until.iter().find(|u| reached(s, u).is_some()))?;
        Some(self.cancelled(now, format!("cancelled: message reached {status}")))
    }

    /// Whether a timer can still be cancelled: it has not fired and is not firing.
    pub fn cancellable(&self) -> bool {
        self.state == ActionState::Pending && self.attempts == 0 && !self.in_flight
    }

    /// Whether a retry by hand may requeue it: dead or retrying, and not in flight.
    pub fn retryable(&self) -> bool {
        !self.in_flight && matches!(self.state, ActionState::Dead | ActionState::Retrying)
    }

    /// Requeued by hand: due now, with the retry schedule starting over.
    pub fn requeued(&self, now: DateTime<Utc>) -> Action {
        let mut new = self.clone();
        new.state = ActionState::Pending;
        new.schedule_from = self.attempts;
        new.next_attempt_at = Some(now);
        new.completed_at = None;
        new
    }

    /// Put back after a crash cut its call off: due now, to be called again with the same
    /// `Idempotency-Key`.
    pub fn recovered(&self, now: DateTime<Utc>) -> Action {
        let mut new = self.clone();
        new.in_flight = false;
        new.next_attempt_at = Some(now);
        new
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    struct Steps(Vec<i64>);

    impl RetryPolicy for Steps {
        fn delay(&self, _: &str, failures: u32, at_least: Option<Duration>) -> Option<Duration> {
            let step = Duration::seconds(*self.0.get(failures.checked_sub(1)? as usize)?);
            Some(at_least.map_or(step, |a| a.max(step)))
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_255_200, 0).unwrap()
    }

    fn pending() -> Action {
        Action {
            id: ActionId::new("act_1"),
            message_id: "wamid.A==".into(),
            rule: RuleName::new("r"),
            action: ActionKind::parse("http.post").unwrap(),
            state: ActionState::Pending,
            attempts: 0,
            last_error: None,
            last_status: None,
            last_response: None,
            next_attempt_at: Some(now()),
            created_at: now(),
            completed_at: None,
            request: None,
            until: Vec::new(),
            facets: Vec::new(),
            schedule_from: 0,
            bucket: 0,
            in_flight: false,
            skip_opted_out: true,
            direct: None,
        }
    }

    fn retry(retry_after: Option<i64>) -> Attempt {
        Attempt::Retry {
            error: "503".into(),
            status: Some(503),
            body: Some("busy".into()),
            retry_after: retry_after.map(Duration::seconds),
        }
    }

    #[test]
    fn a_claim_marks_it_in_flight_and_counts_the_attempt() {
        let claimed = pending().claimed();
        assert!(claimed.in_flight);
        assert_eq!(claimed.attempts, 1);
        assert_eq!(claimed.state, ActionState::Pending);
    }

    #[test]
    fn a_delivery_completes_it_and_clears_the_last_error() {
        let mut claimed = pending().claimed();
        claimed.last_error = Some("old".into());
        let done =
            claimed.after_attempt(&Attempt::Delivered { status: 202 }, &Steps(vec![5]), now());
        assert_eq!(done.state, ActionState::Delivered);
        assert_eq!((done.last_status, done.last_error), (Some(202), None));
        assert_eq!(done.completed_at, Some(now()));
        assert!(!done.in_flight && done.next_attempt_at.is_none());
    }

    #[test]
    fn a_retryable_failure_follows_the_schedule_then_dies() {
        let policy = Steps(vec![5, 30]);
        let first = pending()
            .claimed()
            .after_attempt(&retry(None), &policy, now());
        assert_eq!(first.state, ActionState::Retrying);
        assert_eq!(first.next_attempt_at, Some(now() + Duration::seconds(5)));
        assert_eq!(first.last_response.as_deref(), Some("busy"));
        let second = first.claimed().after_attempt(&retry(None), &policy, now());
        assert_eq!(second.next_attempt_at, Some(now() + Duration::seconds(30)));
        let third = second.claimed().after_attempt(&retry(None), &policy, now());
        assert_eq!(third.state, ActionState::Dead);
        assert!(third
            .last_error
            .unwrap()
            .starts_with("gave up after 3 attempts"));
    }

    #[test]
    fn retry_after_can_only_lengthen_the_next_attempt() {
        let policy = Steps(vec![5]);
        let later = pending()
            .claimed()
            .after_attempt(&retry(Some(60)), &policy, now());
        assert_eq!(later.next_attempt_at, Some(now() + Duration::seconds(60)));
        let now_please = pending()
            .claimed()
            .after_attempt(&retry(Some(0)), &policy, now());
        assert_eq!(
            now_please.next_attempt_at,
            Some(now() + Duration::seconds(5))
        );
    }

    #[test]
    fn an_outcome_belongs_to_one_claim() {
        let claimed = pending().claimed();
        let claim = claimed.claim_token();
        assert!(claimed.awaits(&claim));
        let after = claimed.after_attempt(&retry(None), &Steps(vec![5]), now());
        assert!(!after.awaits(&claim), "recorded: not in flight any more");
        let again = after.claimed();
        assert!(!again.awaits(&claim), "a later claim is another attempt");
        assert!(again.awaits(&again.claim_token()));
    }

    #[test]
    fn a_final_failure_makes_it_dead_with_the_answer_kept() {
        let failed = Attempt::Failed {
            error: "400".into(),
            status: Some(400),
            body: Some("bad".into()),
        };
        let dead = pending()
            .claimed()
            .after_attempt(&failed, &Steps(vec![5]), now());
        assert_eq!(dead.state, ActionState::Dead);
        assert_eq!(
            (dead.last_status, dead.last_response.as_deref()),
            (Some(400), Some("bad"))
        );
    }

    #[test]
    fn only_a_timer_that_has_not_fired_can_be_cancelled() {
        assert!(pending().cancellable());
        assert!(!pending().claimed().cancellable());
        let cancelled = pending().cancelled(now(), "read arrived".into());
        assert_eq!(cancelled.state, ActionState::Cancelled);
        assert!(cancelled.next_attempt_at.is_none());
        assert!(!cancelled.cancellable());
    }

    #[test]
    fn a_requeue_restarts_the_schedule_and_is_allowed_only_when_dead_or_retrying() {
        let policy = Steps(vec![5]);
        let dead = pending()
            .claimed()
            .after_attempt(&retry(None), &policy, now())
            .claimed()
            .after_attempt(&retry(None), &policy, now());
        assert!(dead.retryable());
        assert!(!pending().retryable());
        assert!(!dead.claimed().retryable(), "not while in flight");
        let again = dead.requeued(now());
        assert_eq!(again.state, ActionState::Pending);
        assert_eq!(again.schedule_from, 2);
        let retried = again.claimed().after_attempt(&retry(None), &policy, now());
        assert_eq!(
            retried.state,
            ActionState::Retrying,
            "the schedule starts over"
        );
    }

    #[test]
    fn recovery_after_a_crash_makes_it_due_now_again() {
        let in_flight = pending().claimed();
        let back = in_flight.recovered(now() + Duration::seconds(9));
        assert!(!back.in_flight);
        assert_eq!(back.attempts, 1, "the cut-off attempt still counts");
        assert_eq!(back.next_attempt_at, Some(now() + Duration::seconds(9)));
    }
}
