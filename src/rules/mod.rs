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

pub mod lifecycle;
pub mod plan;
pub mod template;

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use crate::targets::{ActionKind, Origin, Outbound, Target};
pub use lifecycle::{ActionId, RuleName};
use template::{text_of, Context, Missing, Template, Var};

use crate::config::{decode_whsec, Secret, Settings, Trigger};
use crate::domain::{EventKind, MessageState, Status, TimelineEvent};

/// The compiled `[[rules]]`.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub on: Trigger,
    statuses: Vec<Status>,
    url_prefix: Option<String>,
    since: Option<Status>,
    after: Duration,
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
    Cancel { rule: &'a Rule },
}

/// The action to record: a request to send, or why there is none.
pub enum Step {
    Send(Outbound),
    Skip(String),
}

/// What is wrong with one key of one `[[rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules[{index}] ({name}).{key}: {problem}")]
pub struct RuleError {
    /// The entry's place in the file, from 0, and its name.
    pub index: usize,
    pub name: String,
    /// The key within the entry: `action`, `params.flow_id`, `when.callback.campaign`, ...
    pub key: String,
    pub problem: String,
}

/// A problem found in one rule, before it is placed in the file.
struct Problem {
    key: String,
    problem: String,
}

impl Problem {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl Rules {
    /// Checks every rule against the action table and the targets, and compiles them. This is
    /// the one place rules are checked: `serve` and `check-config` both come here.
    pub fn compile(settings: &Settings) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for (index, raw) in settings.rules.iter().enumerate() {
            let error = |p: Problem| RuleError {
                index,
                name: raw.name.clone(),
                key: p.key,
                problem: p.problem,
            };
            if !names.insert(raw.name.clone()) {
                errors.push(error(Problem::new(
                    "name",
                    format!("duplicate rule name {:?}", raw.name),
                )));
            }
            match Rule::compile(raw, settings) {
                Ok(rule) => rules.push(rule),
                Err(problems) => errors.extend(problems.into_iter().map(error)),
            }
        }
        if errors.is_empty() {
            Ok(Self { rules })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
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
    fn compile(
        raw: &crate::config::RuleSettings,
        settings: &Settings,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let valid_name = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid_name {
            problems.push(Problem::new("name", "must be 1 to 64 of [a-z0-9_-]"));
        }
        let statuses: Vec<Status> = raw.statuses.iter().map(|s| Status::parse(s)).collect();
        let since = raw.since.as_deref().map(Status::parse);
        match raw.on {
            Trigger::Status | Trigger::MissingStatus if statuses.is_empty() => {
                problems.push(Problem::new("statuses", "list at least one status"))
            }
            Trigger::Click if !statuses.is_empty() => {
                problems.push(Problem::new("statuses", "not used with on = \"click\""))
            }
            _ => {}
        }
        if raw.url_prefix.is_some() && raw.on != Trigger::Click {
            problems.push(Problem::new("url_prefix", "only used with on = \"click\""));
        }
        if raw.on == Trigger::MissingStatus {
            if since.is_none() {
                problems.push(Problem::new(
                    "since",
                    "required with on = \"missing_status\"",
                ));
            }
            if raw.after_seconds.is_none() {
                problems.push(Problem::new(
                    "after_seconds",
                    "required with on = \"missing_status\"",
                ));
            }
        } else {
            if raw.since.is_some() {
                problems.push(Problem::new(
                    "since",
                    "only used with on = \"missing_status\"",
                ));
            }
            if raw.after_seconds.is_some() {
                problems.push(Problem::new(
                    "after_seconds",
                    "only used with on = \"missing_status\"",
                ));
            }
        }
        let after_seconds = raw.after_seconds.unwrap_or(0);
        if after_seconds > 366 * 86_400 {
            problems.push(Problem::new("after_seconds", "at most a year"));
        }

        let mut when = Vec::new();
        for (name, expected) in &raw.when {
            let var = match Var::parse(name) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem::new(format!("when.{name}"), e.to_string()));
                    continue;
                }
            };
            if var == Var::ClickUrl && raw.on != Trigger::Click {
                problems.push(Problem::new(
                    format!("when.{name}"),
                    "only known with on = \"click\"",
                ));
            }
            let values = match expected {
                Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            if values.is_empty() || values.iter().any(|v| v.is_object() || v.is_array()) {
                problems.push(Problem::new(
                    format!("when.{name}"),
                    "expected a value or a list of values to match",
                ));
            }
            when.push((var, values.iter().map(text_of).collect()));
        }

