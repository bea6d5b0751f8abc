use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Billing, CallbackData, MessageId, OptOut, Reply, Status};

/// What an adapter made of one element of a webhook body.
#[derive(Debug)]
pub enum IngestItem {
    Event(Box<Event>),
    /// A customer message, to be attributed to the business message it answers.
    Reply(Box<super::Incoming>),
    /// A recipient stopping or resuming marketing messages.
    OptOut(Box<super::OptOutItem>),
    /// Well-formed, of a kind flowhook does not handle.
    Ignored,
    /// JSON, but missing what it needs; quarantined with the reason.
    Rejected {
        reason: String,
        raw: String,
    },
}

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

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Bik, Self::Meta, Self::Generic]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Status,
    Click,
    /// A customer's message answering this one (contract section 8.1).
    Reply,
    /// The recipient stopped or resumed marketing messages (contract section 8.2).
    #[serde(rename = "opt_out")]
    OptOut,
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
    /// The recipient as the provider sent it (a phone number, or a group id).
    pub recipient: Option<String>,
    /// `recipient` in E.164, worked out where the event is parsed (on an HTTP worker, not in
    /// the store's one writer thread). Not kept in the timeline: the message keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_e164: Option<String>,
    /// A business-scoped user id (Meta's `recipient_user_id`), for users addressed without
    /// a phone number.
    pub recipient_user_id: Option<String>,
    /// The group member this status is about (Meta's `recipient_participant_id`).
    pub participant: Option<String>,
    pub channel: Option<String>,
    /// The provider's error code, as text (Meta's `errors[0].code`).
    pub failure_code: Option<String>,
    /// What the provider said went wrong, see [`failure_text`](crate::domain::failure_text).
    pub failure_reason: Option<String>,
    pub callback: Option<CallbackData>,
    /// What the provider says the message costs (Meta's `pricing` and `conversation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<Box<Billing>>,
    /// Set for reply events: what the customer sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<Reply>>,
    /// Set for opt-out events: stop or resume, and who said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out: Option<Box<OptOut>>,
}

impl Event {
    /// What tells it apart from other events of its kind at the same time: a click's URL, a
    /// reply's customer message id, an opt-out's event id.
    pub fn what(&self) -> Option<&str> {
        what(self.kind, self.url.as_deref(), self.event_id.as_deref())
    }

    /// What makes two events the same event when the provider sends no id, or a new id on a
    /// retry: message, kind, status (or, for a click, its URL), timestamp and, for a group
    /// message, the participant.
    pub fn natural_key(&self) -> String {
        natural_key(
            &self.message_id,
            self.kind,
            self.status.as_ref(),
            self.what(),
            self.at,
            self.participant.as_deref(),
        )
    }
}

/// See [`Event::what`].
pub(crate) fn what<'a>(
    kind: EventKind,
    url: Option<&'a str>,
    event_id: Option<&'a str>,
) -> Option<&'a str> {
    match kind {
        EventKind::Status => None,
        EventKind::Click => url,
        EventKind::Reply | EventKind::OptOut => event_id,
    }
}

/// See [`Event::natural_key`]; shared with the timeline's events.
pub(crate) fn natural_key(
    message_id: &MessageId,
    kind: EventKind,
    status: Option<&Status>,
    what: Option<&str>,
    at: DateTime<Utc>,
    participant: Option<&str>,
) -> String {
    let mut key = format!(
        "{}|{}|{}|{}",
        message_id,
        kind.as_str(),
        super::rfc3339(at),
        subject(kind, status, what)
    );
    // Only group statuses carry a participant, so every other key reads as it always has and
    // dedupe keys stored before participants were kept still match.
    if let Some(participant) = participant {
        key.push_str("|p:");
        key.push_str(participant);
    }
    key
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
            recipient_e164: None,
            recipient_user_id: None,
            participant: None,
            channel: Some("whatsapp".into()),
            failure_code: None,
            failure_reason: None,
            callback: CallbackData::decode(&serde_json::json!({ "campaign": "c" }), 4096),
            billing: None,
            reply: None,
            opt_out: None,
        }
    }
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Click => "click",
            Self::Reply => "reply",
            Self::OptOut => "opt_out",
        }
    }
}

/// What an event is about: its status for a status event, else its [`Event::what`].
pub(crate) fn subject<'a>(
    kind: EventKind,
    status: Option<&'a Status>,
    what: Option<&'a str>,
) -> &'a str {
    match kind {
        EventKind::Status => status.map(Status::as_str).unwrap_or_default(),
        EventKind::Click | EventKind::Reply | EventKind::OptOut => what.unwrap_or_default(),
    }
}

/// A failure reason from the parts a provider sends (Meta: `title`, `message`,
/// `error_data.details`), joined in order with `": "` (or a space after a part that ends a
/// sentence), without repeats: a part already said by an earlier one is left out, and one that
/// says more than an earlier one replaces it (`"(#131047) Re-engagement message"` over
/// `"Re-engagement message"`). `None` when every part is empty.
pub fn failure_text<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let mut kept: Vec<&str> = Vec::new();
    for part in parts.into_iter().flatten().map(str::trim) {
        if part.is_empty() || kept.iter().any(|k| contains_ci(k, part)) {
            continue;
        }
        kept.retain(|k| !contains_ci(part, k));
        kept.push(part);
    }
    let mut text = String::new();
    for part in kept {
        if !text.is_empty() {
            text.push_str(if text.ends_with(['.', '!', '?', ':']) {
                " "
            } else {
                ": "
            });
        }
        text.push_str(part);
    }
    (!text.is_empty()).then_some(text)
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::failure_text;

    #[test]
    fn failure_text_joins_parts_without_repeats() {
        assert_eq!(
            failure_text([
                Some("Re-engagement message"),
                Some("Re-engagement message"),
                Some("Message failed to send because more than 24 hours have passed."),
            ])
            .as_deref(),
            Some("Re-engagement message: Message failed to send because more than 24 hours have passed.")
        );
        assert_eq!(
            failure_text([
                Some("Rate limit hit"),
                Some("(#130429) Rate limit hit"),
                None
            ])
            .as_deref(),
            Some("(#130429) Rate limit hit")
        );
        assert_eq!(
            failure_text([Some("Not delivered."), Some("Try later")]).as_deref(),
            Some("Not delivered. Try later")
        );
        assert_eq!(failure_text([Some(" "), None]), None);
        assert_eq!(
            failure_text([None, Some("undeliverable")]).as_deref(),
            Some("undeliverable")
        );
    }
}
