//! Opening a store written by an older flowhook: its data is brought to this build's format
//! once, at open, in bounded batches. Every step is idempotent (a record's format is in its
//! first bytes, a refiled key is refiled to itself), so a crash part way only repeats work.
//!
//! The store's format is the `format` key of `meta` (absent before records were versioned,
//! which is format 0). A store from a newer flowhook is refused.

use super::record::{Record, VERSION};
use super::{key, StoreError, Trees};

/// The `meta` key holding the store's format, one byte.
const FORMAT: &str = "format";
/// Entries rewritten per batch.
const BATCH: usize = 10_000;

pub(super) fn run(trees: &Trees) -> Result<(), StoreError> {
    let format = trees
        .meta
        .get(FORMAT)?
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    if format > VERSION {
        return Err(StoreError::Incompatible(format!(
            "the store is in format {format}, written by a newer flowhook; this one reads up to \
             format {VERSION}. Run the newer release, or move the data with its `flowhook \
             export` and this one's `flowhook import`"
        )));
    }
    refile_recipients(trees)?;
    if format < 1 {
        to_records(trees)?;
    }
    trees.meta.insert(FORMAT, &[VERSION])?;
    Ok(())
}

/// Format 0 to 1: each message's JSON state becomes a compact record, and the dedupe keys of
/// events (now checked against the message's own record) go.
fn to_records(trees: &Trees) -> Result<(), StoreError> {
    if trees.messages.first()?.is_none() {
        return Ok(());
    }
    tracing::warn!(
        "upgrading the store to format {VERSION} (compact message records); this runs once. A \
         copy taken before with the previous release's `flowhook export` can be restored with \
         `flowhook import` into an empty store"
    );
    let started = std::time::Instant::now();
    let (mut converted, mut pending) = (0u64, sled::Batch::default());
    let mut in_batch = 0;
    for entry in trees.messages.iter() {
        let (k, v) = entry?;
        if v.first() == Some(&b'{') {
            let id = String::from_utf8_lossy(&k).into_owned();
            pending.insert(k, Record::decode(&id, &v)?.encode()?);
            converted += 1;
            in_batch += 1;
        }
        if in_batch == BATCH {
            trees.messages.apply_batch(std::mem::take(&mut pending))?;
            in_batch = 0;
        }
    }
    trees.messages.apply_batch(pending)?;
    let mut removed = 0u64;
    for prefix in [&b"n\0"[..], b"i\0"] {
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for entry in trees.dedupe.scan_prefix(prefix) {
            batch.remove(entry?.0);
            removed += 1;
            in_batch += 1;
            if in_batch == BATCH {
                trees.dedupe.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        trees.dedupe.apply_batch(batch)?;
    }
    tracing::warn!(
        messages = converted,
        dedupe_keys_removed = removed,
        seconds = started.elapsed().as_secs_f64(),
        "store upgraded to format {VERSION}"
    );
    Ok(())
}

/// The `meta` key that says `idx_recipient` files recipients under
/// [`lookup_key`](crate::domain::recipient::lookup_key) (stores written before that filed them
/// as the provider sent them).
const RECIPIENT_INDEX: &str = "recipient_index";
const RECIPIENT_INDEX_E164: &[u8] = b"e164";

/// Refiles an older store's recipient index under normalized keys, once, in bounded batches.
/// Each batch is atomic and the rewrite is idempotent, so a crash part way only repeats work.
fn refile_recipients(trees: &Trees) -> Result<(), StoreError> {
    if trees.meta.get(RECIPIENT_INDEX)?.as_deref() == Some(RECIPIENT_INDEX_E164) {
        return Ok(());
    }
    let mut moved = 0u64;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for entry in trees.idx_recipient.iter() {
        let (k, _) = entry?;
        let Some(split) = k.iter().rposition(|b| *b == 0) else {
            continue;
        };
        let recipient = String::from_utf8_lossy(&k[..split]);
        let normalized = crate::domain::recipient::lookup_key(&recipient);
        if normalized != recipient {
            batch.remove(&k);
            batch.insert(key(&[normalized.as_bytes(), &k[split + 1..]]), &[]);
            moved += 1;
            pending += 1;
        }
        if pending == 10_000 {
            trees
                .idx_recipient
                .apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    trees.idx_recipient.apply_batch(batch)?;
    trees.meta.insert(RECIPIENT_INDEX, RECIPIENT_INDEX_E164)?;
    if moved > 0 {
        tracing::info!(moved, "recipient index refiled under E.164 numbers");
    }
    Ok(())
}
