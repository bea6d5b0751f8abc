//! Forwards (contract section 9): every accepted event that matches a `[[forwards]]` entry is
//! handed on to its URL, signed with Standard Webhooks, through the outbox.
//!
//! A delivery is an [`Action`] of kind `forward` whose rule is the forward's name and whose
//! target is `forward:<name>` (its own queue and limits in the dispatcher). It is queued in
//! the same write as the event, so it is delivered exactly as often as the event is accepted:
//! a duplicate queues nothing. Its id, derived from the message, the forward and the event's
//! natural key, is the `webhook-id` of every attempt. The body is section 1.3's event plus
//! what flowhook knows, with the message's order-independent state after the event, so a
//! consumer that gets deliveries out of order still ends with the right status.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::lifecycle::{Action, ActionId, ActionState, RuleName};
use super::template::{text_of, Var};
use super::{ActionKind, Facts, Outbound, Target};
use crate::domain::{rfc3339, Event, EventKind, MessageState, TimelineEvent};
use crate::targets::Limits;

/// A compiled `[[forwards]]` entry.
pub struct Forward {
    pub name: String,
    /// `forward:<name>`: its queue in the outbox.
    pub target: Target,
    /// Which kinds of event it hands on.
    pub(super) events: Vec<EventKind>,
    pub(super) when: Vec<(Var, Vec<String>)>,
    pub url: String,
    /// The decoded `whsec_` key.
    pub(super) key: Vec<u8>,
    pub limits: Limits,
}

impl std::fmt::Debug for Forward {
    /// Without its key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// The key its deliveries are signed with.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// A warning when it sends over plain `http://` to another machine: allowed (a private
    /// network may need it), but the deliveries and their signatures travel in clear text.
    pub fn warning(&self) -> Option<String> {
        let rest = self.url.strip_prefix("http://")?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then(|| {
            format!(
                "forwards ({}).url: {:?} is plain http to another host; deliveries travel \
                 unencrypted (use https:// unless the network is private)",
                self.name, self.url
            )
        })
    }

    /// The delivery of `event`, just accepted, whose message is now `state`; `None` when the
    /// forward does not take this event.
    pub fn delivery(
        &self,
        state: &MessageState,
        event: &Event,
        now: DateTime<Utc>,
    ) -> Option<Action> {
        if !self.events.contains(&event.kind) {
            return None;
        }
        if !self.when.is_empty() {
            let trigger = TimelineEvent::from(event.clone());
            let facts = Facts {
                state,
                trigger: &trigger,
            };
            let holds = self.when.iter().all(|(var, accepted)| {
                super::template::Context::get(&facts, var)
                    .is_some_and(|v| accepted.contains(&text_of(&v)))
            });
            if !holds {
                return None;
            }
        }
        Some(Action {
            id: delivery_id(state.message_id.as_str(), &self.name, &event.natural_key()),
            message_id: state.message_id.as_str().to_owned(),
            rule: RuleName::new(self.name.as_str()),
            action: ActionKind::forward(self.target),
            state: ActionState::Pending,
            attempts: 0,
            last_error: None,
            last_status: None,
            last_response: None,
            next_attempt_at: Some(now),
            created_at: now,
            completed_at: None,
            request: Some(Outbound {
                target: self.target,
                // The URL is the forward's as configured when each attempt is made.
                path: String::new(),
                body: body(state, event),
                headers: Vec::new(),
            }),
            until: Vec::new(),
            // Deliveries are not the campaign's follow-ups: they count in no funnel.
            facets: Vec::new(),
            schedule_from: 0,
            bucket: crate::domain::day_of(state.first_seen_at),
            in_flight: false,
            // Handing on what happened is not marketing.
            skip_opted_out: false,
            direct: None,
        })
    }
}

/// A delivery's id (and `webhook-id`): `act_` and 24 hex digits of the message, the forward
/// and the event's natural key, the same however often the event is sent.
fn delivery_id(message_id: &str, forward: &str, natural_key: &str) -> ActionId {
    let digest = Sha256::new()
        .chain_update(message_id.as_bytes())
        .chain_update([0])
        .chain_update(crate::targets::FORWARD_PREFIX.as_bytes())
        .chain_update(forward.as_bytes())
        .chain_update([0])
        .chain_update(natural_key.as_bytes())
        .finalize();
    ActionId::new(format!("act_{}", hex::encode(&digest[..12])))
}

