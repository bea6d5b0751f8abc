//! Opening a store written by an older flowhook: its data is brought to this build's format
//! once, at open, in bounded batches. Every step is idempotent (a record's format is in its
//! first bytes, a refiled key is refiled to itself), so a crash part way only repeats work.
//!
//! The store's format is the `format` key of `meta` (absent before records were versioned,
//! which is format 0). A store from a newer flowhook is refused.

use super::engine::{all, prefixed, Engine, Space, WriteSet};
use super::writer::{commit_writes, Sequence};
use crate::store::key;
use crate::store::record::{Record, VERSION};
use crate::store::StoreError;

/// The `meta` key holding the store's format, one byte.
const FORMAT: &str = "format";
/// Entries rewritten per batch.
const BATCH: usize = 10_000;

pub(super) fn run(engine: &dyn Engine, sequence: &Sequence) -> Result<(), StoreError> {
    let up = Upgrade { engine, sequence };
    let format = engine
        .get(Space::Meta, FORMAT.as_bytes())?
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    if format > VERSION {
        return Err(StoreError::Incompatible(format!(
            "the store is in format {format}, written by a newer flowhook; this one reads up to \
             format {VERSION}. Run the newer release, or move the data with its `flowhook \
             export` and this one's `flowhook import`"
        )));
    }
    refile_recipients(&up)?;
    if format < 1 {
        to_records(&up)?;
    }
    if format < 2 {
        actions_into_records(&up)?;
    }
    if format != VERSION {
        let mut writes = WriteSet::default();
        writes.insert(Space::Meta, FORMAT, [VERSION]);
        commit_writes(engine, sequence, writes)?;
    }
    Ok(())
}

/// What an upgrade step works on: the engine, before the writer starts, and the commit
/// sequence its writes are numbered in.
struct Upgrade<'a> {
    engine: &'a dyn Engine,
    sequence: &'a Sequence,
}

/// Format 0 to 1: each message's JSON state becomes a compact record, and the dedupe keys of
/// events (now checked against the message's own record) go.
fn to_records(up: &Upgrade<'_>) -> Result<(), StoreError> {
    if up.engine.is_empty(Space::Messages)? {
        return Ok(());
    }
    tracing::warn!(
        "upgrading the store to format {VERSION} (compact message records); this runs once. A \
         copy taken before with the previous release's `flowhook export` can be restored with \
         `flowhook import` into an empty store"
    );
    let started = std::time::Instant::now();
    let mut messages = Batches::new(up, Space::Messages);
    for entry in all(up.engine, Space::Messages) {
        let (k, v) = entry?;
        if v.first() == Some(&b'{') {
            let id = String::from_utf8_lossy(&k).into_owned();
            messages.insert(k, Record::decode(&id, &v)?.encode()?)?;
        }
    }
    let converted = messages.finish()?;
    let mut dedupe = Batches::new(up, Space::Dedupe);
    for prefix in [&b"n\0"[..], b"i\0"] {
        for entry in prefixed(up.engine, Space::Dedupe, prefix) {
            dedupe.remove(entry?.0)?;
        }
    }
    let removed = dedupe.finish()?;
    tracing::warn!(
        messages = converted,
        dedupe_keys_removed = removed,
        seconds = started.elapsed().as_secs_f64(),
        "store upgraded to format {VERSION}"
    );
    Ok(())
}

