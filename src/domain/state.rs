use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::summary::{insert_bounded, Summary};
use super::{
    Billing, CallbackData, Event, EventKind, MessageId, OptOut, Preference, Pricing, Provider,
    Reply, Status,
};

/// Everything flowhook knows about one message: derived fields plus the full timeline.
///
/// Every derived field is recomputed from the timeline, which is kept sorted by time, then
/// status rank (see [`Status::timeline_order`]), and holds each distinct event once. So the state is a function of the
/// SET of events received: any arrival order, with any duplicates, gives the same value (and the
/// same serialized bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageState {
    pub message_id: MessageId,
    pub provider: Provider,
    pub channel: Option<String>,
    /// As the provider sent it.
    pub recipient: Option<String>,
    /// `recipient` in E.164 (`+` and digits), or `None` when it is not a phone number.
    #[serde(default)]
    pub recipient_e164: Option<String>,
    #[serde(default)]
    pub recipient_user_id: Option<String>,
    pub status: Option<Status>,
    /// The latest failed event's code, while the status is `failed`.
    #[serde(default)]
    pub failure_code: Option<String>,
    /// The latest failed event's reason, while the status is `failed`.
    pub failure_reason: Option<String>,
    pub callback_data: Option<Map<String, Value>>,
    pub callback_data_raw: Option<String>,
    pub callback_data_error: Option<String>,
    #[serde(with = "super::time_format")]
    pub first_seen_at: DateTime<Utc>,
    #[serde(with = "super::time_format")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "super::time_format::option")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(with = "super::time_format::option")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(with = "super::time_format::option")]
    pub read_at: Option<DateTime<Utc>>,
    #[serde(with = "super::time_format::option")]
    pub failed_at: Option<DateTime<Utc>>,
    pub clicks: Vec<Click>,
    /// When the customer first replied to it (the first reply in the timeline).
    #[serde(
        default,
        with = "super::time_format::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub replied_at: Option<DateTime<Utc>>,
    /// When the recipient first opted out in answer to it (its first `opt_out` stop).
    #[serde(
        default,
        with = "super::time_format::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub opted_out_at: Option<DateTime<Utc>>,
    /// The latest `pricing` a status carried, in timeline order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// The latest conversation id a status carried, in timeline order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    pub events: Vec<TimelineEvent>,
    /// The events past `store.max_events_per_message`, counted but not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Click {
    pub url: String,
    #[serde(with = "super::time_format")]
    pub at: DateTime<Utc>,
}

/// One event as the timeline keeps it: the event minus the message id it is filed under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub kind: EventKind,
    pub status: Option<Status>,
    pub url: Option<String>,
    #[serde(with = "super::time_format")]
    pub at: DateTime<Utc>,
    #[serde(with = "super::time_format")]
    pub received_at: DateTime<Utc>,
    pub event_id: Option<String>,
    pub provider: Provider,
    pub recipient: Option<String>,
    #[serde(default)]
    pub recipient_user_id: Option<String>,
    /// The group member a group message's status is about.
    #[serde(default)]
    pub participant: Option<String>,
    pub channel: Option<String>,
    #[serde(default)]
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    pub callback: Option<CallbackData>,
    /// What the provider said this status costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<Box<Billing>>,
    /// On a reply event: what the customer sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<Reply>>,
    /// On an opt-out event: stop or resume, and who said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out: Option<Box<OptOut>>,
}

type SortKey<'a> = (DateTime<Utc>, EventKind, u8, &'a str, Option<&'a str>);

/// The timeline's order of an event with these parts (see [`TimelineEvent::sort_key`]).
fn sort_key<'a>(
    at: DateTime<Utc>,
    kind: EventKind,
    status: Option<&'a Status>,
    what: Option<&'a str>,
    participant: Option<&'a str>,
) -> SortKey<'a> {
    (
        at,
        kind,
        status.map_or(0, Status::timeline_order),
        super::event::subject(kind, status, what),
        participant,
    )
}

