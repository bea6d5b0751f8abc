//! Reads: one message, messages by an index, the quarantine; all paged by opaque cursors.

use std::ops::Bound;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::engine::{Engine, Entry, Space};
use super::EmbeddedStore;
use crate::domain::recipient::lookup_key;
use crate::domain::{MessageState, Preferences};
use crate::store::query::{Lookup, Page, RejectedEvent};
use crate::store::record::Record;
use crate::store::{key, StoreError};

impl EmbeddedStore {
    /// A recipient's marketing preferences, by its key.
    pub fn preferences(&self, key: &str) -> Result<Option<Preferences>, StoreError> {
        self.engine()
            .get(Space::Recipients, key.as_bytes())?
            .map(|bytes| super::from_json(&bytes))
            .transpose()
    }

    /// One message; `Err` (counted and logged) when its record cannot be read.
    pub fn message(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        let Some(bytes) = self.engine().get(Space::Messages, id.as_bytes())? else {
            return Ok(None);
        };
        match Record::decode(id, &bytes) {
            Ok(record) => Ok(record.state),
            Err(error) => {
                crate::store::unreadable("message", id, &error);
                Err(error)
            }
        }
    }

    /// A message for a list: one whose record cannot be read is left out (counted and
    /// logged), so it fails only itself.
    fn listed(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        match self.message(id) {
            Err(error) if error.is_unreadable() => Ok(None),
            other => other,
        }
    }

    /// Messages filed under a callback value or a recipient, in message-id order.
    pub fn lookup(
        &self,
        lookup: &Lookup,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        let (tree, prefix) = match lookup {
            Lookup::Callback { field, value } => (
                Space::IdxCallback,
                key(&[field.as_bytes(), value.as_bytes(), b""]),
            ),
            Lookup::Recipient(r) => (Space::IdxRecipient, key(&[lookup_key(r).as_bytes(), b""])),
        };
        let page = scan(self.engine(), tree, &prefix, limit, cursor)?;
        let mut items = Vec::with_capacity(page.items.len());
        for (k, _) in page.items {
            let id = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // An index entry without its message can only be a bug; skip it rather than fail the page.
            if let Some(state) = self.listed(id)? {
                items.push(state);
            }
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    /// Messages by last update, newest first.
    pub fn recent(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        let end = match cursor {
            None => Bound::Unbounded,
            Some(c) => Bound::Excluded(
                URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| StoreError::BadCursor)?,
            ),
        };
        let mut items = Vec::with_capacity(limit.min(64));
        let mut last = None;
        let end = end.as_ref().map(Vec::as_slice);
        let scan = self
            .engine()
            .range(Space::IdxTime, Bound::Unbounded, end, true);
        for entry in scan {
            let (k, _) = entry?;
            if items.len() == limit {
                return Ok(Page {
                    items,
                    next_cursor: last.map(|l: Vec<u8>| URL_SAFE_NO_PAD.encode(l)),
                });
            }
            let id = String::from_utf8_lossy(k.get(8..).unwrap_or_default()).into_owned();
            if let Some(state) = self.listed(&id)? {
                items.push(state);
            }
            last = Some(k);
        }
        Ok(Page {
            items,
            next_cursor: None,
        })
    }

    /// The quarantine, oldest first.
    pub fn rejected(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<RejectedEvent>, StoreError> {
        let page = scan(self.engine(), Space::Rejected, b"", limit, cursor)?;
        let mut items = Vec::with_capacity(page.items.len());
        for (k, v) in &page.items {
            match serde_json::from_slice(v) {
                Ok(event) => items.push(event),
                Err(e) => crate::store::unreadable("rejected", &hex::encode(k), &e.into()),
            }
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }
}

/// Up to `limit` entries under `prefix`, after the key the cursor names.
pub(super) fn scan(
    engine: &dyn Engine,
    space: Space,
    prefix: &[u8],
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page<Entry>, StoreError> {
    let start = match cursor {
        None => Bound::Included(prefix.to_vec()),
        Some(c) => match URL_SAFE_NO_PAD.decode(c) {
            Ok(after) if after.starts_with(prefix) => Bound::Excluded(after),
            _ => return Err(StoreError::BadCursor),
        },
    };
    let mut items = Vec::with_capacity(limit.min(64));
    let mut more = false;
    let start = start.as_ref().map(Vec::as_slice);
    for entry in engine.range(space, start, Bound::Unbounded, false) {
        let (k, v) = entry?;
        if !k.starts_with(prefix) {
            break;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push((k, v));
    }
    let next_cursor = more
        .then(|| items.last().map(|(k, _)| URL_SAFE_NO_PAD.encode(k)))
        .flatten();
    Ok(Page { items, next_cursor })
}
