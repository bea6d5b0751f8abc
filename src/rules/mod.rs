//! Rules: when a message's timeline satisfies a `[[rules]]` entry, which follow-up to queue.
//!
//! Evaluation is a pure function of the message state (its set of events), like the state
//! itself: the store asks [`Rules::due`] after every change, inside the same transaction, and
//! queues each answer at most once per message and rule (the action id is derived from both).
//!
//! - `on = "status"` holds once the timeline has a status event in `statuses`; the earliest
//!   such event is the trigger (`{{status}}`, `{{event.at}}`).
//! - `on = "click"` holds once it has a click whose URL starts with `url_prefix`.
//! - `on = "missing_status"` is a timer: once `since` is reached it is due `after_seconds`
//!   after the event that reached it, and it is cancelled as soon as any of `statuses` is
//!   reached. A status counts as reached by a later one on the `sent < delivered < read` path
//!   (a read message was delivered).

mod compile;
pub mod forward;
pub mod lifecycle;
pub mod plan;
pub mod template;

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use crate::targets::{ActionKind, Origin, Outbound, Target};
pub use compile::RuleError;
pub use forward::Forward;
pub use lifecycle::{ActionId, RuleName};
use template::{text_of, Context, Missing, Template, Var};

use crate::config::Trigger;
use crate::domain::{Event, EventKind, MessageState, Status, TimelineEvent};

/// The compiled `[[rules]]`.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    /// `[[forwards]]`, compiled with the rules (they share `when` and the outbox).
    forwards: Vec<Forward>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub on: Trigger,
    statuses: Vec<Status>,
    url_prefix: Option<String>,
    reply_payloads: Vec<String>,
    since: Option<Status>,
    after: Duration,
    /// A `missing_status` timer is also cancelled by a reply.
    cancel_on_reply: bool,
    /// A `missing_status` timer is also cancelled by an opt-out answering the message.
    cancel_on_opt_out: bool,
    /// Its actions are skipped, not sent, while the message's recipient is opted out.
    pub skip_opted_out: bool,
    when: Vec<(Var, Vec<String>)>,
    pub action: ActionKind,
    params: Template,
    /// `http.post`: the Standard Webhooks key the request is signed with.
    signing_key: Option<Vec<u8>>,
}

/// What a rule asks for a message right now.
pub enum Due<'a> {
    /// Queue the action (for a timer: at `at`); [`Rule::step`] makes its request, which the
    /// store asks for only when the action does not exist yet.
    Fire {
        rule: &'a Rule,
        at: Option<DateTime<Utc>>,
        trigger: &'a TimelineEvent,
    },
    /// A timer whose awaited status has been reached: cancel it if it is still waiting.
    Cancel {
        rule: &'a Rule,
        /// Why, for the action's `last_error`.
        reason: &'static str,
    },
}

/// The action to record: a request to send, or why there is none.
pub enum Step {
    Send(Outbound),
    Skip(String),
}

impl Rules {
    /// Whether there are no rules (forwards aside).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The ids the rules' actions for a message have (at most one per rule).
    pub fn action_ids(&self, message_id: &str) -> Vec<ActionId> {
        self.rules
            .iter()
            .map(|r| action_id(message_id, &r.name))
            .collect()
    }

    /// The forwards.
    pub fn forwards(&self) -> &[Forward] {
        &self.forwards
    }

    /// What is allowed but worth saying at start and by `check-config` (a forward over plain
    /// http to another host).
    pub fn warnings(&self) -> Vec<String> {
        self.forwards.iter().filter_map(Forward::warning).collect()
    }

    /// The forward a target belongs to, if it is one that is configured.
    pub fn forward_of(&self, target: Target) -> Option<&Forward> {
        self.forwards.iter().find(|f| f.target == target)
    }

    /// The deliveries `event`, just accepted, asks of the forwards; `state` is its message
    /// after it.
    pub fn forwarded(
        &self,
        state: &MessageState,
        event: &Event,
        now: DateTime<Utc>,
    ) -> Vec<lifecycle::Action> {
        self.forwards
            .iter()
            .filter_map(|f| f.delivery(state, event, now))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The targets some rule sends to.
    pub fn targets(&self) -> HashSet<Target> {
        self.rules.iter().map(|r| r.action.target()).collect()
    }

    /// Every rule that holds for this state, with what it asks for.
    pub fn due<'a>(&'a self, state: &'a MessageState) -> Vec<Due<'a>> {
        let events = state.known_events();
        self.rules
            .iter()
            .filter_map(|r| r.due(state, &events))
            .collect()
    }
}

/// The id of the action a rule queues for a message: the same every time, so the outbox
/// holds at most one per pair, and the `Idempotency-Key` of every attempt.
pub fn action_id(message_id: &str, rule: &str) -> ActionId {
    let digest = Sha256::new()
        .chain_update(message_id.as_bytes())
        .chain_update([0])
        .chain_update(rule.as_bytes())
        .finalize();
    ActionId::new(format!("act_{}", hex::encode(&digest[..12])))
}

impl Rule {
    pub fn signing_key(&self) -> Option<&[u8]> {
        self.signing_key.as_deref()
    }