/// A timeline and the summary's representatives together, in timeline order, each once.
fn merged<'a>(
    timeline: &'a [TimelineEvent],
    summary: Option<&'a Summary>,
) -> Vec<&'a TimelineEvent> {
    let mut all: Vec<&TimelineEvent> = timeline.iter().collect();
    if let Some(summary) = summary {
        all.extend(&summary.representatives);
        all.extend(&summary.latest_failure);
        all.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        all.dedup_by(|a, b| a.sort_key() == b.sort_key());
    }
    all
}

impl TimelineEvent {
    /// The event's natural key (see [`Event::natural_key`]) under its message's id.
    pub fn natural_key(&self, message_id: &MessageId) -> String {
        super::event::natural_key(
            message_id,
            self.kind,
            self.status.as_ref(),
            self.what(),
            self.at,
            self.participant.as_deref(),
        )
    }

    /// The timeline's order; two events with the same sort key are the same event (the sort
    /// key holds exactly the natural key's parts).
    pub(super) fn sort_key(&self) -> SortKey<'_> {
        sort_key(
            self.at,
            self.kind,
            self.status.as_ref(),
            self.what(),
            self.participant.as_deref(),
        )
    }

    /// Its status, or for a click its URL.
    pub(super) fn subject(&self) -> &str {
        super::event::subject(self.kind, self.status.as_ref(), self.what())
    }

    /// See [`Event::what`].
    pub fn what(&self) -> Option<&str> {
        super::event::what(self.kind, self.url.as_deref(), self.event_id.as_deref())
    }

    /// Among two events with the same natural key, the one the timeline keeps: the earliest
    /// received, then the smallest event id, then (for copies that differ in nothing else,
    /// e.g. Meta statuses, which carry no event id) the smallest serialized form. A total
    /// order, so that the choice never depends on arrival order. Found by fuzzing.
    pub(super) fn preferred_over(&self, other: &Self) -> bool {
        let text = |e: &Self| serde_json::to_string(e).unwrap_or_default();
        (self.received_at, &self.event_id, self.provider)
            .cmp(&(other.received_at, &other.event_id, other.provider))
            .then_with(|| text(self).cmp(&text(other)))
            .is_lt()
    }
}

impl From<Event> for TimelineEvent {
    fn from(e: Event) -> Self {
        Self {
            kind: e.kind,
            status: e.status,
            url: e.url,
            at: e.at,
            received_at: e.received_at,
            event_id: e.event_id,
            provider: e.provider,
            recipient: e.recipient,
            recipient_user_id: e.recipient_user_id,
            participant: e.participant,
            channel: e.channel,
            failure_code: e.failure_code,
            failure_reason: e.failure_reason,
            callback: e.callback,
            billing: e.billing,
            reply: e.reply,
            opt_out: e.opt_out,
        }
    }
}

impl MessageState {
    /// Folds one event into a message's state. Returns the new state and whether it changed;
    /// an event already in the timeline (same kind, status or URL, and time) changes nothing.
    pub fn apply(state: Option<MessageState>, event: Event) -> (MessageState, bool) {
        let (state, changed, _) = Self::apply_bounded(state, event, usize::MAX);
        (state, changed)
    }

