//! Opt-outs: a recipient stops, or resumes, marketing messages (contract section 8.2).
//!
//! Three sources say so: Meta's `user_preferences` (by `wa_id`), BIK's `optedOut` (naming the
//! campaign message, so by that message's recipient) and a reply whose whole text is one of
//! `store.opt_out_keywords`. Each becomes a [`Choice`]; a recipient's [`Preferences`] are the
//! set of its choices, and what they answer (opted out or not, since when, who said so) is a
//! function of that set: any order, any duplicates, the same answer. Where a choice names a
//! message, it is also an event of kind `opt_out` on that message's timeline.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Event, EventKind, MessageId, Provider};

/// What a recipient chose. `Stop` orders after `Resume`, so that at the same time a stop wins.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    Resume,
    Stop,
}

impl Preference {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resume => "resume",
            Self::Stop => "stop",
        }
    }
}

/// Who said so: Meta's `user_preferences`, BIK's `optedOut`, or a reply that is an opt-out
/// keyword.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OptOutSource {
    Bik,
    Keyword,
    Meta,
}

impl OptOutSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bik => "bik",
            Self::Keyword => "keyword",
            Self::Meta => "meta",
        }
    }
}

/// What an `opt_out` event on a message's timeline says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OptOut {
    /// `stop` or `resume`.
    pub value: Preference,
    /// `meta`, `bik` or `keyword`.
    pub source: OptOutSource,
}

/// One stop or resume, as a recipient's [`Preferences`] keep it. Ordered by time, then value
/// (a stop after a resume at the same instant), then the rest, so that the latest is the
/// greatest whatever order they came in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Choice {
    /// When the provider says the recipient chose.
    #[serde(with = "super::time_format")]
    pub at: DateTime<Utc>,
    pub value: Preference,
    pub source: OptOutSource,
    /// The provider's event id, or one made of what identifies it (see the adapters).
    pub event_id: String,
    /// The message it answers, where one is known.
    pub message_id: Option<String>,
}

impl Choice {
    /// The same choice, whatever message it was attributed to.
    fn same(&self, other: &Choice) -> bool {
        (self.at, self.value, self.source, &self.event_id)
            == (other.at, other.value, other.source, &other.event_id)
    }
}

/// The most choices a recipient keeps: the latest ones, which are all an answer needs.
pub const MAX_CHOICES: usize = 64;

/// Everything flowhook knows of one recipient's marketing preference: its choices, sorted
/// and distinct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// What the recipient is filed under (see [`super::recipient::lookup_key`]).
    pub recipient: String,
    pub choices: Vec<Choice>,
}

impl Preferences {
    pub fn new(recipient: impl Into<String>) -> Self {
        Self {
            recipient: recipient.into(),
            choices: Vec::new(),
        }
    }

    /// Adds a choice; whether that changed anything. The same choice attributed to different
    /// messages (a retry that arrived after its message) is kept once, with the greatest
    /// attribution, so the result does not depend on the order they came in.
    pub fn add(&mut self, choice: Choice) -> bool {
        if let Some(kept) = self.choices.iter_mut().find(|c| c.same(&choice)) {
            if choice.message_id <= kept.message_id {
                return false;
            }
            kept.message_id = choice.message_id;
            // The attribution is part of the order: keep the list sorted.
            self.choices.sort();
            return true;
        }
        // A new choice older than all of a full list would be dropped again at once.
        if self.choices.len() >= MAX_CHOICES && self.choices.first().is_some_and(|f| choice < *f) {
            return false;
        }
        let at = self.choices.partition_point(|c| *c < choice);
        self.choices.insert(at, choice);
        if self.choices.len() > MAX_CHOICES {
            self.choices.remove(0);
        }
        true
    }

    /// What `GET /v1/recipients/{recipient}` answers.
    pub fn answer(&self) -> RecipientAnswer {
        let latest = |value| self.choices.iter().rev().find(|c| c.value == value);
        let (stop, resume) = (latest(Preference::Stop), latest(Preference::Resume));
        let winner = self.choices.last();
        RecipientAnswer {
            recipient: self.recipient.clone(),
            recipient_e164: self
                .recipient
                .starts_with('+')
                .then(|| self.recipient.clone()),
            opted_out: winner.is_some_and(|c| c.value == Preference::Stop),
            opted_out_at: stop.map(|c| c.at),
            resumed_at: resume.map(|c| c.at),
            source: winner.map(|c| c.source),
            message_id: winner.and_then(|c| c.message_id.clone()),
        }
    }