    /// `events` is `state.known_events()`, worked out once for all rules.
    fn due<'a>(&'a self, state: &'a MessageState, events: &[&'a TimelineEvent]) -> Option<Due<'a>> {
        let (trigger, at) = match self.on {
            Trigger::Status => (
                events.iter().copied().find(|e| {
                    e.kind == EventKind::Status
                        && e.status.as_ref().is_some_and(|s| self.statuses.contains(s))
                })?,
                None,
            ),
            Trigger::Click => (
                events.iter().copied().find(|e| {
                    e.kind == EventKind::Click
                        && e.url.as_deref().is_some_and(|u| {
                            self.url_prefix.as_deref().is_none_or(|p| u.starts_with(p))
                        })
                })?,
                None,
            ),
            Trigger::Reply => (
                events.iter().copied().find(|e| {
                    e.kind == EventKind::Reply
                        && (self.reply_payloads.is_empty()
                            || e.reply
                                .as_ref()
                                .and_then(|r| r.payload.as_ref())
                                .is_some_and(|p| {
                                    self.reply_payloads.iter().any(|wanted| wanted == p)
                                }))
                })?,
                None,
            ),
            Trigger::MissingStatus => {
                if self
                    .statuses
                    .iter()
                    .any(|s| first_reaching(events, s).is_some())
                {
                    return Some(Due::Cancel {
                        rule: self,
                        reason: "cancelled: the awaited status arrived in time",
                    });
                }
                // A reply means the message was read (contract section 8.1).
                let read_by_reply = |s: &Status| {
                    state.replied_at.is_some()
                        && matches!(s, Status::Sent | Status::Delivered | Status::Read)
                };
                if self.statuses.iter().any(read_by_reply) {
                    return Some(Due::Cancel {
                        rule: self,
                        reason: "cancelled: the customer replied, so the message was read",
                    });
                }
                if self.cancel_on_reply && state.replied_at.is_some() {
                    return Some(Due::Cancel {
                        rule: self,
                        reason: "cancelled: the customer replied (cancel_on)",
                    });
                }
                if self.cancel_on_opt_out && state.opted_out_at.is_some() {
                    return Some(Due::Cancel {
                        rule: self,
                        reason: "cancelled: the recipient opted out (cancel_on)",
                    });
                }
                let anchor = first_reaching(events, self.since.as_ref()?)?;
                (anchor, Some(anchor.at + self.after))
            }
        };
        let facts = Facts { state, trigger };
        let holds = self.when.iter().all(|(var, accepted)| {
            facts
                .get(var)
                .is_some_and(|v| accepted.contains(&text_of(&v)))
        });
        holds.then_some(Due::Fire {
            rule: self,
            at,
            trigger,
        })
    }

    /// The request this rule makes for a message, given the event that triggered it, or why
    /// it makes none.
    pub fn step(&self, state: &MessageState, trigger: &TimelineEvent) -> Step {
        match self.params.render(&Facts { state, trigger }) {
            Err(Missing(var)) => Step::Skip(format!("missing field: {var}")),
            Ok(Value::Object(params)) => self.build(params, state),
            Ok(_) => Step::Skip("params did not render to a table".into()),
        }
    }

    fn build(&self, params: Map<String, Value>, state: &MessageState) -> Step {
        let origin = Origin {
            message_id: state.message_id.as_str().to_owned(),
            rule: self.name.clone(),
        };
        match self.action.build(params, &origin) {
            Ok(request) => Step::Send(request),
            Err(reason) => Step::Skip(reason),
        }
    }

    /// The statuses whose arrival cancels a `missing_status` timer.
    pub fn awaited(&self) -> &[Status] {
        match self.on {
            Trigger::MissingStatus => &self.statuses,
            _ => &[],
        }
    }
}

/// The earliest event by which a message reached `status`: that status itself, or for
/// `sent`/`delivered`, a later one on the `sent < delivered < read` path.
pub fn reached<'a>(state: &'a MessageState, status: &Status) -> Option<&'a TimelineEvent> {
    first_reaching(&state.known_events(), status)
}

/// [`reached`] among events already in timeline order.
fn first_reaching<'a>(events: &[&'a TimelineEvent], status: &Status) -> Option<&'a TimelineEvent> {
    events.iter().copied().find(|e| match &e.status {
        Some(s) if e.kind == EventKind::Status => {
            s == status || (status.rank() > 0 && s.rank() > status.rank())
        }
        _ => false,
    })
}

/// Variable values for one message and the event that triggered the rule.
struct Facts<'a> {
    state: &'a MessageState,
    trigger: &'a TimelineEvent,
}