    /// [`apply`](Self::apply) with a timeline of at most `cap` events: past it, the event in
    /// the middle of the timeline moves to the [`Summary`], and is returned so that the store
    /// can still recognize it as a duplicate.
    pub fn apply_bounded(
        state: Option<MessageState>,
        mut event: Event,
        cap: usize,
    ) -> (MessageState, bool, Option<TimelineEvent>) {
        let message_id = event.message_id.clone();
        // A recipient's E.164 form already worked out, by the state or where the event was
        // parsed, is reused rather than normalized again. Only a found form is reused: `None`
        // may come from a state stored before the field.
        let from_event = event
            .recipient_e164
            .take()
            .and_then(|e164| Some((event.recipient.clone()?, e164)));
        let incoming = TimelineEvent::from(event);
        let (from_state, mut events, mut summary) = match state {
            Some(s) => (s.recipient.zip(s.recipient_e164), s.events, s.summary),
            None => Default::default(),
        };
        let known_e164 = from_state.or(from_event);
        // Timelines stored before `played` and participants existed were sorted by an older key.
        if !events.is_sorted_by(|a, b| a.sort_key() <= b.sort_key()) {
            events.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        }
        let (changed, evicted) = insert_bounded(&mut events, incoming, cap);
        if let Some(e) = &evicted {
            summary
                .get_or_insert_with(Summary::default)
                .absorb(e.clone());
        }
        let state = Self::from_timeline(message_id, events, summary, known_e164);
        (state, changed, evicted)
    }

    /// Every event the state knows one by one: the timeline and, for a message past its cap,
    /// the summary's representatives, in timeline order. What rules look at.
    pub fn known_events(&self) -> Vec<&TimelineEvent> {
        merged(&self.events, self.summary.as_ref())
    }

    /// Distinct events received: listed and summarized.
    pub fn events_total(&self) -> u64 {
        self.events.len() as u64 + self.summary.as_ref().map_or(0, |s| s.events)
    }

    /// Derives every field from a sorted, de-duplicated, non-empty timeline; `known_e164` is a
    /// recipient whose E.164 form was already worked out.
    fn from_timeline(
        message_id: MessageId,
        events: Vec<TimelineEvent>,
        summary: Option<Summary>,
        known_e164: Option<(String, String)>,
    ) -> Self {
        let mut state = Self::derive(message_id, &events, summary.as_ref(), known_e164);
        state.events = events;
        state.summary = summary;
        state
    }

    /// Every derived field, from the timeline and the summary; `events` is left empty.
    fn derive(
        message_id: MessageId,
        timeline: &[TimelineEvent],
        summary: Option<&Summary>,
        known_e164: Option<(String, String)>,
    ) -> Self {
        let events = merged(timeline, summary);
        let first = events[0];
        let first_with = |pick: fn(&TimelineEvent) -> Option<&String>| {
            events.iter().find_map(|e| pick(e)).cloned()
        };
        let callback = events.iter().find_map(|e| e.callback.as_ref());
        let status = events
            .iter()
            .filter_map(|e| e.status.as_ref())
            .fold(None::<&Status>, |best, s| match best {
                Some(b) if b.precedence() > s.precedence() => Some(b),
                _ => Some(s),
            })
            .cloned();
        let first_at = |wanted: Status| {
            events
                .iter()
                .find(|e| e.status.as_ref() == Some(&wanted))
                .map(|e| e.at)
        };
        let latest_failure = match status {
            Some(Status::Failed) => events
                .iter()
                .rev()
                .find(|e| e.status == Some(Status::Failed)),
            _ => None,
        };
        let recipient = first_with(|e| e.recipient.as_ref());
        let billing = || events.iter().rev().filter_map(|e| e.billing.as_deref());
        let received = events
            .iter()
            .map(|e| e.received_at)
            .chain(summary.and_then(|s| s.first_received_at))
            .chain(summary.and_then(|s| s.last_received_at));
        let (first_seen_at, updated_at) = received
            .fold((first.received_at, first.received_at), |(lo, hi), t| {
                (lo.min(t), hi.max(t))
            });
        let clicks = events
            .iter()
            .filter(|e| e.kind == EventKind::Click)
            .filter_map(|e| {
                Some(Click {
                    url: e.url.clone()?,
                    at: e.at,
                })
            })
            .collect();
        Self {
            message_id,
            provider: first.provider,
            channel: first_with(|e| e.channel.as_ref()),
            recipient_e164: match (&recipient, known_e164) {
                (Some(r), Some((known, e164))) if *r == known => Some(e164),
                (r, _) => r.as_deref().and_then(super::recipient::e164),
            },
            recipient,
            recipient_user_id: first_with(|e| e.recipient_user_id.as_ref()),
            failure_code: latest_failure.and_then(|e| e.failure_code.clone()),
            failure_reason: latest_failure.and_then(|e| e.failure_reason.clone()),
            callback_data: callback.and_then(|c| c.value.clone()),
            callback_data_raw: callback.map(|c| c.raw.clone()),
            callback_data_error: callback.and_then(|c| c.error.clone()),
            first_seen_at,
            updated_at,
            sent_at: first_at(Status::Sent),
            delivered_at: first_at(Status::Delivered),
            read_at: first_at(Status::Read),
            failed_at: first_at(Status::Failed),
            status,
            clicks,
            replied_at: events
                .iter()
                .find(|e| e.kind == EventKind::Reply)
                .map(|e| e.at),
            opted_out_at: events
                .iter()
                .find(|e| {
                    e.opt_out
                        .as_ref()
                        .is_some_and(|o| o.value == Preference::Stop)
                })
                .map(|e| e.at),
            pricing: billing().find_map(|b| b.pricing.clone()),
            conversation_id: billing().find_map(|b| b.conversation_id.clone()),
            events: Vec::new(),
            summary: None,
        }
    }

