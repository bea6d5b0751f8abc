//! The outbox as both backends show it: a due entry, what claiming one found, and the
//! outbox's clock.

use chrono::Utc;

use crate::observe;
use crate::rules::lifecycle::{Action, ActionOutcome};
use crate::rules::Target;

/// A due outbox entry.
#[derive(Debug, Clone)]
pub struct DueEntry {
    /// The outbox entry: a claim token only the store reads.
    pub(super) key: Vec<u8>,
    pub id: String,
    pub due_ms: u64,
    pub target: Target,
}

/// What claiming one due entry found (either backend).
pub(super) enum Claim {
    Send(Action),
    /// A timer whose awaited status had arrived.
    Cancelled(Action),
    /// Not called: its recipient is opted out (checked while claiming, Postgres).
    Skipped(Action),
    /// No longer waiting (or, with Postgres, taken by another instance).
    Gone,
}

impl Claim {
    /// The action to call for, if any; a cancellation is counted, once the claim is in.
    pub(super) fn into_sendable(self) -> Option<Action> {
        match self {
            Claim::Send(action) => Some(action),
            Claim::Cancelled(action) => {
                observe::action(&action.rule, action.action, ActionOutcome::Cancelled);
                None
            }
            Claim::Skipped(action) => {
                observe::action(&action.rule, action.action, ActionOutcome::Skipped);
                None
            }
            Claim::Gone => None,
        }
    }
}

/// `now` in unix ms, the outbox's clock.
pub fn clock_ms() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}