impl Context for Facts<'_> {
    fn get(&self, var: &Var) -> Option<Value> {
        let text = |s: Option<&str>| s.map(|s| Value::String(s.to_owned()));
        match var {
            Var::MessageId => text(Some(self.state.message_id.as_str())),
            Var::Recipient => text(self.state.recipient.as_deref()),
            Var::Status => text(
                self.trigger
                    .status
                    .as_ref()
                    .or(self.state.status.as_ref())
                    .map(Status::as_str),
            ),
            Var::Channel => text(self.state.channel.as_deref()),
            Var::Provider => text(Some(self.state.provider.as_str())),
            Var::ClickUrl => text(self.trigger.url.as_deref()),
            Var::ReplyText => text(self.trigger.reply.as_ref()?.text.as_deref()),
            Var::ReplyPayload => text(self.trigger.reply.as_ref()?.payload.as_deref()),
            Var::ReplyType => text(Some(self.trigger.reply.as_ref()?.kind.as_str())),
            Var::EventAt => text(Some(&crate::domain::rfc3339(self.trigger.at))),
            Var::Callback(path) => self.state.callback_field(path).cloned(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::{CallbackData, Event};

    fn state(statuses: &[(&str, i64)]) -> MessageState {
        let mut state = None;
        for (status, secs) in statuses {
            let event = Event {
                event_id: None,
                callback: CallbackData::decode(&json!({"qty": 3, "campaign": "c"}), 4096),
                ..Event::test_status("wamid.R==", status, *secs)
            };
            state = Some(MessageState::apply(state, event).0);
        }
        state.unwrap()
    }

    fn rules(toml: &str) -> Rules {
        rules_for(toml)
    }

    /// One `http.post` rule, `on-read`, to a port nothing listens on: for store tests that
    /// need an action queued.
    pub(crate) fn on_read() -> Rules {
        rules_for(
            r#"
[[rules]]
name = "on-read"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "http://127.0.0.1:9/hook", body = { id = "{{message_id}}" } }
"#,
        )
    }

    /// Rules compiled from a `[[rules]]` TOML snippet, for tests elsewhere.
    pub(crate) fn rules_for(toml: &str) -> Rules {
        let settings = crate::config::Settings::from_toml_str(toml).unwrap();
        Rules::compile(&settings).unwrap()
    }

    const TIMER: &str = r#"
[[rules]]
name = "t"
on = "missing_status"
statuses = ["read"]
since = "delivered"
after_seconds = 60
action = "http.post"
params = { url = "http://x/{{callback.qty}}", body = { at = "{{event.at}}" } }
"#;

    #[test]
    fn a_later_status_on_the_path_counts_as_reached() {
        let s = state(&[("read", 5)]);
        assert!(reached(&s, &Status::Delivered).is_some());
        assert!(reached(&s, &Status::Sent).is_some());
        assert!(reached(&s, &Status::Failed).is_none());
        let failed = state(&[("failed", 1)]);
        assert!(reached(&failed, &Status::Sent).is_none());
    }

    #[test]
    fn a_timer_is_due_after_since_and_cancelled_by_an_awaited_status_in_any_order() {
        let rules = rules(TIMER);
        let delivered = state(&[("sent", 1), ("delivered", 10)]);
        match rules.due(&delivered).as_slice() {
            [Due::Fire {
                rule,
                at: Some(at),
                trigger,
            }] => {
                let Step::Send(request) = rule.step(&delivered, trigger) else {
                    panic!("expected a request");
                };
                assert_eq!(*at, Utc.timestamp_opt(1_795_255_200 + 70, 0).unwrap());
                assert_eq!(request.path, "http://x/3");
                assert_eq!(request.body, json!({"at": "2026-11-21T10:00:10Z"}));
            }
            _ => panic!("expected a timer"),
        }
        // Read before delivered, or without it: nothing to wait for.
        for order in [
            vec![("read", 20), ("delivered", 10)],
            vec![("delivered", 10), ("read", 20)],
            vec![("read", 20)],
        ] {
            assert!(matches!(
                rules.due(&state(&order)).as_slice(),
                [Due::Cancel { .. }]
            ));
        }
        assert!(rules.due(&state(&[("sent", 1)])).is_empty());
    }

    #[test]
    fn when_compares_text_forms_and_lists_mean_any_of() {
        let r = rules(
            r#"
[[rules]]
name = "w"
on = "status"
statuses = ["delivered"]
when = { "callback.qty" = ["2", 3], "channel" = "whatsapp" }
action = "http.post"
params = { url = "http://x", body = {} }
"#,
        );
        assert_eq!(r.due(&state(&[("delivered", 1)])).len(), 1);
        assert!(r.due(&state(&[("sent", 1)])).is_empty());
        let other = rules(
            r#"
[[rules]]
name = "w"
on = "status"
statuses = ["delivered"]
when = { "callback.campaign" = "other" }
action = "http.post"
params = { url = "http://x", body = {} }
"#,
        );
        assert!(other.due(&state(&[("delivered", 1)])).is_empty());
    }

    #[test]
    fn action_ids_are_stable_per_message_and_rule() {
        assert_eq!(action_id("m", "r"), action_id("m", "r"));
        assert_ne!(action_id("m", "r"), action_id("m", "r2"));
        assert_ne!(action_id("m\0r", ""), action_id("m", "\0r"));
        assert!(action_id("m", "r").starts_with("act_"));
    }
}