    /// The state of a stored timeline (distinct events) and summary, or `None` for no events.
    pub fn from_events(
        message_id: MessageId,
        events: Vec<TimelineEvent>,
        summary: Option<Summary>,
    ) -> Option<Self> {
        Self::from_stored(message_id, events, summary, None)
    }

    /// [`from_events`](Self::from_events), given the stored E.164 form of the recipient.
    pub fn from_stored(
        message_id: MessageId,
        mut events: Vec<TimelineEvent>,
        summary: Option<Summary>,
        recipient_e164: Option<String>,
    ) -> Option<Self> {
        if events.is_empty() {
            return None;
        }
        if !events.is_sorted_by(|a, b| a.sort_key() <= b.sort_key()) {
            events.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        }
        let known = recipient_e164.and_then(|e164| {
            let recipient = events.iter().find_map(|e| e.recipient.clone())?;
            Some((recipient, e164))
        });
        Some(Self::from_timeline(message_id, events, summary, known))
    }

    /// Whether the timeline already holds `event`: one with its natural key, or one with the
    /// same provider event id.
    pub fn has_seen(&self, event: &Event) -> bool {
        let wanted = sort_key(
            event.at,
            event.kind,
            event.status.as_ref(),
            event.what(),
            event.participant.as_deref(),
        );
        let by_key = self
            .events
            .binary_search_by(|e| e.sort_key().cmp(&wanted))
            .is_ok();
        by_key
            || event.event_id.as_ref().is_some_and(|id| {
                self.events
                    .iter()
                    .any(|e| e.provider == event.provider && e.event_id.as_ref() == Some(id))
            })
    }

