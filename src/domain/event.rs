use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CallbackData, MessageId, Status};

/// Which adapter an event came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Bik,
    Meta,
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bik => "bik",
            Self::Meta => "meta",
            Self::Generic => "generic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Status,
    Click,
}

/// One thing a provider told us about one message: a status change or a link click.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub message_id: MessageId,
    pub provider: Provider,
    pub kind: EventKind,
    /// Set for status events.
    pub status: Option<Status>,
    /// Set for click events.
    pub url: Option<String>,
    /// When the provider says it happened.
    #[serde(with = "super::time_format")]
    pub at: DateTime<Utc>,
    /// When flowhook first received it.
    #[serde(with = "super::time_format")]
    pub received_at: DateTime<Utc>,
    /// The provider's own event id, when it has one.
    pub event_id: Option<String>,
    pub recipient: Option<String>,
    pub channel: Option<String>,
    pub failure_reason: Option<String>,
    pub callback: Option<CallbackData>,
}

impl Event {
    /// What makes two events the same event when the provider sends no id, or a new id on a
    /// retry: message, kind, status (or, for a click, its URL) and timestamp.
    pub fn natural_key(&self) -> String {
        natural_key(
            &self.message_id,
            self.kind,
            self.status.as_ref(),
            self.url.as_deref(),
            self.at,
        )
    }
}

/// See [`Event::natural_key`]; shared with the timeline's events.
pub(crate) fn natural_key(
    message_id: &MessageId,
    kind: EventKind,
    status: Option<&Status>,
    url: Option<&str>,
    at: DateTime<Utc>,
) -> String {
    format!(
        "{}|{}|{}|{}",
        message_id,
        kind.as_str(),
        super::rfc3339(at),
        subject(kind, status, url)
    )
}

#[cfg(test)]
impl Event {
    /// A BIK status event for tests: `at` is `at_secs` after a fixed instant, event id
    /// `<id>-<status>`, recipient `+91`, callbackData `{"campaign": "c"}`. Override fields with
    /// struct update syntax.
    pub(crate) fn test_status(id: &str, status: &str, at_secs: i64) -> Self {
        use chrono::TimeZone;
        Self {
            message_id: MessageId::parse(id).unwrap(),
            provider: Provider::Bik,
            kind: EventKind::Status,
            status: Some(Status::parse(status)),
            url: None,
            at: Utc.timestamp_opt(1_795_255_200 + at_secs, 0).unwrap(),
            received_at: Utc.timestamp_opt(1_795_260_000, 0).unwrap(),
            event_id: Some(format!("{id}-{status}")),
            recipient: Some("+91".into()),
            channel: Some("whatsapp".into()),
            failure_reason: None,
            callback: CallbackData::decode(&serde_json::json!({ "campaign": "c" }), 4096),
        }
    }
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Click => "click",
        }
    }
}

/// What an event is about: its status for a status event, its URL for a click.
pub(crate) fn subject<'a>(
    kind: EventKind,
    status: Option<&'a Status>,
    url: Option<&'a str>,
) -> &'a str {
    match kind {
        EventKind::Status => status.map(Status::as_str).unwrap_or_default(),
        EventKind::Click => url.unwrap_or_default(),
    }
}
