//! A message's one stored record: its timeline in a compact, versioned binary form.
//!
//! Layout of a value in `messages`: the byte [`MAGIC`], a format version, then the record in
//! postcard (serde's compact binary format). Everything else about a message (status, times,
//! clicks, failure) is derived from the timeline on read, as [`MessageState::apply`] derives it
//! on write, so it is stored once. Callback data, usually the same on every event of a message,
//! is stored once per distinct value.
//!
//! Format 0 (before records were versioned) was the whole `MessageState` as JSON; it is still
//! read, so a store in the middle of its upgrade works (see [`super::upgrade`]).
//!
//! A record may also hold `purged`: 8-byte fingerprints of events whose message retention
//! purged while they were still inside `store.dedupe_days` (a tombstone when there is no
//! timeline), so that a provider retrying one of them is still told it is a duplicate.
//!
//! Format 2 adds `actions`: the ids of the follow-ups the message's events queued, so that a
//! message's actions are found through its record instead of an index entry each. A format 1
//! record reads as one without actions (the upgrade at open moves them in).
//!
//! Format 3 adds what only some events carry (Meta's `pricing` and `conversation`, a reply, an
//! opt-out) as
//! `extras`: each distinct value once, as a JSON object, so that an attribute added later needs
//! no new format; `extra_of` pairs an event (by its place among the timeline, then the
//! summary's representatives, then its latest failure) with its extra. A format 1 or 2 record
//! reads as one whose events carry none, and is rewritten in format 3 when it next changes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::domain::TimelineEvent;
use crate::domain::{
    Billing, CallbackData, Event, EventKind, MessageId, MessageState, Provider, Status, Summary,
};

/// First byte of every versioned record (no JSON text starts with it).
const MAGIC: u8 = 0xF1;
/// The format this build writes.
pub(super) const VERSION: u8 = 3;

/// What one key of `messages` holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Record {
    /// `None` for a tombstone.
    pub state: Option<MessageState>,
    pub purged: Vec<u64>,
    /// Ids of the actions queued for this message, in the order they were queued.
    pub actions: Vec<String>,
}

impl Record {
    /// Whether `event` is already here: the same natural key in the timeline, the same
    /// provider event id, or either among the purged fingerprints.
    pub fn has_seen(&self, event: &Event) -> bool {
        if self.state.as_ref().is_some_and(|s| s.has_seen(event)) {
            return true;
        }
        !self.purged.is_empty()
            && fingerprints(event)
                .iter()
                .flatten()
                .any(|f| self.purged.contains(f))
    }