    /// The value of `callback.<path>` in the decoded callback data.
    pub fn callback_field(&self, path: &str) -> Option<&Value> {
        super::callback::lookup_path(self.callback_data.as_ref()?, path)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;

    fn event(kind: EventKind, status: Option<&str>, url: Option<&str>, at_secs: i64) -> Event {
        Event {
            message_id: MessageId::parse("wamid.TEST==").unwrap(),
            provider: Provider::Bik,
            kind,
            status: status.map(Status::parse),
            url: url.map(str::to_owned),
            at: Utc.timestamp_opt(1_795_255_200 + at_secs, 0).unwrap(),
            received_at: Utc
                .timestamp_opt(1_795_260_000 + at_secs * 7 % 13, 0)
                .unwrap(),
            event_id: Some(format!("evt-{at_secs}-{status:?}-{url:?}")),
            recipient: Some("+919090909090".into()),
            recipient_e164: None,
            recipient_user_id: None,
            participant: None,
            channel: Some("whatsapp".into()),
            failure_code: status
                .filter(|s| *s == "failed")
                .map(|_| format!("13104{at_secs}")),
            failure_reason: status
                .filter(|s| *s == "failed")
                .map(|_| format!("undeliverable at {at_secs}")),
            callback: CallbackData::decode(
                &serde_json::json!(format!("{{\"t\":{at_secs}}}")),
                4096,
            ),
            // Statuses carry pricing that differs from one to the next, so that which one the
            // message shows depends on the order the state keeps, never on arrival.
            billing: status.filter(|s| *s != "failed").map(|_| {
                Box::new(Billing {
                    pricing: Some(Pricing {
                        category: Some(
                            ["marketing", "utility"][at_secs.rem_euclid(2) as usize].into(),
                        ),
                        kind: Some("regular".into()),
                        billable: (at_secs % 3 == 0).then_some(true),
                        pricing_model: Some("PMP".into()),
                    }),
                    conversation_id: Some(format!("conv-{at_secs}")),
                })
            }),
            reply: None,
            opt_out: None,
        }
    }

    fn fold(events: impl IntoIterator<Item = Event>) -> MessageState {
        let mut state = None;
        for e in events {
            state = Some(MessageState::apply(state, e).0);
        }
        state.expect("at least one event")
    }

    fn status_of(statuses: &[&str]) -> Option<Status> {
        let events = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| event(EventKind::Status, Some(s), None, i as i64));
        fold(events).status
    }

    #[test]
    fn status_only_moves_forward() {
        assert_eq!(
            status_of(&["read", "delivered", "sent"]),
            Some(Status::Read)
        );
        assert_eq!(status_of(&["sent", "delivered"]), Some(Status::Delivered));
        assert_eq!(status_of(&["sent", "failed"]), Some(Status::Failed));
        assert_eq!(status_of(&["failed", "sent"]), Some(Status::Failed));
        assert_eq!(status_of(&["delivered", "failed"]), Some(Status::Delivered));
        assert_eq!(status_of(&["failed", "read"]), Some(Status::Read));
        assert_eq!(
            status_of(&["deleted"]),
            Some(Status::Other("deleted".into()))
        );
        assert_eq!(status_of(&["sent", "deleted"]), Some(Status::Sent));
        assert_eq!(status_of(&["played", "read"]), Some(Status::Played));
        assert_eq!(status_of(&["failed", "played"]), Some(Status::Played));
    }

    #[test]
    fn equal_timestamps_are_ordered_by_status_rank_not_the_alphabet() {
        let state = fold([
            event(EventKind::Status, Some("played"), None, 3),
            event(EventKind::Status, Some("read"), None, 3),
            event(EventKind::Status, Some("deleted"), None, 3),
            event(EventKind::Status, Some("delivered"), None, 3),
            event(EventKind::Status, Some("sent"), None, 3),
        ]);
        let order: Vec<_> = state
            .events
            .iter()
            .map(|e| e.status.clone().unwrap())
            .collect();
        let names: Vec<&str> = order.iter().map(Status::as_str).collect();
        assert_eq!(names, ["sent", "delivered", "read", "played", "deleted"]);
    }

    #[test]
    fn a_timeline_stored_in_the_old_order_is_resorted_and_still_dedupes() {
        let read = event(EventKind::Status, Some("read"), None, 3);
        let sent = event(EventKind::Status, Some("sent"), None, 3);
        let mut state = fold([read.clone(), sent.clone()]);
        // Before this order existed, equal times sorted by name (read < sent).
        state.events.swap(0, 1);
        let (after, changed) = MessageState::apply(Some(state), read.clone());
        assert!(!changed);
        assert_eq!(after, fold([sent, read]));
    }