    /// Whether the recipient is opted out now.
    pub fn opted_out(&self) -> bool {
        self.choices
            .last()
            .is_some_and(|c| c.value == Preference::Stop)
    }
}

/// A recipient's marketing preference, as the status API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecipientAnswer {
    /// What the recipient is filed under: its E.164 form, or the id as sent.
    pub recipient: String,
    /// `null` when the recipient is not a phone number (a business-scoped user id).
    pub recipient_e164: Option<String>,
    /// Whether its latest choice (by provider time, a stop winning a tie) is a stop.
    pub opted_out: bool,
    /// Its latest stop.
    #[serde(with = "super::time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub opted_out_at: Option<DateTime<Utc>>,
    /// Its latest resume.
    #[serde(with = "super::time_format::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resumed_at: Option<DateTime<Utc>>,
    /// Who said the latest choice: `meta`, `bik` or `keyword`.
    pub source: Option<OptOutSource>,
    /// The message the latest choice answers, where one is known.
    pub message_id: Option<String>,
}

impl RecipientAnswer {
    /// The answer for a recipient flowhook has messages for but no choice from.
    pub fn none(recipient: String) -> Self {
        Preferences::new(recipient).answer()
    }
}

/// An opt-out or resume as an adapter read it, before the store names its message.
#[derive(Debug, Clone, PartialEq)]
pub struct OptOutItem {
    pub value: Preference,
    pub source: OptOutSource,
    pub event_id: String,
    /// The message the provider names, taken as is (BIK's `messageId`: its opt-out may come
    /// before the message's first status).
    pub message: Option<MessageId>,
    /// The message it answers if that is stored (a keyword reply's `context`); else the
    /// recipient's latest message within the reply window, as for a reply.
    pub context: Option<MessageId>,
    /// The recipient as the provider wrote it, when it says (Meta's `wa_id`).
    pub recipient: Option<String>,
    /// `recipient` in E.164, worked out where it was parsed.
    pub recipient_e164: Option<String>,
    pub provider: Provider,
    pub channel: Option<String>,
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl OptOutItem {
    /// What its recipient is filed under, when it names one.
    pub fn recipient_key(&self) -> Option<String> {
        self.recipient_e164.clone().or_else(|| {
            self.recipient
                .as_deref()
                .map(super::recipient::lookup_key)
                .filter(|k| !k.is_empty())
        })
    }

    /// Attributed as a customer message from its recipient would be (see
    /// [`Incoming::latest_answered`](super::Incoming::latest_answered)); `None` when it names
    /// no recipient.
    pub fn as_incoming(&self) -> Option<super::Incoming> {
        Some(super::Incoming {
            reply: super::Reply::default(),
            context: self.context.clone(),
            from: self.recipient.clone()?,
            from_e164: self.recipient_e164.clone(),
            provider: self.provider,
            channel: self.channel.clone(),
            at: self.at,
            received_at: self.received_at,
        })
    }

    /// The choice, attributed to `message`.
    pub fn choice(&self, message: Option<&MessageId>) -> Choice {
        Choice {
            at: self.at,
            value: self.value,
            source: self.source,
            event_id: self.event_id.clone(),
            message_id: message.map(|m| m.as_str().to_owned()),
        }
    }

    /// The `opt_out` event on message `to`.
    pub fn event_on(&self, to: MessageId) -> Event {
        Event {
            message_id: to,
            provider: self.provider,
            kind: EventKind::OptOut,
            status: None,
            url: None,
            at: self.at,
            received_at: self.received_at,
            event_id: Some(self.event_id.clone()),
            recipient: self.recipient.clone(),
            recipient_e164: self.recipient_e164.clone(),
            recipient_user_id: None,
            participant: None,
            channel: self.channel.clone(),
            failure_code: None,
            failure_reason: None,
            callback: None,
            billing: None,
            reply: None,
            opt_out: Some(Box::new(OptOut {
                value: self.value,
                source: self.source,
            })),
        }
    }
}

/// Whether a reply's text is an opt-out keyword: its whole text, trimmed, equal to one of
/// `keywords` ignoring case.
pub fn is_keyword(text: Option<&str>, keywords: &[String]) -> bool {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return false;
    };
    let text = text.to_lowercase();
    keywords.iter().any(|k| k.trim().to_lowercase() == text)
}

