//! The embedded store's export, import and check-store (see [`crate::store::backup`] for the
//! format).

use std::io::{BufRead, Write};

use super::actions::ActionTx;
use super::engine::{all, Space};
use super::filing::Filing;
use super::{time_key, EmbeddedStore};
use crate::domain::{MessageState, Preferences};
use crate::store::backup::{lines, BackupError, Checked, Line, Moved};
use crate::store::filing::Derived;
use crate::store::record::Record;
use crate::store::{Action, RejectedEvent, StoreError};

impl EmbeddedStore {
    /// Writes every message (state, timeline, actions) and quarantined event as JSON lines.
    /// A record that cannot be read is left out, logged and counted in [`Moved::skipped`];
    /// everything else is still written.
    pub fn export(&self, out: &mut dyn Write) -> Result<Moved, BackupError> {
        let mut moved = Moved::default();
        for entry in all(self.engine(), Space::Messages) {
            let (k, v) = entry?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let record = match Record::decode(&id, &v) {
                Ok(record) => record,
                Err(error) if error.is_unreadable() => {
                    crate::store::unreadable("message", &id, &error);
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
                        crate::store::unreadable("action", action_id, &error);
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
        for entry in all(self.engine(), Space::Rejected) {
            let (k, v) = entry?;
            let rejected: RejectedEvent = match serde_json::from_slice(&v) {
                Ok(rejected) => rejected,
                Err(error) => {
                    crate::store::unreadable("rejected", &hex::encode(&k), &error.into());
                    moved.skipped += 1;
                    continue;
                }
            };
            moved.write(out, &Line::Rejected { rejected })?;
        }
        for entry in all(self.engine(), Space::Recipients) {
            let (k, v) = entry?;
            match serde_json::from_slice::<Preferences>(&v) {
                Ok(recipient) => moved.write(out, &Line::Recipient { recipient })?,
                Err(error) => {
                    let key = String::from_utf8_lossy(&k);
                    crate::store::unreadable("recipient", &key, &error.into());
                    moved.skipped += 1;
                }
            }
        }
        out.flush()?;
        Ok(moved)
    }

    /// Reads every stored record (messages, actions, quarantined events, recipients'
    /// preferences) and reports the
    /// ones that cannot be read, by kind and key.
    pub fn check(&self) -> Result<Checked, StoreError> {
        let mut checked = Checked::default();
        for entry in all(self.engine(), Space::Messages) {
            let (k, v) = entry?;
            checked.messages += 1;
            let id = String::from_utf8_lossy(&k).into_owned();
            if let Err(error) = Record::decode(&id, &v) {
                checked.unreadable.push(("message", id, error.to_string()));
            }
        }
        for entry in all(self.engine(), Space::Actions) {
            let (k, v) = entry?;
            checked.actions += 1;
            if let Err(error) = serde_json::from_slice::<Action>(&v) {
                let id = String::from_utf8_lossy(&k).into_owned();
                checked.unreadable.push(("action", id, error.to_string()));
            }
        }
        for entry in all(self.engine(), Space::Rejected) {
            let (k, v) = entry?;
            checked.rejected += 1;
            if let Err(error) = serde_json::from_slice::<RejectedEvent>(&v) {
                checked
                    .unreadable
                    .push(("rejected", hex::encode(&k), error.to_string()));
            }
        }
        for entry in all(self.engine(), Space::Recipients) {
            let (k, v) = entry?;
            checked.recipients += 1;
            if let Err(error) = serde_json::from_slice::<Preferences>(&v) {
                let key = String::from_utf8_lossy(&k).into_owned();
                checked
                    .unreadable
                    .push(("recipient", key, error.to_string()));
            }
        }
        Ok(checked)
    }

    /// Restores an export into this store, which must be empty; flushes before returning.
    /// Each message (with its actions) is one writer job.
    pub async fn import(&self, input: &mut (dyn BufRead + Send)) -> Result<Moved, BackupError> {
        let engine = self.engine();
        for space in [
            Space::Messages,
            Space::Actions,
            Space::Rejected,
            Space::Recipients,
        ] {
            if !engine.is_empty(space)? {
                return Err(BackupError::NotEmpty);
            }
        }
        let mut moved = Moved::default();
        for line in lines(input) {
            let line = line?;
            moved.count(&line);
            match line {
                Line::Message { message, actions } => self.restore(message, actions).await?,
                Line::Rejected { rejected } => {
                    let value = serde_json::to_vec(&rejected).map_err(StoreError::from)?;
                    self.inner
                        .writer
                        .write(1, move |tx| {
                            tx.insert(Space::Rejected, rejected.id.to_be_bytes(), value);
                            Ok(())
                        })
                        .await?;
                }
                Line::Recipient { recipient } => {
                    let value = serde_json::to_vec(&recipient).map_err(StoreError::from)?;
                    self.inner
                        .writer
                        .write(1, move |tx| {
                            tx.insert(Space::Recipients, recipient.recipient.as_bytes(), value);
                            Ok(())
                        })
                        .await?;
                }
            }
        }
        self.engine().flush()?;
        Ok(moved)
    }

    /// Files one message and its actions as ingest would have.
    async fn restore(
        &self,
        message: Box<MessageState>,
        actions: Vec<Action>,
    ) -> Result<(), StoreError> {
        let context = std::sync::Arc::clone(&self.inner.context);
        let weight = 1 + actions.len();
        let write = move |tx: &super::tx::Tx<'_>| {
            let id = &message.message_id;
            let ids: Vec<String> = actions.iter().map(|a| a.id.to_string()).collect();
            let record = Record::encode_parts(Some(&message), &[], &ids)?;
            tx.insert(Space::Messages, id.as_str().as_bytes(), record);
            tx.insert(Space::IdxTime, time_key(&message), []);
            let derived = Derived::of(Some(&message), &context.fields);
            Filing::of(tx).refile(id, None, derived.as_ref())?;
            let action_tx = ActionTx::of(tx);
            for action in actions {
                // A call in flight when the export was taken is simply due again.
                let mut action = action;
                action.in_flight = false;
                action_tx.create(&action)?;
            }
            Ok(())
        };
        self.inner.writer.write(weight, write).await?;
        Ok(())
    }
}