    #[test]
    fn each_participant_of_a_group_message_keeps_its_own_read() {
        let read_by = |who: &str| Event {
            participant: Some(who.into()),
            ..event(EventKind::Status, Some("read"), None, 4)
        };
        let (a, b) = (read_by("16315551181"), read_by("16315551182"));
        assert_ne!(a.natural_key(), b.natural_key());
        let state = fold([a.clone(), b.clone(), a]);
        let who: Vec<_> = state
            .events
            .iter()
            .map(|e| e.participant.as_deref())
            .collect();
        assert_eq!(who, [Some("16315551181"), Some("16315551182")]);
        // An event without a participant keeps the key it always had.
        let plain = event(EventKind::Status, Some("read"), None, 4);
        assert!(!plain.natural_key().contains("|p:"));
    }

    #[test]
    fn every_failed_event_keeps_its_code_and_the_message_shows_the_latest() {
        let state = fold([
            event(EventKind::Status, Some("sent"), None, 1),
            event(EventKind::Status, Some("failed"), None, 2),
            event(EventKind::Status, Some("failed"), None, 5),
        ]);
        assert_eq!(state.failure_code.as_deref(), Some("131045"));
        assert_eq!(state.failure_reason.as_deref(), Some("undeliverable at 5"));
        let codes: Vec<_> = state
            .events
            .iter()
            .map(|e| e.failure_code.as_deref())
            .collect();
        assert_eq!(codes, [None, Some("131042"), Some("131045")]);

        let delivered_later = fold([
            event(EventKind::Status, Some("failed"), None, 2),
            event(EventKind::Status, Some("delivered"), None, 6),
        ]);
        assert_eq!(delivered_later.failure_code, None);
        assert_eq!(delivered_later.failure_reason, None);
        assert_eq!(
            delivered_later.events[0].failure_code.as_deref(),
            Some("131042"),
            "the timeline keeps the failed event's own code"
        );
    }

    #[test]
    fn recipients_are_normalized_and_user_ids_kept() {
        let meta_style = Event {
            recipient: Some("16505551234".into()),
            ..event(EventKind::Status, Some("sent"), None, 1)
        };
        let state = fold([meta_style]);
        assert_eq!(state.recipient.as_deref(), Some("16505551234"));
        assert_eq!(state.recipient_e164.as_deref(), Some("+16505551234"));

        let bsuid = Event {
            recipient: None,
            recipient_user_id: Some("US.13491208655302741918".into()),
            ..event(EventKind::Status, Some("sent"), None, 1)
        };
        let state = fold([bsuid]);
        assert_eq!(state.recipient_e164, None);
        assert_eq!(
            state.recipient_user_id.as_deref(),
            Some("US.13491208655302741918")
        );
    }

    #[test]
    fn a_state_stored_before_recipient_e164_gets_it_on_upgrade() {
        let mut stored =
            serde_json::to_value(fold([event(EventKind::Status, Some("sent"), None, 1)])).unwrap();
        let map = stored.as_object_mut().unwrap();
        for field in ["recipient_e164", "recipient_user_id", "failure_code"] {
            map.remove(field);
        }
        let old: MessageState = serde_json::from_value(stored).unwrap();
        assert_eq!(old.recipient_e164, None);
        // What reading a format-0 record does (see `store::record`).
        let old = MessageState::from_events(old.message_id, old.events, None).unwrap();
        assert_eq!(old.recipient_e164.as_deref(), Some("+919090909090"));
    }

    #[test]
    fn a_repeated_event_changes_nothing() {
        let e = event(EventKind::Status, Some("delivered"), None, 1);
        let (state, changed) = MessageState::apply(None, e.clone());
        assert!(changed);
        let (again, changed) = MessageState::apply(Some(state.clone()), e);
        assert!(!changed);
        assert_eq!(state, again);
    }

