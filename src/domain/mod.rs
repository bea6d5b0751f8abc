//! The inside of flowhook: one event type and one message-state type, whatever the provider.
//!
//! Provider adapters (`crate::providers`) turn raw webhooks into [`Event`]s; the store folds them
//! into [`MessageState`] with [`MessageState::apply`], a pure function of the set of events.

mod callback;
mod event;
mod message_id;
pub mod optout;
mod pricing;
pub mod recipient;
mod reply;
mod state;
mod status;
mod summary;

pub use callback::{lookup_path, CallbackData};
pub use event::{failure_text, Event, EventKind, IngestItem, Provider};
pub use message_id::MessageId;
pub use optout::{OptOut, OptOutItem, Preference, Preferences};
pub use pricing::{Billing, Pricing};
pub use reply::{Incoming, Reply};
pub use state::{Click, MessageState, TimelineEvent};
pub use status::Status;
pub use summary::Summary;

/// The day bucket a message (and its actions) is counted under.
pub fn day_of(at: chrono::DateTime<chrono::Utc>) -> u32 {
    at.timestamp().div_euclid(86_400).max(0) as u32
}

pub fn day_date(day: u32) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .unwrap_or_default()
        .date_naive()
}

/// Formats a time the way every API answer does: RFC 3339, UTC, `Z`, sub-seconds only when set.
pub fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Serde adapter for `DateTime<Utc>` fields, in the [`rfc3339`] format.
pub mod time_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same for `Option<DateTime<Utc>>`.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    DateTime::parse_from_rfc3339(&text)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

/// The current time to the millisecond, the precision every stored time has.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