/// The `type` a consumer sees.
pub fn event_type(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Status => "message.status",
        EventKind::Click => "message.click",
        EventKind::Reply => "message.reply",
        EventKind::OptOut => "recipient.opt_out",
    }
}

/// A delivery's body: section 1.3's event (which another flowhook's `/webhooks/generic`
/// takes), plus the provider, the event id, the recipient's E.164 form, the reply or opt-out,
/// and the message's state after the event.
pub fn body(state: &MessageState, event: &Event) -> Value {
    let callback = match (&state.callback_data, &state.callback_data_raw) {
        (Some(object), _) => Value::Object(object.clone()),
        (None, Some(raw)) => Value::String(raw.clone()),
        (None, None) => Value::Null,
    };
    let mut body = json!({
        "type": event_type(event.kind),
        "message_id": event.message_id.as_str(),
        "status": event.status.as_ref().map(|s| s.as_str()),
        "timestamp": rfc3339(event.at),
        "recipient": event.recipient.as_ref().or(state.recipient.as_ref()),
        "recipient_e164": state.recipient_e164,
        "channel": event.channel.as_ref().or(state.channel.as_ref()),
        "provider": event.provider.as_str(),
        "event_id": event.event_id,
        "callback_data": callback,
        "failure_code": event.failure_code,
        "failure_reason": event.failure_reason,
        "url": event.url,
        "reply": event.reply,
        "opt_out": event.opt_out,
        "message": {
            "status": state.status.as_ref().map(|s| s.as_str()),
            "sent_at": state.sent_at.map(rfc3339),
            "delivered_at": state.delivered_at.map(rfc3339),
            "read_at": state.read_at.map(rfc3339),
            "failed_at": state.failed_at.map(rfc3339),
            "replied_at": state.replied_at.map(rfc3339),
        },
    });
    // A group member's status, or a user addressed by business-scoped id, keeps what tells it
    // apart (the generic route reads both).
    if let Some(participant) = &event.participant {
        body["participant"] = json!(participant);
    }
    if let Some(user_id) = event
        .recipient_user_id
        .as_ref()
        .or(state.recipient_user_id.as_ref())
    {
        body["recipient_user_id"] = json!(user_id);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MessageState;

    #[test]
    fn plain_http_is_warned_about_unless_it_stays_on_this_machine() {
        let forward = |url: &str| Forward {
            name: "f".into(),
            target: Target::forward("f").unwrap(),
            events: vec![EventKind::Status],
            when: Vec::new(),
            url: url.into(),
            key: vec![1],
            limits: Limits::default(),
        };
        for quiet in [
            "https://crm.example.com/hooks",
            "http://127.0.0.1:9000/x",
            "http://localhost/x",
            "http://[::1]:8080/",
        ] {
            assert!(forward(quiet).warning().is_none(), "{quiet}");
        }
        for loud in ["http://crm.example.com/hooks", "http://10.0.0.5:8080"] {
            assert!(
                forward(loud).warning().unwrap().contains("plain http"),
                "{loud}"
            );
        }
    }

    #[test]
    fn a_delivery_id_is_stable_per_event_and_forward() {
        let event = Event::test_status("wamid.F==", "read", 5);
        let a = delivery_id("wamid.F==", "crm", &event.natural_key());
        assert_eq!(a, delivery_id("wamid.F==", "crm", &event.natural_key()));
        assert_ne!(
            a,
            delivery_id("wamid.F==", "warehouse", &event.natural_key())
        );
        assert!(a.as_str().starts_with("act_") && a.len() == 28);
    }

    #[test]
    fn the_body_carries_the_event_and_the_state_after_it() {
        let sent = Event::test_status("wamid.F==", "sent", 1);
        let read = Event::test_status("wamid.F==", "read", 5);
        let (state, _) = MessageState::apply(None, read.clone());
        let (state, _) = MessageState::apply(Some(state), sent.clone());
        // The sent status arrived last: the message is still read.
        let body = body(&state, &sent);
        assert_eq!(body["type"], "message.status");
        assert_eq!(body["status"], "sent");
        assert_eq!(body["message"]["status"], "read");
        assert_eq!(body["message"]["sent_at"], rfc3339(sent.at));
        assert_eq!(body["callback_data"], json!({"campaign": "c"}));
        assert_eq!(body["provider"], "bik");
        assert_eq!(body["event_id"], "wamid.F==-sent");
        assert!(body.get("participant").is_none());
    }
}