    /// Found by fuzzing the Meta adapter: two copies of one status that differ only in a
    /// field outside the natural key, with no event id and the same receive time.
    #[test]
    fn copies_differing_outside_the_natural_key_fold_the_same_in_any_order() {
        let mut a = event(EventKind::Status, Some("sent"), None, 1);
        a.event_id = None;
        let mut b = a.clone();
        b.recipient = Some("+910000000000".into());
        assert_eq!(fold([a.clone(), b.clone()]), fold([b, a]));
    }

    #[test]
    fn failure_reason_shows_only_while_failed() {
        let failed = fold([event(EventKind::Status, Some("failed"), None, 1)]);
        assert_eq!(failed.failure_reason.as_deref(), Some("undeliverable at 1"));
        assert!(failed.failed_at.is_some());
        let recovered = fold([
            event(EventKind::Status, Some("failed"), None, 1),
            event(EventKind::Status, Some("delivered"), None, 2),
        ]);
        assert_eq!(recovered.failure_reason, None);
    }

    #[test]
    fn clicks_are_listed_in_time_order_and_keep_the_status() {
        let state = fold([
            event(EventKind::Click, None, Some("https://b"), 9),
            event(EventKind::Status, Some("read"), None, 5),
            event(EventKind::Click, None, Some("https://a"), 7),
        ]);
        let urls: Vec<_> = state.clicks.iter().map(|c| c.url.as_str()).collect();
        assert_eq!(urls, ["https://a", "https://b"]);
        assert_eq!(state.status, Some(Status::Read));
        assert_eq!(state.events.len(), 3);
    }

    /// Statuses including `played`, group participants and business-scoped user ids, at few
    /// distinct times so that equal timestamps are common.
    fn arb_event() -> impl Strategy<Value = Event> {
        let status = prop::sample::select(vec![
            "sent",
            "delivered",
            "read",
            "played",
            "failed",
            "deleted",
        ]);
        let participant =
            prop::option::of(prop::sample::select(vec!["16315551181", "16315551182"]));
        let user_id = prop::option::of(prop::sample::select(vec!["US.1349", "IN.7781"]));
        let url = prop::sample::select(vec!["https://shop/a", "https://shop/b"]);
        prop_oneof![
            (status, 0i64..6, participant, user_id).prop_map(|(s, t, p, u)| {
                let plain = event(EventKind::Status, Some(s), None, t);
                Event {
                    event_id: plain.event_id.clone().map(|id| format!("{id}-{p:?}")),
                    participant: p.map(str::to_owned),
                    recipient_user_id: u.map(str::to_owned),
                    ..plain
                }
            }),
            (url, 0i64..6).prop_map(|(u, t)| event(EventKind::Click, None, Some(u), t)),
            // Replies: two customer messages (a retry repeats one whole: id and time).
            (0usize..2).prop_map(|n| {
                let plain = event(EventKind::Reply, None, None, 2 * n as i64 + 1);
                Event {
                    event_id: Some(format!("wamid.CUSTOMER{n}")),
                    callback: None,
                    billing: None,
                    reply: Some(Box::new(Reply {
                        message_id: format!("wamid.CUSTOMER{n}"),
                        kind: "button".into(),
                        text: Some(["Yes", "Stop"][n].into()),
                        payload: Some(format!("p{n}")),
                    })),
                    ..plain
                }
            }),
            // Opt-outs and resumes at few times, so that a stop and a resume often tie.
            (0i64..3, any::<bool>()).prop_map(|(t, stop)| {
                let plain = event(EventKind::OptOut, None, None, t);
                let value = if stop {
                    Preference::Stop
                } else {
                    Preference::Resume
                };
                Event {
                    event_id: Some(format!("user_preferences:{t}:{}", value.as_str())),
                    callback: None,
                    billing: None,
                    opt_out: Some(Box::new(OptOut {
                        value,
                        source: super::super::optout::OptOutSource::Meta,
                    })),
                    ..plain
                }
            }),
        ]
    }