    /// The record that stays once retention purges the message: the fingerprints of its
    /// events, for as long as a provider may retry them.
    pub fn tombstone(&self) -> Record {
        let mut purged = self.purged.clone();
        if let Some(state) = &self.state {
            for e in state.known_events() {
                purged.extend(
                    timeline_fingerprints(&state.message_id, e)
                        .into_iter()
                        .flatten(),
                );
            }
        }
        purged.sort_unstable();
        purged.dedup();
        // Its actions are purged with it.
        Record {
            state: None,
            purged,
            actions: Vec::new(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        Self::encode_parts(self.state.as_ref(), &self.purged, &self.actions)
    }

    /// The bytes of a record with these parts, without building one.
    pub fn encode_parts(
        state: Option<&MessageState>,
        purged: &[u64],
        actions: &[String],
    ) -> Result<Vec<u8>, StoreError> {
        let mut callbacks: Vec<StoredCallback> = Vec::new();
        let events = state
            .iter()
            .flat_map(|s| &s.events)
            .map(|e| StoredEvent::from_timeline(e, &mut callbacks))
            .collect();
        let summary = state
            .and_then(|s| s.summary.as_ref())
            .map(|s| StoredSummary {
                events: s.events,
                first_received_at: s.first_received_at.map(split_time),
                last_received_at: s.last_received_at.map(split_time),
                representatives: s
                    .representatives
                    .iter()
                    .map(|e| StoredEvent::from_timeline(e, &mut callbacks))
                    .collect(),
                latest_failure: s
                    .latest_failure
                    .as_ref()
                    .map(|e| StoredEvent::from_timeline(e, &mut callbacks)),
            });
        let (mut extras, mut extra_of) = (Vec::<String>::new(), Vec::new());
        if let Some(state) = state {
            let summary = state.summary.as_ref();
            let all = state.events.iter().chain(
                summary
                    .into_iter()
                    .flat_map(|s| s.representatives.iter().chain(&s.latest_failure)),
            );
            for (at, e) in all.enumerate() {
                if e.billing.is_none() && e.reply.is_none() && e.opt_out.is_none() {
                    continue;
                }
                let extra = Extra {
                    billing: e.billing.as_deref().cloned().unwrap_or_default(),
                    reply: e.reply.as_deref().cloned(),
                    opt_out: e.opt_out.as_deref().cloned(),
                };
                let text = serde_json::to_string(&extra)?;
                let index = extras.iter().position(|x| *x == text).unwrap_or_else(|| {
                    extras.push(text);
                    extras.len() - 1
                });
                extra_of.push((at as u32, index as u32));
            }
        }
        let stored = Stored {
            callbacks,
            events,
            purged: purged.to_vec(),
            summary,
            recipient_e164: state.and_then(|s| s.recipient_e164.clone()),
            actions: actions.to_vec(),
            extras,
            extra_of,
        };
        let mut out = vec![MAGIC, VERSION];
        postcard::to_io(&stored, &mut out).map_err(encoding)?;
        Ok(out)
    }

    pub fn decode(id: &str, bytes: &[u8]) -> Result<Record, StoreError> {
        match bytes {
            [MAGIC, version @ (1 | 2 | VERSION), rest @ ..] => {
                let stored = match version {
                    1 => Stored::from(StoredV2::from(
                        postcard::from_bytes::<StoredV1>(rest).map_err(encoding)?,
                    )),
                    2 => Stored::from(postcard::from_bytes::<StoredV2>(rest).map_err(encoding)?),
                    _ => postcard::from_bytes::<Stored>(rest).map_err(encoding)?,
                };
                let extras: Vec<Extra> = stored
                    .extras
                    .iter()
                    .map(|text| serde_json::from_str(text))
                    .collect::<Result<_, _>>()?;
                let message_id = MessageId::parse(id).map_err(StoreError::Corrupt)?;
                // Each distinct callback decoded once, then shared by its events.
                let callbacks: Vec<CallbackData> = stored
                    .callbacks
                    .into_iter()
                    .map(|c| CallbackData::restore(c.raw, c.error))
                    .collect();
                let callbacks = &callbacks;
                let mut events: Vec<TimelineEvent> = stored
                    .events
                    .into_iter()
                    .map(|e| e.into_timeline(callbacks))
                    .collect::<Result<_, _>>()?;
                let mut summary = match stored.summary {
                    None => None,
                    Some(s) => Some(Summary {
                        events: s.events,
                        first_received_at: s.first_received_at.map(join_time).transpose()?,
                        last_received_at: s.last_received_at.map(join_time).transpose()?,
                        representatives: s
                            .representatives
                            .into_iter()
                            .map(|e| e.into_timeline(callbacks))
                            .collect::<Result<_, _>>()?,
                        latest_failure: s
                            .latest_failure
                            .map(|e| e.into_timeline(callbacks))
                            .transpose()?,
                    }),
                };
                for &(at, extra) in &stored.extra_of {
                    let extra = extras.get(extra as usize).ok_or_else(|| {
                        StoreError::Corrupt("an event names an extra the record lacks".into())
                    })?;
                    let timeline = events.len();
                    let event = match summary.as_mut() {
                        _ if (at as usize) < timeline => events.get_mut(at as usize),
                        Some(s) => {
                            let at = at as usize - timeline;
                            let kept = s.representatives.len();
                            if at < kept {
                                s.representatives.get_mut(at)
                            } else {
                                s.latest_failure.as_mut().filter(|_| at == kept)
                            }
                        }
                        None => None,
                    };
                    let event = event.ok_or_else(|| {
                        StoreError::Corrupt("an extra names an event the record lacks".into())
                    })?;
                    event.billing = extra.billing.clone().some();
                    event.reply = extra.reply.clone().map(Box::new);
                    event.opt_out = extra.opt_out.clone().map(Box::new);
                }
                Ok(Record {
                    state: MessageState::from_stored(
                        message_id,
                        events,
                        summary,
                        stored.recipient_e164,
                    ),
                    purged: stored.purged,
                    actions: stored.actions,
                })
            }
            [MAGIC, version, ..] => Err(StoreError::Corrupt(format!(
                "message {id:?} is in record format {version}, newer than this flowhook reads \
                 ({VERSION})"
            ))),
            json => {
                // Derived again, so that older timelines get today's order and fields.
                let old: MessageState = serde_json::from_slice(json)?;
                Ok(Record {
                    state: MessageState::from_events(old.message_id, old.events, None),
                    ..Record::default()
                })
            }
        }
    }
}

fn encoding(e: postcard::Error) -> StoreError {
    StoreError::Corrupt(format!(
        "a message record could not be encoded or decoded: {e}"
    ))
}

/// A stored event's fingerprints (see [`fingerprints`]).
pub(super) fn timeline_fingerprints(message_id: &MessageId, e: &TimelineEvent) -> [Option<u64>; 2] {
    [
        Some(fingerprint(e.natural_key(message_id).as_bytes())),
        e.event_id
            .as_deref()
            .map(|id| fingerprint(&id_key(e.provider, id))),
    ]
}

/// An event's fingerprints: of its natural key, and of its provider event id if it has one.
pub(super) fn fingerprints(event: &Event) -> [Option<u64>; 2] {
    [
        Some(fingerprint(event.natural_key().as_bytes())),
        event
            .event_id
            .as_deref()
            .map(|id| fingerprint(&id_key(event.provider, id))),
    ]
}

fn id_key(provider: Provider, id: &str) -> Vec<u8> {
    let mut k = provider.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The first 8 bytes of SHA-256: stable across builds, unlike `std`'s hashers.
fn fingerprint(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 of 32 bytes"))
}

/// A record as this build writes it (format 3).
#[derive(Serialize, Deserialize)]
struct Stored {
    callbacks: Vec<StoredCallback>,
    events: Vec<StoredEvent>,
    purged: Vec<u64>,
    summary: Option<StoredSummary>,
    /// The recipient's E.164 form, so that reading a record never normalizes a number again.
    recipient_e164: Option<String>,
    actions: Vec<String>,
    /// Distinct extras, JSON objects ([`Extra`]).
    extras: Vec<String>,
    /// (event's place, index into `extras`), see the module's doc.
    extra_of: Vec<(u32, u32)>,
}

/// What only some events carry, stored as a JSON object (so that a field added later reads
/// as absent in older records): billing keys at the top, a reply, an opt-out.
#[derive(Serialize, Deserialize)]
struct Extra {
    #[serde(flatten)]
    billing: Billing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply: Option<crate::domain::Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    opt_out: Option<crate::domain::OptOut>,
}

/// Format 2: format 3 without extras.
#[derive(Deserialize)]
struct StoredV2 {
    callbacks: Vec<StoredCallback>,
    events: Vec<StoredEvent>,
    purged: Vec<u64>,
    summary: Option<StoredSummary>,
    recipient_e164: Option<String>,
    actions: Vec<String>,
}

impl From<StoredV2> for Stored {
    fn from(v2: StoredV2) -> Self {
        Stored {
            callbacks: v2.callbacks,
            events: v2.events,
            purged: v2.purged,
            summary: v2.summary,
            recipient_e164: v2.recipient_e164,
            actions: v2.actions,
            extras: Vec::new(),
            extra_of: Vec::new(),
        }
    }
}

/// Format 1: format 2 without `actions` (postcard's fields are positional).
#[derive(Deserialize)]
struct StoredV1 {
    callbacks: Vec<StoredCallback>,
    events: Vec<StoredEvent>,
    purged: Vec<u64>,
    summary: Option<StoredSummary>,
    recipient_e164: Option<String>,
}

impl From<StoredV1> for StoredV2 {
    fn from(v1: StoredV1) -> Self {
        StoredV2 {
            callbacks: v1.callbacks,
            events: v1.events,
            purged: v1.purged,
            summary: v1.summary,
            recipient_e164: v1.recipient_e164,
            actions: Vec::new(),
        }
    }
}

/// A [`Summary`] as stored.
#[derive(Serialize, Deserialize)]
struct StoredSummary {
    events: u64,
    first_received_at: Option<(i64, u32)>,
    last_received_at: Option<(i64, u32)>,
    representatives: Vec<StoredEvent>,
    latest_failure: Option<StoredEvent>,
}

/// Callback data as received; its decoded object is derived again from `raw` on read.
#[derive(Serialize, Deserialize, PartialEq)]
struct StoredCallback {
    raw: String,
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    kind: EventKind,
    status: Option<String>,
    url: Option<String>,
    /// Provider time and receive time as (seconds, nanoseconds): exact, so keys and answers
    /// read back the same.
    at: (i64, u32),
    received_at: (i64, u32),
    event_id: Option<String>,
    provider: Provider,
    recipient: Option<String>,
    recipient_user_id: Option<String>,
    participant: Option<String>,
    channel: Option<String>,
    failure_code: Option<String>,
    failure_reason: Option<String>,
    /// Index into the record's `callbacks`.
    callback: Option<u32>,
}

impl StoredEvent {
    fn from_timeline(e: &TimelineEvent, callbacks: &mut Vec<StoredCallback>) -> Self {
        let callback = e.callback.as_ref().map(|cb| {
            let stored = StoredCallback {
                raw: cb.raw.clone(),
                error: cb.error.clone(),
            };
            let at = callbacks
                .iter()
                .position(|c| *c == stored)
                .unwrap_or_else(|| {
                    callbacks.push(stored);
                    callbacks.len() - 1
                });
            at as u32
        });
        Self {
            kind: e.kind,
            status: e.status.as_ref().map(|s| s.as_str().to_owned()),
            url: e.url.clone(),
            at: split_time(e.at),
            received_at: split_time(e.received_at),
            event_id: e.event_id.clone(),
            provider: e.provider,
            recipient: e.recipient.clone(),
            recipient_user_id: e.recipient_user_id.clone(),
            participant: e.participant.clone(),
            channel: e.channel.clone(),
            failure_code: e.failure_code.clone(),
            failure_reason: e.failure_reason.clone(),
            callback,
        }
    }

    fn into_timeline(self, callbacks: &[CallbackData]) -> Result<TimelineEvent, StoreError> {
        let callback = match self.callback {
            None => None,
            Some(i) => Some(callbacks.get(i as usize).cloned().ok_or_else(|| {
                StoreError::Corrupt("an event names callback data the record lacks".into())
            })?),
        };
        Ok(TimelineEvent {
            kind: self.kind,
            status: self.status.map(|s| Status::parse(&s)),
            url: self.url,
            at: join_time(self.at)?,
            received_at: join_time(self.received_at)?,
            event_id: self.event_id,
            provider: self.provider,
            recipient: self.recipient,
            recipient_user_id: self.recipient_user_id,
            participant: self.participant,
            channel: self.channel,
            failure_code: self.failure_code,
            failure_reason: self.failure_reason,
            callback,
            billing: None,
            reply: None,
            opt_out: None,
        })
    }
}

fn split_time(at: DateTime<Utc>) -> (i64, u32) {
    (at.timestamp(), at.timestamp_subsec_nanos())
}

fn join_time((secs, nanos): (i64, u32)) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| StoreError::Corrupt(format!("a stored time is out of range: {secs}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(events: &[(&str, i64)]) -> MessageState {
        let mut state = None;
        for (status, at) in events {
            let mut e = Event::test_status("wamid.REC==", status, *at);
            e.at += chrono::Duration::nanoseconds(123_456_789);
            state = Some(MessageState::apply(state, e).0);
        }
        state.unwrap()
    }

    #[test]
    fn a_record_reads_back_exactly() {
        let mut s = state(&[("sent", 1), ("delivered", 2), ("failed", 3)]);
        s.events[2].failure_code = Some("131047".into());
        let s = MessageState::from_events(s.message_id.clone(), s.events, None).unwrap();
        let record = Record {
            state: Some(s),
            purged: vec![7],
            actions: vec!["act_1".into()],
        };
        let bytes = record.encode().unwrap();
        assert_eq!(Record::decode("wamid.REC==", &bytes).unwrap(), record);
    }

    #[test]
    fn callback_data_is_stored_once_per_distinct_value() {
        let three = Record {
            state: Some(state(&[("sent", 1), ("delivered", 2), ("read", 3)])),
            ..Record::default()
        };
        let bytes = three.encode().unwrap();
        let raw = br#"{"campaign":"c"}"#;
        let copies = bytes.windows(raw.len()).filter(|w| w == raw).count();
        assert_eq!(copies, 1);
        assert!(bytes.len() < 300, "{} bytes for three events", bytes.len());
    }

    #[test]
    fn a_format_1_record_reads_as_one_without_actions() {
        let s = state(&[("sent", 1), ("read", 2)]);
        let v2 = Record {
            state: Some(s),
            purged: vec![3],
            actions: vec![],
        };
        let mut bytes = v2.encode().unwrap();
        // Format 1 is format 3 without the trailing (here empty) extras, extra_of and actions.
        assert_eq!(bytes.split_off(bytes.len() - 3), [0, 0, 0]);
        bytes[1] = 1;
        assert_eq!(Record::decode("wamid.REC==", &bytes).unwrap(), v2);
    }

    #[test]
    fn a_format_2_record_reads_as_one_whose_events_carry_no_billing() {
        let s = state(&[("sent", 1), ("read", 2)]);
        let v2 = Record {
            state: Some(s),
            purged: vec![],
            actions: vec!["act_1".into()],
        };
        let mut bytes = v2.encode().unwrap();
        // Format 2 is format 3 without the trailing (here empty) extras and extra_of.
        assert_eq!(bytes.split_off(bytes.len() - 2), [0, 0]);
        bytes[1] = 2;
        let read = Record::decode("wamid.REC==", &bytes).unwrap();
        assert_eq!(read, v2);
        assert_eq!(read.state.unwrap().pricing, None);
    }

    #[test]
    fn billing_reads_back_and_is_stored_once_per_distinct_value() {
        use crate::domain::{Billing, Pricing};
        let marketing = Billing {
            pricing: Some(Pricing {
                category: Some("marketing".into()),
                kind: Some("regular".into()),
                billable: Some(true),
                pricing_model: Some("PMP".into()),
            }),
            conversation_id: None,
        };
        let mut s = None;
        for (status, at) in [("sent", 1), ("delivered", 2), ("read", 3), ("failed", 4)] {
            let mut e = Event::test_status("wamid.REC==", status, at);
            e.billing = (status != "failed").then(|| Box::new(marketing.clone()));
            s = Some(MessageState::apply_bounded(s, e, 10).0);
        }
        let record = Record {
            state: s,
            ..Record::default()
        };
        let bytes = record.encode().unwrap();
        let copies = bytes
            .windows(b"marketing".len())
            .filter(|w| w == b"marketing")
            .count();
        assert_eq!(copies, 1);
        let read = Record::decode("wamid.REC==", &bytes).unwrap();
        assert_eq!(read, record);
        assert_eq!(read.state.unwrap().pricing, marketing.pricing);
    }

    #[test]
    fn billing_on_summarized_events_reads_back() {
        use crate::domain::Billing;
        let mut s = None;
        for at in 0..30 {
            let mut e = Event::test_status("wamid.REC==", ["sent", "delivered"][at % 2], at as i64);
            e.event_id = Some(format!("e{at}"));
            e.billing = Some(Box::new(Billing {
                pricing: None,
                conversation_id: Some(format!("conv-{at}")),
            }));
            s = Some(MessageState::apply_bounded(s, e, 10).0);
        }
        let record = Record {
            state: s,
            ..Record::default()
        };
        assert!(record.state.as_ref().unwrap().summary.is_some());
        let bytes = record.encode().unwrap();
        assert_eq!(Record::decode("wamid.REC==", &bytes).unwrap(), record);
    }

    #[test]
    fn the_json_of_format_0_still_reads() {
        let s = state(&[("sent", 1), ("read", 2)]);
        let json = serde_json::to_vec(&s).unwrap();
        let record = Record::decode("wamid.REC==", &json).unwrap();
        assert_eq!(record.state.unwrap(), s);
    }

    #[test]
    fn a_newer_format_is_refused_with_a_clear_error() {
        let error = Record::decode("wamid.REC==", &[MAGIC, 9, 0]).unwrap_err();
        assert!(error.to_string().contains("newer than this flowhook reads"));
    }

    #[test]
    fn a_tombstone_still_recognizes_the_events_it_had() {
        let record = Record {
            state: Some(state(&[("sent", 1), ("read", 2)])),
            purged: vec![],
            actions: vec!["act_1".into()],
        };
        let tomb = record.tombstone();
        assert!(tomb.state.is_none());
        assert!(
            tomb.actions.is_empty(),
            "actions are purged with the message"
        );
        let mut again = Event::test_status("wamid.REC==", "read", 2);
        again.at += chrono::Duration::nanoseconds(123_456_789);
        assert!(tomb.has_seen(&again));
        let mut by_id = Event::test_status("wamid.REC==", "read", 99);
        by_id.event_id = Some("wamid.REC==-sent".into());
        assert!(tomb.has_seen(&by_id), "same provider event id");
        let new = Event::test_status("wamid.REC==", "delivered", 5);
        assert!(!tomb.has_seen(&new));
        let bytes = tomb.encode().unwrap();
        assert_eq!(Record::decode("wamid.REC==", &bytes).unwrap(), tomb);
    }
}
