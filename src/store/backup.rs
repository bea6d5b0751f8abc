//! Backup as JSON lines: `{"message": <state with its timeline>, "actions": [...]}` per
//! message, then `{"rejected": <quarantined event>}` per quarantined event. Import rebuilds
//! everything derived (indexes, counts, dedupe keys, outbox) into an empty store.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::actions::{Action, ActionTx};
use super::filing::{Derived, Filing};
use super::record::Record;
use super::{abort, time_key, RejectedEvent, SledStore, StoreError};
use crate::domain::MessageState;

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
}

/// What an export or import moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub messages: u64,
    pub actions: u64,
    pub rejected: u64,
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

impl SledStore {
    /// Writes every message (state, timeline, actions) and quarantined event as JSON lines.
    /// A record that cannot be read is left out, logged and counted in [`Moved::skipped`];
    /// everything else is still written.
    pub fn export(&self, out: &mut dyn Write) -> Result<Moved, BackupError> {
        let mut moved = Moved::default();
        for entry in self.inner.trees.messages.iter() {
            let (k, v) = entry.map_err(StoreError::from)?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let record = match Record::decode(&id, &v) {
                Ok(record) => record,
                Err(error) if error.is_unreadable() => {
                    super::unreadable("message", &id, &error);
                    moved.skipped += 1;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            // A tombstone (a purged message still inside the dedupe window) is not exported.
            let Some(message) = record.state else {
                continue;
            };
            let mut actions = Vec::with_capacity(record.actions.len());
            for action_id in &record.actions {
                match self.action(action_id) {
                    Ok(Some(action)) => actions.push(action),
                    Ok(None) => {}
                    Err(error) if error.is_unreadable() => {
                        super::unreadable("action", action_id, &error);
                        moved.skipped += 1;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            actions.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let line = Line::Message {
                message: Box::new(message),
                actions,
            };
            moved.write(out, &line)?;
        }
        for entry in self.inner.trees.rejected.iter() {
            let (k, v) = entry.map_err(StoreError::from)?;
            let rejected: RejectedEvent = match serde_json::from_slice(&v) {
                Ok(rejected) => rejected,
                Err(error) => {
                    super::unreadable("rejected", &hex::encode(&k), &error.into());
                    moved.skipped += 1;
                    continue;
                }
            };
            moved.write(out, &Line::Rejected { rejected })?;
        }
        out.flush()?;
        Ok(moved)
    }

    /// Reads every stored record (messages, actions, quarantined events) and reports the
    /// ones that cannot be read, by kind and key.
    pub fn check(&self) -> Result<Checked, StoreError> {
        let t = &self.inner.trees;
        let mut checked = Checked::default();
        for entry in t.messages.iter() {
            let (k, v) = entry?;
            checked.messages += 1;
            let id = String::from_utf8_lossy(&k).into_owned();
            if let Err(error) = Record::decode(&id, &v) {
                checked.unreadable.push(("message", id, error.to_string()));
            }
        }
        for entry in t.actions.iter() {
            let (k, v) = entry?;
            checked.actions += 1;
            if let Err(error) = serde_json::from_slice::<Action>(&v) {
                let id = String::from_utf8_lossy(&k).into_owned();
                checked.unreadable.push(("action", id, error.to_string()));
            }
        }
        for entry in t.rejected.iter() {
            let (k, v) = entry?;
            checked.rejected += 1;
            if let Err(error) = serde_json::from_slice::<RejectedEvent>(&v) {
                checked
                    .unreadable
                    .push(("rejected", hex::encode(&k), error.to_string()));
            }
        }
        Ok(checked)
    }

    /// Restores an export into this store, which must be empty; flushes before returning.
    pub fn import(&self, input: &mut dyn BufRead) -> Result<Moved, BackupError> {
        let t = &self.inner.trees;
        if !t.messages.is_empty() || !t.actions.is_empty() || !t.rejected.is_empty() {
            return Err(BackupError::NotEmpty);
        }
        let mut moved = Moved::default();
        for line in lines(input) {
            let line = line?;
            moved.count(&line);
            match line {
                Line::Message { message, actions } => self.restore(&message, &actions)?,
                Line::Rejected { rejected } => {
                    t.rejected
                        .insert(
                            rejected.id.to_be_bytes(),
                            serde_json::to_vec(&rejected).map_err(StoreError::from)?,
                        )
                        .map_err(StoreError::from)?;
                }
            }
        }
        self.inner.db.flush().map_err(StoreError::from)?;
        Ok(moved)
    }

    /// Files one message and its actions as ingest would have.
    fn restore(&self, message: &MessageState, actions: &[Action]) -> Result<(), StoreError> {
        let t = &self.inner.trees;
        let fields = &self.inner.fields;
        (
            &t.messages,
            &t.idx_callback,
            &t.idx_recipient,
            &t.idx_time,
            &t.aggregates,
            &t.actions,
            &t.action_idx,
            &t.outbox,
        )
            .transaction(
                |(messages, idx_callback, idx_recipient, idx_time, aggregates, a, ai, o)| {
                    let id = &message.message_id;
                    let ids: Vec<String> = actions.iter().map(|a| a.id.to_string()).collect();
                    let record = Record::encode_parts(Some(message), &[], &ids)
                        .map_err(sled::transaction::ConflictableTransactionError::Abort)?;
                    messages.insert(id.as_str().as_bytes(), record)?;
                    idx_time.insert(time_key(message), &[])?;
                    let filing = Filing {
                        callback: idx_callback,
                        recipient: idx_recipient,
                        aggregates,
                    };
                    filing.refile(id, None, Derived::of(Some(message), fields).as_ref())?;
                    let tx = ActionTx {
                        actions: a,
                        index: ai,
                        outbox: o,
                        aggregates,
                        inflight: None,
                    };
                    for action in actions {
                        // A call in flight when the export was taken is simply due again.
                        let mut action = action.clone();
                        action.in_flight = false;
                        tx.create(&action)?;
                    }
                    Ok(())
                },
            )
            .map_err(abort)
    }
}