/// Format 1 to 2: a message's actions, listed under `m\0<message>\0<action>` in
/// `action_idx`, move into its record, and the `a` (all actions) and `r` (by rule) entries go:
/// listings merge the per-state entries instead. Three fewer keys per action.
fn actions_into_records(up: &Upgrade<'_>) -> Result<(), StoreError> {
    if up.engine.is_empty(Space::ActionIdx)? {
        return Ok(());
    }
    tracing::warn!(
        "upgrading the store to format {VERSION} (a message's actions listed in its record); \
         this runs once. A copy taken before with the previous release's `flowhook export` can \
         be restored with `flowhook import` into an empty store"
    );
    let started = std::time::Instant::now();
    let mut records = Batches::new(up, Space::Messages);
    let mut current: Option<(Vec<u8>, Vec<String>)> = None;
    for entry in prefixed(up.engine, Space::ActionIdx, b"m\0") {
        let (k, _) = entry?;
        let Some(split) = k.iter().rposition(|b| *b == 0).filter(|at| *at > 2) else {
            continue;
        };
        let (message, action) = (&k[2..split], &k[split + 1..]);
        let action = String::from_utf8_lossy(action).into_owned();
        match &mut current {
            Some((m, ids)) if m.as_slice() == message => ids.push(action),
            _ => {
                if let Some((m, ids)) = current.replace((message.to_vec(), vec![action])) {
                    list_actions(up, &mut records, m, ids)?;
                }
            }
        }
    }
    if let Some((m, ids)) = current {
        list_actions(up, &mut records, m, ids)?;
    }
    let records = records.finish()?;
    let mut index = Batches::new(up, Space::ActionIdx);
    for prefix in [&b"m\0"[..], b"a\0", b"r\0"] {
        for entry in prefixed(up.engine, Space::ActionIdx, prefix) {
            index.remove(entry?.0)?;
        }
    }
    let removed = index.finish()?;
    tracing::warn!(
        records,
        index_keys_removed = removed,
        seconds = started.elapsed().as_secs_f64(),
        "store upgraded to format {VERSION}"
    );
    Ok(())
}

/// Adds action ids to a message's record (each once, so that repeating it changes nothing).
fn list_actions(
    up: &Upgrade<'_>,
    records: &mut Batches<'_>,
    message: Vec<u8>,
    ids: Vec<String>,
) -> Result<(), StoreError> {
    let Some(bytes) = up.engine.get(Space::Messages, &message)? else {
        return Ok(());
    };
    let mut record = Record::decode(&String::from_utf8_lossy(&message), &bytes)?;
    for id in ids {
        if !record.actions.contains(&id) {
            record.actions.push(id);
        }
    }
    records.insert(message, record.encode()?)
}

/// The `meta` key that says `idx_recipient` files recipients under
/// [`lookup_key`](crate::domain::recipient::lookup_key) (stores written before that filed them
/// as the provider sent them).
const RECIPIENT_INDEX: &str = "recipient_index";
const RECIPIENT_INDEX_E164: &[u8] = b"e164";

/// Refiles an older store's recipient index under normalized keys, once, in bounded batches.
/// Each batch is atomic and the rewrite is idempotent, so a crash part way only repeats work.
fn refile_recipients(up: &Upgrade<'_>) -> Result<(), StoreError> {
    let engine = up.engine;
    if engine
        .get(Space::Meta, RECIPIENT_INDEX.as_bytes())?
        .as_deref()
        == Some(RECIPIENT_INDEX_E164)
    {
        return Ok(());
    }
    let mut refiled = Batches::new(up, Space::IdxRecipient);
    for entry in all(engine, Space::IdxRecipient) {
        let (k, _) = entry?;
        let Some(split) = k.iter().rposition(|b| *b == 0) else {
            continue;
        };
        let recipient = String::from_utf8_lossy(&k[..split]);
        let normalized = crate::domain::recipient::lookup_key(&recipient);
        if normalized != recipient {
            let new = key(&[normalized.as_bytes(), &k[split + 1..]]);
            refiled.rename(k, new)?;
        }
    }
    let moved = refiled.finish()?;
    let mut writes = WriteSet::default();
    writes.insert(Space::Meta, RECIPIENT_INDEX, RECIPIENT_INDEX_E164);
    commit_writes(engine, up.sequence, writes)?;
    if moved > 0 {
        tracing::info!(moved, "recipient index refiled under E.164 numbers");
    }
    Ok(())
}

/// Writes to one keyspace in atomic batches of [`BATCH`] changes, so that an upgrade of a
/// large store holds a bounded amount in memory; counts the changes.
struct Batches<'a> {
    up: &'a Upgrade<'a>,
    space: Space,
    batch: WriteSet,
    total: u64,
}