    /// The events plus the picked duplicates, shuffled by a seed (so failures shrink and
    /// replay): Fisher-Yates with a linear congruential generator.
    fn shuffled(events: &[Event], dup_picks: &[prop::sample::Index], seed: u64) -> Vec<Event> {
        let mut out = events.to_vec();
        out.extend(dup_picks.iter().map(|i| i.get(events).clone()));
        let mut seed = seed;
        for i in (1..out.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.swap(i, (seed >> 33) as usize % (i + 1));
        }
        out
    }

    /// Folds as the store does with a timeline capped at `cap`: an event already in the
    /// record, or summarized before (the store's `o` keys), is a duplicate.
    fn fold_bounded(events: impl IntoIterator<Item = Event>, cap: usize) -> MessageState {
        let mut state: Option<MessageState> = None;
        let mut summarized = std::collections::HashSet::new();
        for e in events {
            let id_key = e.event_id.clone().map(|id| format!("id:{id}"));
            if state.as_ref().is_some_and(|s| s.has_seen(&e))
                || summarized.contains(&e.natural_key())
                || id_key.as_ref().is_some_and(|k| summarized.contains(k))
            {
                continue;
            }
            let (next, _, evicted) = MessageState::apply_bounded(state, e, cap);
            if let Some(ev) = evicted {
                summarized.insert(ev.natural_key(&next.message_id));
                summarized.extend(ev.event_id.map(|id| format!("id:{id}")));
            }
            state = Some(next);
        }
        state.expect("at least one event")
    }

    #[test]
    fn past_the_cap_events_still_move_the_state_and_are_counted() {
        let mut events: Vec<Event> = (0..30)
            .map(|i| {
                event(
                    EventKind::Click,
                    None,
                    Some(&format!("https://shop/{i}")),
                    i,
                )
            })
            .collect();
        events.push(event(EventKind::Status, Some("sent"), None, 0));
        // `read` lands in the middle of the timeline, so it is summarized.
        events.push(event(EventKind::Status, Some("read"), None, 15));
        let state = fold_bounded(events, 10);
        assert_eq!(state.events.len(), 10);
        assert_eq!(state.events_total(), 32);
        assert_eq!(state.status, Some(Status::Read));
        assert!(state.read_at.is_some());
        assert!(state
            .known_events()
            .iter()
            .any(|e| e.status == Some(Status::Read)));
        assert_eq!(state.summary.as_ref().unwrap().events, 22);
    }

    proptest! {
        /// The contract's heart: the state is a function of the set of events.
        #[test]
        fn any_order_with_any_duplicates_gives_byte_identical_state(
            events in prop::collection::vec(arb_event(), 1..12),
            dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            shuffle_seed in any::<u64>(),
        ) {
            let reference = serde_json::to_vec(&fold(events.clone())).unwrap();
            let permuted = shuffled(&events, &dup_picks, shuffle_seed);
            prop_assert_eq!(reference, serde_json::to_vec(&fold(permuted)).unwrap());
        }

        /// The same with a timeline capped at 4 events: what is kept and what is summarized
        /// depend on the set of events only.
        #[test]
        fn a_capped_timeline_is_a_function_of_the_set_of_events_too(
            events in prop::collection::vec(arb_event(), 1..16),
            dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            shuffle_seed in any::<u64>(),
        ) {
            // Copies of one event that differ elsewhere keep whichever came first, as in the
            // store; so here a copy is a copy: the user id follows the event.
            let events: Vec<Event> = events
                .into_iter()
                .map(|mut e| {
                    e.recipient_user_id =
                        (e.at.timestamp() % 2 == 0).then(|| "US.1349".to_owned());
                    e
                })
                .collect();
            let reference = serde_json::to_vec(&fold_bounded(events.clone(), 4)).unwrap();
            let permuted = shuffled(&events, &dup_picks, shuffle_seed);
            prop_assert_eq!(reference, serde_json::to_vec(&fold_bounded(permuted, 4)).unwrap());
        }
    }
}
