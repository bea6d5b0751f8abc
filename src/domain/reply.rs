//! Customer messages: a reply answers a business message (contract section 8.1).
//!
//! An adapter turns a customer message into an [`Incoming`]: the reply and what it says it
//! answers (`context`, when the provider says). Which stored message it lands on is the
//! store's decision (the one `context` names, else the recipient's latest within
//! `store.reply_window_hours`); there it becomes an [`Event`] of kind `reply`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Event, EventKind, MessageId, Provider};

/// What a customer sent, as kept on the business message's reply event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reply {
    /// The customer message's own id.
    pub message_id: String,
    /// As the provider says: `text`, `button`, `interactive`, `reaction`, ...
    #[serde(rename = "type")]
    #[schema(example = "button")]
    pub kind: String,
    /// The body, the button's text, or the interactive reply's title.
    pub text: Option<String>,
    /// The button's payload, or the interactive reply's id.
    pub payload: Option<String>,
}

/// A customer message as an adapter read it, before it is attributed.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub reply: Reply,
    /// The business message it answers, when the provider says (Meta's `context.id`).
    pub context: Option<MessageId>,
    /// Who sent it, as the provider wrote it.
    pub from: String,
    /// `from` in E.164, worked out where it was parsed.
    pub from_e164: Option<String>,
    pub provider: Provider,
    pub channel: Option<String>,
    /// When the customer sent it.
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl Incoming {
    /// What its sender is filed under (the recipient index's key, see
    /// [`lookup_key`](super::recipient::lookup_key)).
    pub fn sender_key(&self) -> String {
        self.from_e164
            .clone()
            .unwrap_or_else(|| super::recipient::lookup_key(&self.from))
    }

    /// Whether a message addressed as `recipient` (E.164 form `recipient_e164`) went to the
    /// sender whose [`Incoming::sender_key`] is `sender`.
    pub fn sent_to(sender: &str, recipient: Option<&str>, recipient_e164: Option<&str>) -> bool {
        recipient_e164 == Some(sender)
            || recipient.map(super::recipient::lookup_key).as_deref() == Some(sender)
    }

    /// Among the sender's messages, each with when flowhook first saw it, the one a reply
    /// without a stored context answers: the latest first seen at most `window_hours` before
    /// the reply and not after flowhook received it (ties by message id, so the answer does
    /// not depend on the order the candidates come in).
    pub fn latest_answered(
        &self,
        window_hours: f64,
        candidates: impl IntoIterator<Item = (DateTime<Utc>, MessageId)>,
    ) -> Option<MessageId> {
        let window = chrono::Duration::milliseconds((window_hours * 3_600_000.0) as i64);
        let earliest = self.at - window;
        candidates
            .into_iter()
            .filter(|(seen, _)| *seen >= earliest && *seen <= self.received_at)
            .max()
            .map(|(_, id)| id)
    }

    /// The opt-out a reply that is an opt-out keyword says: its sender stops, answering what
    /// the reply answers.
    pub fn keyword_opt_out(&self) -> super::OptOutItem {
        super::OptOutItem {
            value: super::Preference::Stop,
            source: super::optout::OptOutSource::Keyword,
            // Not the reply's own id: that one is the reply event's, on the same message.
            event_id: format!("keyword:{}", self.reply.message_id),
            message: None,
            context: self.context.clone(),
            recipient: Some(self.from.clone()),
            recipient_e164: self.from_e164.clone(),
            provider: self.provider,
            channel: self.channel.clone(),
            at: self.at,
            received_at: self.received_at,
        }
    }

    /// The reply event on business message `to`.
    pub fn event_on(&self, to: MessageId) -> Event {
        Event {
            message_id: to,
            provider: self.provider,
            kind: EventKind::Reply,
            status: None,
            url: None,
            at: self.at,
            received_at: self.received_at,
            event_id: Some(self.reply.message_id.clone()),
            recipient: Some(self.from.clone()),
            recipient_e164: self.from_e164.clone(),
            recipient_user_id: None,
            participant: None,
            channel: self.channel.clone(),
            failure_code: None,
            failure_reason: None,
            callback: None,
            billing: None,
            reply: Some(Box::new(self.reply.clone())),
            opt_out: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn incoming(text: &str) -> Incoming {
        Incoming {
            reply: Reply {
                message_id: "wamid.IN==".into(),
                kind: "text".into(),
                text: Some(text.into()),
                payload: None,
            },
            context: None,
            from: "919090909090".into(),
            from_e164: Some("+919090909090".into()),
            provider: Provider::Meta,
            channel: Some("whatsapp".into()),
            at: Utc.timestamp_opt(1_795_255_600, 0).unwrap(),
            received_at: Utc.timestamp_opt(1_795_255_601, 0).unwrap(),
        }
    }

    #[test]
    fn the_reply_event_carries_the_customer_message_id_as_its_event_id() {
        let event = incoming("Hi").event_on(MessageId::parse("wamid.BIZ==").unwrap());
        assert_eq!(event.kind, EventKind::Reply);
        assert_eq!(event.event_id.as_deref(), Some("wamid.IN=="));
        assert_eq!(event.reply.unwrap().text.as_deref(), Some("Hi"));
    }
}