impl<'a> Batches<'a> {
    fn new(up: &'a Upgrade<'a>, space: Space) -> Self {
        Self {
            up,
            space,
            batch: WriteSet::default(),
            total: 0,
        }
    }

    fn insert(&mut self, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) -> Result<(), StoreError> {
        self.batch.insert(self.space, k, v);
        self.counted()
    }

    fn remove(&mut self, k: impl Into<Vec<u8>>) -> Result<(), StoreError> {
        self.batch.remove(self.space, k);
        self.counted()
    }

    /// Moves an empty-valued entry to a new key, both in the same batch.
    fn rename(
        &mut self,
        old: impl Into<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.batch.remove(self.space, old);
        self.batch.insert(self.space, new, Vec::new());
        self.counted()
    }

    fn counted(&mut self) -> Result<(), StoreError> {
        self.total += 1;
        if self.batch.len() >= BATCH {
            self.apply()?;
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), StoreError> {
        let writes = std::mem::take(&mut self.batch);
        if !writes.is_empty() {
            commit_writes(self.up.engine, self.up.sequence, writes)?;
        }
        Ok(())
    }

    /// Applies what is left; the number of changes made.
    fn finish(mut self) -> Result<u64, StoreError> {
        self.apply()?;
        Ok(self.total)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::engine::all;
    use super::super::sled::SledEngine;
    use super::super::{on_engine, EmbeddedStore};
    use super::*;
    use crate::config::StoreSettings;
    use crate::domain::{Event, IngestItem, Provider, Status};
    use crate::rules::Rules;
    use crate::store::Lookup;

    /// The store over a sled database the test filled by hand.
    fn open(db: sled::Db, settings: &StoreSettings) -> EmbeddedStore {
        on_engine(
            Arc::new(SledEngine::with_db(db).unwrap()),
            settings,
            Rules::default(),
        )
    }

    /// A message as the release before failure codes and normalized recipients stored it:
    /// no `recipient_e164`, `recipient_user_id` or `failure_code`, Meta's recipient without
    /// `+`, and equal-time events in the old (alphabetical) order.
    const OLD_STATE: &str = r#"{"message_id":"wamid.OLD==","provider":"meta","channel":"whatsapp",
        "recipient":"16505551234","status":"read","failure_reason":null,"callback_data":null,
        "callback_data_raw":null,"callback_data_error":null,
        "first_seen_at":"2026-11-21T10:00:00Z","updated_at":"2026-11-21T10:00:00Z",
        "sent_at":"2026-11-21T10:00:00Z","delivered_at":null,"read_at":"2026-11-21T10:00:00Z",
        "failed_at":null,"clicks":[],"events":[
        {"kind":"status","status":"read","url":null,"at":"2026-11-21T10:00:00Z",
         "received_at":"2026-11-21T10:00:00Z","event_id":null,"provider":"meta",
         "recipient":"16505551234","channel":"whatsapp","failure_reason":null,"callback":null},
        {"kind":"status","status":"sent","url":null,"at":"2026-11-21T10:00:00Z",
         "received_at":"2026-11-21T10:00:00Z","event_id":null,"provider":"meta",
         "recipient":"16505551234","channel":"whatsapp","failure_reason":null,"callback":null}]}"#;

    #[tokio::test]
    async fn a_store_written_before_normalized_recipients_reads_and_is_found() {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let settings = StoreSettings::default();
        db.open_tree("messages")
            .unwrap()
            .insert("wamid.OLD==", OLD_STATE.as_bytes())
            .unwrap();
        db.open_tree("idx_recipient")
            .unwrap()
            .insert(key(&[b"16505551234", b"wamid.OLD=="]), &[])
            .unwrap();
        let dedupe = db.open_tree("dedupe").unwrap();
        for status in ["read", "sent"] {
            let natural = format!("wamid.OLD==|status|2026-11-21T10:00:00Z|{status}");
            // Format 0 kept a dedupe key per event; the upgrade removes them.
            let k = key(&[b"n", natural.as_bytes()]);
            dedupe.insert(k, &1_795_255_200u64.to_be_bytes()).unwrap();
        }
        let store = open(db, &settings);

        let old = store.message("wamid.OLD==").unwrap().unwrap();
        assert_eq!(old.recipient.as_deref(), Some("16505551234"));
        assert_eq!(old.recipient_e164.as_deref(), Some("+16505551234"));
        assert_eq!(old.failure_code, None);
        for written in ["16505551234", "+1 650 555 1234", "+16505551234"] {
            let page = store
                .lookup(&Lookup::Recipient(written.into()), 10, None)
                .unwrap();
            assert_eq!(page.items.len(), 1, "{written}");
        }

        // New events fold into the old timeline; the old `sent` is still a duplicate.
        let event = |status: &str| {
            let mut e = Event::test_status("wamid.OLD==", status, 0);
            e.provider = Provider::Meta;
            e.event_id = None;
            e.at = old.events[0].at;
            IngestItem::Event(Box::new(e))
        };
        let outcome = store
            .ingest(
                Provider::Meta,
                vec![event("sent"), event("delivered")],
                crate::domain::now(),
            )
            .await
            .unwrap();
        assert_eq!((outcome.accepted, outcome.duplicates), (1, 1));
        let after = store.message("wamid.OLD==").unwrap().unwrap();
        let order: Vec<&str> = after
            .events
            .iter()
            .filter_map(|e| e.status.as_ref().map(Status::as_str))
            .collect();
        assert_eq!(order, ["sent", "delivered", "read"]);
        let page = store
            .lookup(&Lookup::Recipient("16505551234".into()), 10, None)
            .unwrap();
        assert_eq!(page.items.len(), 1, "refiled, not filed twice");
        assert!(
            store.engine().is_empty(Space::Dedupe).unwrap(),
            "format 0's event dedupe keys are gone"
        );
        assert_eq!(
            store
                .engine()
                .get(Space::Messages, b"wamid.OLD==")
                .unwrap()
                .unwrap()[0],
            0xF1,
            "the message is a versioned record now"
        );
    }

    #[tokio::test]
    async fn format_1_action_entries_move_into_the_records_and_go() {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format", &[1]).unwrap();
        meta.insert("recipient_index", "e164").unwrap();
        let record = Record::decode("wamid.OLD==", OLD_STATE.as_bytes()).unwrap();
        let mut v1 = record.encode().unwrap();
        v1.pop(); // format 1 had no action list
        v1[1] = 1;
        db.open_tree("messages")
            .unwrap()
            .insert("wamid.OLD==", v1)
            .unwrap();
        let index = db.open_tree("action_idx").unwrap();
        let created = 5u64.to_be_bytes();
        for id in ["act_b", "act_a"] {
            for k in [
                key(&[b"m", b"wamid.OLD==", id.as_bytes()]),
                [key(&[b"a", b""]), created.to_vec(), id.as_bytes().to_vec()].concat(),
                [
                    key(&[b"r", b"rule", b""]),
                    created.to_vec(),
                    id.as_bytes().to_vec(),
                ]
                .concat(),
                [
                    key(&[b"s", b"dead", b""]),
                    created.to_vec(),
                    id.as_bytes().to_vec(),
                ]
                .concat(),
            ] {
                index.insert(k, &[]).unwrap();
            }
        }
        let settings = StoreSettings::default();
        let store = open(db, &settings);
        let bytes = store
            .engine()
            .get(Space::Messages, b"wamid.OLD==")
            .unwrap()
            .unwrap();
        let upgraded = Record::decode("wamid.OLD==", &bytes).unwrap();
        assert_eq!(bytes[1], VERSION);
        assert_eq!(upgraded.actions, ["act_a", "act_b"]);
        assert_eq!(upgraded.state, record.state);
        let left: Vec<u8> = all(store.engine(), Space::ActionIdx)
            .map(|e| e.unwrap().0[0])
            .collect();
        assert_eq!(left, b"ss", "only the state entries stay");
        // Opening again changes nothing.
        assert_eq!(
            store
                .engine()
                .get(Space::Meta, b"format")
                .unwrap()
                .as_deref(),
            Some(&[VERSION][..])
        );
    }
}