/// The choices a message's `opt_out` events say, for its recipient (see [`key_of`]); none
/// when it has no recipient yet.
pub fn choices_on(state: &super::MessageState) -> Option<(String, Vec<Choice>)> {
    // Asked of every message a write changes: most have no opt-out, and are answered without
    // merging the timeline with its summary.
    let summarized = state.summary.iter().flat_map(|s| &s.representatives);
    if !state
        .events
        .iter()
        .chain(summarized)
        .any(|e| e.opt_out.is_some())
    {
        return None;
    }
    let choices: Vec<Choice> = state
        .known_events()
        .into_iter()
        .filter_map(|e| {
            let o = e.opt_out.as_ref()?;
            Some(Choice {
                at: e.at,
                value: o.value,
                source: o.source,
                event_id: e.event_id.clone()?,
                message_id: Some(state.message_id.as_str().to_owned()),
            })
        })
        .collect();
    if choices.is_empty() {
        return None;
    }
    Some((key_of(state)?, choices))
}

/// The recipient key of a stored message (what its choices are filed under): its E.164 form,
/// else its recipient as sent, else its business-scoped user id.
pub fn key_of(state: &super::MessageState) -> Option<String> {
    state
        .recipient_e164
        .clone()
        .or_else(|| state.recipient.as_deref().map(super::recipient::lookup_key))
        .or_else(|| state.recipient_user_id.clone())
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn choice(secs: i64, value: Preference, id: &str, message: Option<&str>) -> Choice {
        Choice {
            at: Utc.timestamp_opt(1_795_255_200 + secs, 0).unwrap(),
            value,
            source: OptOutSource::Meta,
            event_id: id.into(),
            message_id: message.map(str::to_owned),
        }
    }

    #[test]
    fn the_latest_choice_wins_and_a_stop_wins_a_tie() {
        let mut p = Preferences::new("+919090909090");
        assert!(p.add(choice(10, Preference::Stop, "a", None)));
        assert!(p.add(choice(20, Preference::Resume, "b", None)));
        let answer = p.answer();
        assert!(!answer.opted_out);
        assert_eq!(answer.opted_out_at, Some(p.choices[0].at));
        assert_eq!(answer.resumed_at, Some(p.choices[1].at));
        assert!(p.add(choice(20, Preference::Stop, "c", Some("wamid.X"))));
        let answer = p.answer();
        assert!(answer.opted_out);
        assert_eq!(answer.message_id.as_deref(), Some("wamid.X"));
        assert_eq!(answer.recipient_e164.as_deref(), Some("+919090909090"));
        assert!(
            !p.add(choice(20, Preference::Stop, "c", None)),
            "a duplicate"
        );
    }

    #[test]
    fn keywords_match_the_whole_text_in_any_case() {
        let keywords = ["STOP".to_owned(), "UNSUBSCRIBE".to_owned()];
        assert!(is_keyword(Some(" stop\n"), &keywords));
        assert!(is_keyword(Some("Unsubscribe"), &keywords));
        assert!(!is_keyword(Some("please stop"), &keywords));
        assert!(!is_keyword(Some(""), &keywords));
        assert!(!is_keyword(None, &keywords));
    }

    proptest! {
        /// Contract section 8.2: the answer is a function of the set of choices.
        #[test]
        fn any_order_and_any_duplicates_give_the_same_preferences(
            picks in prop::collection::vec((0i64..6, any::<bool>(), 0u8..4, any::<bool>()), 1..12),
            seed in any::<u64>(),
        ) {
            let choices: Vec<Choice> = picks
                .iter()
                .map(|(t, stop, id, named)| {
                    let value = if *stop { Preference::Stop } else { Preference::Resume };
                    let id = format!("e{id}-{t}-{stop}");
                    choice(*t, value, &id, named.then_some("wamid.M"))
                })
                .collect();
            let mut once = Preferences::new("+1");
            for c in &choices {
                once.add(c.clone());
            }
            // Shuffled, every choice twice, the copies attributed or not.
            let mut shuffled: Vec<Choice> = choices.iter().cloned().chain(choices.iter().map(|c| {
                Choice { message_id: None, ..c.clone() }
            })).collect();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut other = Preferences::new("+1");
            for c in shuffled {
                other.add(c);
            }
            prop_assert_eq!(&once, &other);
            prop_assert_eq!(once.answer(), other.answer());
        }
    }
}
