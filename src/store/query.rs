//! What reads answer with: quarantined events, lookups, and pages behind opaque cursors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::Provider;

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