        let action = ActionKind::parse(&raw.action);
        let mut signing_key = None;
        let mut params = raw.params.clone();
        match action {
            None => problems.push(Problem::new(
                "action",
                format!(
                    "unknown action {:?} (known: {})",
                    raw.action,
                    ActionKind::all()
                        .map(ActionKind::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Some(kind) => {
                problems.extend(check_params(kind, &params));
                let missing = settings.targets.missing(kind.target());
                if !missing.is_empty() {
                    problems.push(Problem::new(
                        "action",
                        format!(
                            "{kind} needs [targets.{}] with {} set",
                            kind.target(),
                            missing.join(", ")
                        ),
                    ));
                }
                if kind.signed() {
                    match params.remove("secret") {
                        Some(Value::String(s)) => match decode_whsec(&Secret::new(s)) {
                            Ok(key) => signing_key = Some(key),
                            Err(e) => problems.push(Problem::new("params.secret", e.to_string())),
                        },
                        Some(_) => {
                            problems.push(Problem::new("params.secret", "must be a whsec_ string"))
                        }
                        None => {}
                    }
                }
            }
        }
        let mut fields = Vec::with_capacity(params.len());
        for (key, value) in &params {
            match Template::parse(value) {
                Ok(t) => {
                    if raw.on != Trigger::Click && t.vars().contains(&&Var::ClickUrl) {
                        problems.push(Problem::new(
                            format!("params.{key}"),
                            "{{click.url}} is only known with on = \"click\"",
                        ));
                    }
                    fields.push((key.clone(), t))
                }
                Err(e) => problems.push(Problem::new(format!("params.{key}"), e.to_string())),
            }
        }
        let params = Template::Object(fields);
        match action {
            Some(action) if problems.is_empty() => Ok(Self {
                name: raw.name.clone(),
                on: raw.on,
                statuses,
                url_prefix: raw.url_prefix.clone(),
                since,
                after: Duration::seconds(after_seconds as i64),
                when,
                action,
                params,
                signing_key,
            }),
            _ => Err(problems),
        }
    }

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
            Trigger::MissingStatus => {
                if self
                    .statuses
                    .iter()
                    .any(|s| first_reaching(events, s).is_some())
                {
                    return Some(Due::Cancel { rule: self });
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
            Var::EventAt => text(Some(&crate::domain::rfc3339(self.trigger.at))),
            Var::Callback(path) => self.state.callback_field(path).cloned(),
        }
    }
}

/// Param names and shapes against the action's table.
fn check_params(kind: ActionKind, params: &Map<String, Value>) -> Vec<Problem> {
    let spec = kind.spec();
    let mut problems = Vec::new();
    for key in params.keys() {
        if !spec.required.contains(&key.as_str()) && !spec.optional.contains(&key.as_str()) {
            let mut known: Vec<&str> = spec.required.to_vec();
            known.extend(spec.optional);
            problems.push(Problem::new(
                format!("params.{key}"),
                format!("unknown key for {kind} (known: {})", known.join(", ")),
            ));
        }
    }
    for key in spec.required {
        if !params.contains_key(*key) {
            problems.push(Problem::new(
                format!("params.{key}"),
                format!("required by {kind}"),
            ));
        }
    }
    if !spec.one_of.is_empty() && !spec.one_of.iter().any(|k| params.contains_key(*k)) {
        problems.push(Problem::new(
            "params",
            format!("{kind} needs one of {}", spec.one_of.join(", ")),
        ));
    }
    for key in spec.tables {
        if let Some(value) = params.get(*key) {
            if !value.is_object() {
                problems.push(Problem::new(format!("params.{key}"), "must be a table"));
            }
        }
    }
    problems
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

    /// Rules compiled from a `[[rules]]` TOML snippet, for tests elsewhere.
    pub(crate) fn rules_for(toml: &str) -> Rules {
        let settings = Settings::from_toml_str(toml).unwrap();
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
