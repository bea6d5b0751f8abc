//! Reads on Postgres: one message, messages by a lookup or by last update, the quarantine,
//! the stats; paged by opaque cursors.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::DateTime;

use super::PgStore;
use crate::domain::recipient::lookup_key;
use crate::domain::{MessageState, Preferences, Provider};
use crate::store::record::Record;
use crate::store::stats::group;
use crate::store::{Group, Lookup, Page, RejectedEvent, StoreError};

impl PgStore {
    /// A recipient's marketing preferences, by its key.
    pub async fn preferences(&self, key: &str) -> Result<Option<Preferences>, StoreError> {
        if key.contains('\0') {
            return Ok(None);
        }
        let body: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM recipients WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(body.map(|b| serde_json::from_slice(&b)).transpose()?)
    }

    /// One message; `Err` (counted and logged) when its record cannot be read.
    pub async fn message(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        if id.contains('\0') {
            // No stored id holds one (and Postgres text cannot).
            return Ok(None);
        }
        let record: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        let Some(bytes) = record else {
            return Ok(None);
        };
        decode(id, &bytes)
    }

    /// Messages filed under a callback value or a recipient, in message-id order.
    pub async fn lookup(
        &self,
        lookup: &Lookup,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        let (field, value) = match lookup {
            Lookup::Callback { field, value } => (field.clone(), value.clone()),
            Lookup::Recipient(r) => (String::new(), lookup_key(r)),
        };
        // The sled store's cursor: `<field>\0<value>\0<message id>`, so that one lookup's
        // cursor is refused by another.
        let prefix = format!("{field}\0{value}\0");
        let after = match cursor {
            None => String::new(),
            Some(c) => decode_text(c)?
                .strip_prefix(&prefix)
                .filter(|id| !id.contains('\0'))
                .ok_or(StoreError::BadCursor)?
                .to_owned(),
        };
        if prefix.matches('\0').count() != 2 {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        }
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT m.id, m.record FROM lookups l JOIN messages m ON m.id = l.message_id
             WHERE l.field = $1 AND l.value = $2 AND l.message_id > $3
             ORDER BY l.message_id LIMIT $4",
        )
        .bind(field)
        .bind(value)
        .bind(after)
        .bind(limit as i64 + 1)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let (rows, next) = page(rows, limit, |(id, _)| {
            URL_SAFE_NO_PAD.encode(format!("{prefix}{id}"))
        });
        Ok(Page {
            items: listed(rows),
            next_cursor: next,
        })
    }

    /// Messages by last update, newest first.
    pub async fn recent(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<MessageState>, StoreError> {
        let before = match cursor {
            None => (i64::MAX, String::new()),
            Some(c) => decode_position(c)?,
        };
        let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, record, updated_ms FROM messages
             WHERE live AND (updated_ms, id) < ($1, $2)
             ORDER BY updated_ms DESC, id DESC LIMIT $3",
        )
        .bind(before.0)
        .bind(before.1)
        .bind(limit as i64 + 1)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let (rows, next) = page(rows, limit, |(id, _, time)| encode_position(*time, id));
        Ok(Page {
            items: listed(rows.into_iter().map(|(id, r, _)| (id, r)).collect()),
            next_cursor: next,
        })
    }

    /// The quarantine, oldest first.
    pub async fn rejected(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<RejectedEvent>, StoreError> {
        let after = match cursor {
            None => i64::MIN,
            Some(c) => decode_text(c)?
                .parse::<i64>()
                .map_err(|_| StoreError::BadCursor)?,
        };
        let rows: Vec<RejectedRow> = sqlx::query_as(
            "SELECT id, provider, received_ms, reason, raw FROM rejected
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64 + 1)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let (rows, next) = page(rows, limit, |r| URL_SAFE_NO_PAD.encode(r.0.to_string()));
        Ok(Page {
            items: rows.into_iter().filter_map(rejected_event).collect(),
            next_cursor: next,
        })
    }

    /// Counts per value of a counted callback field, for messages first seen on days
    /// `from..=to` (inclusive; `None` is open).
    pub async fn stats(
        &self,
        field: &str,
        from: Option<u32>,
        to: Option<u32>,
    ) -> Result<Vec<Group>, StoreError> {
        let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT value, metric, sum(n)::int8 FROM counts
             WHERE field = $1 AND day >= $2 AND day <= $3
             GROUP BY value, metric",
        )
        .bind(field)
        .bind(from.map_or(i32::MIN, |d| d as i32))
        .bind(to.map_or(i32::MAX, |d| d as i32))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut sums: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (value, metric, n) in rows {
            sums.entry(value)
                .or_default()
                .insert(String::from_utf8_lossy(&metric).into_owned(), n);
        }
        Ok(sums
            .into_iter()
            .map(|(value, metrics)| group(value, &metrics))
            .filter(|g| g.messages != 0 || g.actions_delivered != 0 || g.actions_dead != 0)
            .collect())
    }
}

/// A quarantined event's row: id, provider, received (ms), reason, raw.
pub(super) type RejectedRow = (i64, String, i64, String, Vec<u8>);

pub(super) fn rejected_event(row: RejectedRow) -> Option<RejectedEvent> {
    let (id, provider, received_ms, reason, raw) = row;
    let event = (|| {
        Some(RejectedEvent {
            id: id.max(0) as u64,
            provider: Provider::parse(&provider)?,
            received_at: DateTime::from_timestamp_millis(received_ms)?,
            reason,
            raw: String::from_utf8(raw).ok()?,
        })
    })();
    if event.is_none() {
        let error = StoreError::Corrupt("a quarantined event's row cannot be read".into());
        crate::store::unreadable("rejected", &id.to_string(), &error);
    }
    event
}

/// A record's message; `Err` (counted and logged) when it cannot be read.
pub(super) fn decode(id: &str, bytes: &[u8]) -> Result<Option<MessageState>, StoreError> {
    match Record::decode(id, bytes) {
        Ok(record) => Ok(record.state),
        Err(error) => {
            crate::store::unreadable("message", id, &error);
            Err(error)
        }
    }
}

/// Listed messages; one whose record cannot be read is left out (counted and logged).
fn listed(rows: Vec<(String, Vec<u8>)>) -> Vec<MessageState> {
    rows.into_iter()
        .filter_map(|(id, bytes)| decode(&id, &bytes).ok().flatten())
        .collect()
}

/// The first `limit` rows, and the cursor after the last of them when more follow.
fn page<T>(
    mut rows: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(&cursor)).flatten();
    (rows, next)
}

fn decode_text(cursor: &str) -> Result<String, StoreError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(StoreError::BadCursor)
}

/// A keyset cursor: `<ms, u64 BE><id>` in base64, as the sled store's action and time-index
/// cursors are.
pub(super) fn encode_position(created_ms: i64, id: &str) -> String {
    let mut k = (created_ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(k)
}

pub(super) fn decode_position(cursor: &str) -> Result<(i64, String), StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let (created, id) = bytes
        .split_first_chunk::<8>()
        .ok_or(StoreError::BadCursor)?;
    let id = String::from_utf8(id.to_vec())
        .ok()
        .filter(|id| !id.contains('\0'))
        .ok_or(StoreError::BadCursor)?;
    Ok((u64::from_be_bytes(*created).min(i64::MAX as u64) as i64, id))
}
