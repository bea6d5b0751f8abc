//! Backup as JSON lines: `{"message": <state with its timeline>, "actions": [...]}` per
//! message, then `{"rejected": <quarantined event>}` per quarantined event, then
//! `{"recipient": <preferences>}` per recipient with an opt-out or resume. Import rebuilds
//! everything derived (indexes, counts, dedupe keys, outbox) into an empty store.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::actions::Action;
use super::{RejectedEvent, StoreError};
use crate::domain::{MessageState, Preferences};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Line {
    Message {
        message: Box<MessageState>,
        actions: Vec<Action>,
    },
    Rejected {
        rejected: RejectedEvent,
    },
    Recipient {
        recipient: Preferences,
    },
}

/// What an export or import moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub messages: u64,
    pub actions: u64,
    pub rejected: u64,
    /// Recipients' preferences (opt-outs).
    pub recipients: u64,
    /// Records an export could not read and left out (each logged with its key).
    pub skipped: u64,
}

impl Moved {
    /// Counts a line moved.
    pub(super) fn count(&mut self, line: &Line) {
        match line {
            Line::Message { actions, .. } => {
                self.messages += 1;
                self.actions += actions.len() as u64;
            }
            Line::Rejected { .. } => self.rejected += 1,
            Line::Recipient { .. } => self.recipients += 1,
        }
    }

    /// Writes a line of an export, and counts it.
    pub(super) fn write(&mut self, out: &mut dyn Write, line: &Line) -> Result<(), BackupError> {
        serde_json::to_writer(&mut *out, line).map_err(StoreError::from)?;
        out.write_all(b"\n")?;
        self.count(line);
        Ok(())
    }
}

/// The lines of an export, parsed (blank lines skipped); an error names its line.
pub(super) fn lines(
    input: &mut dyn BufRead,
) -> impl Iterator<Item = Result<Line, BackupError>> + '_ {
    input
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.as_ref().is_ok_and(|l| l.trim().is_empty()))
        .map(|(i, line)| {
            serde_json::from_str(&line?).map_err(|e| BackupError::BadLine {
                line: i + 1,
                error: e.to_string(),
            })
        })
}

/// What `flowhook check-store` found.
#[derive(Debug, Default)]
pub struct Checked {
    pub messages: u64,
    pub actions: u64,
    pub rejected: u64,
    pub recipients: u64,
    /// Records that cannot be read: kind, key, why.
    pub unreadable: Vec<(&'static str, String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not write: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {error}")]
    BadLine { line: usize, error: String },
    #[error("the store already holds data; import only into an empty store")]
    NotEmpty,
}
