//! Reads: one message, messages by an index, the quarantine; all paged by opaque cursors.

use std::ops::Bound;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Record;
use super::{key, SledStore, StoreError};
use crate::domain::recipient::lookup_key;
use crate::domain::{MessageState, Provider};

/// An event kept in quarantine because it could not be used.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedEvent {
    pub id: u64,
    #[schema(value_type = String, example = "bik")]
    pub provider: Provider,
    #[serde(with = "crate::domain::time_format")]
    pub received_at: DateTime<Utc>,
    pub reason: String,
    /// The event as received (re-serialized JSON).
    pub raw: String,
}

/// Which secondary index to read.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// `callback.<field> = <value>`; the field must be in `store.index_callback_fields`.
    Callback {
        field: String,
        value: String,
    },
    Recipient(String),
}

/// One page of results and the cursor for the next, if there is one.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl SledStore {
    /// One message; `Err` (counted and logged) when its record cannot be read.
    pub fn message(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        let Some(bytes) = self.inner.trees.messages.get(id.as_bytes())? else {
            return Ok(None);
        };
        match Record::decode(id, &bytes) {
            Ok(record) => Ok(record.state),
            Err(error) => {
                super::unreadable("message", id, &error);
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
                &self.inner.trees.idx_callback,
                key(&[field.as_bytes(), value.as_bytes(), b""]),
            ),
            Lookup::Recipient(r) => (
                &self.inner.trees.idx_recipient,
                key(&[lookup_key(r).as_bytes(), b""]),
            ),
        };
        let page = scan(tree, &prefix, limit, cursor)?;
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
        let tree = &self.inner.trees.idx_time;
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
        for entry in tree.range::<Vec<u8>, _>((Bound::Unbounded, end)).rev() {
            let (k, _) = entry?;
            if items.len() == limit {
                return Ok(Page {
                    items,
                    next_cursor: last.map(|l: sled::IVec| URL_SAFE_NO_PAD.encode(l)),
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
        let page = scan(&self.inner.trees.rejected, b"", limit, cursor)?;
        let mut items = Vec::with_capacity(page.items.len());
        for (k, v) in &page.items {
            match serde_json::from_slice(v) {
                Ok(event) => items.push(event),
                Err(e) => super::unreadable("rejected", &hex::encode(k), &e.into()),
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
    tree: &sled::Tree,
    prefix: &[u8],
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page<(sled::IVec, sled::IVec)>, StoreError> {
    let start = match cursor {
        None => Bound::Included(prefix.to_vec()),
        Some(c) => match URL_SAFE_NO_PAD.decode(c) {
            Ok(after) if after.starts_with(prefix) => Bound::Excluded(after),
            _ => return Err(StoreError::BadCursor),
        },
    };
    let mut items = Vec::with_capacity(limit.min(64));
    let mut more = false;
    for entry in tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
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
