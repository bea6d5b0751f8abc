//! Checking and compiling `[[rules]]`: every problem names the rule and the key.

use std::collections::HashSet;

use chrono::Duration;
use serde_json::{Map, Value};

use super::template::{text_of, Template, Var};
use super::{ActionKind, Forward, Rule, Rules, Target};
use crate::config::{decode_whsec, CancelOn, Secret, Settings, Trigger};
use crate::domain::EventKind;
use crate::domain::Status;
use crate::targets::params::is_http_url;

/// What is wrong with one key of one `[[rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{section}[{index}] ({name}).{key}: {problem}")]
pub struct RuleError {
    /// `rules` or `forwards`.
    pub section: &'static str,
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
                section: "rules",
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
        let mut forwards = Vec::new();
        let mut forward_names = HashSet::new();
        for (index, raw) in settings.forwards.iter().enumerate() {
            let error = |p: Problem| RuleError {
                section: "forwards",
                index,
                name: raw.name.clone(),
                key: p.key,
                problem: p.problem,
            };
            if !forward_names.insert(raw.name.clone()) {
                errors.push(error(Problem::new(
                    "name",
                    format!("duplicate forward name {:?}", raw.name),
                )));
            } else if names.contains(&raw.name) {
                // `GET /v1/actions?rule=` lists a forward's deliveries by its name.
                errors.push(error(Problem::new(
                    "name",
                    format!(
                        "{:?} is a rule's name too; a forward's must be its own",
                        raw.name
                    ),
                )));
            }
            match compile_forward(raw) {
                Ok(forward) => forwards.push(forward),
                Err(problems) => errors.extend(problems.into_iter().map(error)),
            }
        }
        if errors.is_empty() {
            Ok(Self { rules, forwards })
        } else {
            Err(errors)
        }
    }
}

/// Whether `name` is 1 to 64 of `[a-z0-9_-]`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Checks and compiles one `[[forwards]]` entry.
fn compile_forward(raw: &crate::config::ForwardSettings) -> Result<Forward, Vec<Problem>> {
    use crate::config::ForwardEvent;
    let mut problems = Vec::new();
    if !valid_name(&raw.name) {
        problems.push(Problem::new("name", "must be 1 to 64 of [a-z0-9_-]"));
    }
    if !is_http_url(&raw.url) {
        problems.push(Problem::new(
            "url",
            format!("{:?} is not an http(s) URL", raw.url),
        ));
    }
    let key = match &raw.secret {
        None => {
            problems.push(Problem::new(
                "secret",
                "required: the Standard Webhooks key (whsec_...) deliveries are signed with",
            ));
            None
        }
        Some(secret) if secret.is_placeholder() => {
            problems.push(Problem::new(
                "secret",
                "empty or a placeholder: set a key of your own (whsec_ and base64)",
            ));
            None
        }
        Some(secret) => match decode_whsec(secret) {
            Ok(key) => Some(key),
            Err(e) => {
                problems.push(Problem::new("secret", e.to_string()));
                None
            }
        },
    };
    if raw.events.is_empty() {
        problems.push(Problem::new(
            "events",
            "list at least one of status, click, reply, opt_out (or leave it out for all)",
        ));
    }
    let mut events: Vec<EventKind> = raw
        .events
        .iter()
        .map(|e| match e {
            ForwardEvent::Status => EventKind::Status,
            ForwardEvent::Click => EventKind::Click,
            ForwardEvent::Reply => EventKind::Reply,
            ForwardEvent::OptOut => EventKind::OptOut,
        })
        .collect();
    events.sort();
    events.dedup();
    let (when, when_problems) = compile_when(&raw.when, None);
    problems.extend(when_problems);
    let limits = raw.limits();
    problems.extend(check_limits(&limits));
    let target = Target::forward(&raw.name);
    if target.is_none() {
        problems.push(Problem::new("name", "too many forwards (at most 200)"));
    }
    match (target, key) {
        (Some(target), Some(key)) if problems.is_empty() => Ok(Forward {
            name: raw.name.clone(),
            target,
            events,
            when,
            url: raw.url.clone(),
            key,
            limits,
        }),
        _ => Err(problems),
    }
}

/// The problems of a forward's limits (a target's are checked with the config).
fn check_limits(limits: &crate::targets::Limits) -> Vec<Problem> {
    let mut problems = Vec::new();
    if limits.timeout_ms == 0 {
        problems.push(Problem::new("timeout_ms", "must be positive"));
    }
    if limits.max_in_flight == 0 {
        problems.push(Problem::new("max_in_flight", "must be at least 1"));
    }
    if !(limits.rate_per_second >= 0.0 && limits.rate_per_second.is_finite()) {
        problems.push(Problem::new(
            "rate_per_second",
            "must be 0 (no limit) or positive",
        ));
    }
    problems
}

/// Compiles `when` matchers; `on` is the rule's trigger (`None` for a forward, which may use
/// any variable: one its event lacks simply does not match).
fn compile_when(
    raw: &std::collections::BTreeMap<String, Value>,
    on: Option<Trigger>,
) -> (Vec<(Var, Vec<String>)>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut when = Vec::new();
    for (name, expected) in raw {
        let var = match Var::parse(name) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem::new(format!("when.{name}"), e.to_string()));
                continue;
            }
        };
        if let Some(on) = on {
            if var == Var::ClickUrl && on != Trigger::Click {
                problems.push(Problem::new(
                    format!("when.{name}"),
                    "only known with on = \"click\"",
                ));
            }
            if var.is_reply() && on != Trigger::Reply {
                problems.push(Problem::new(
                    format!("when.{name}"),
                    "only known with on = \"reply\"",
                ));
            }
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
    (when, problems)
}

impl Rule {
    fn compile(
        raw: &crate::config::RuleSettings,
        settings: &Settings,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        if !valid_name(&raw.name) {
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
            Trigger::Reply if !statuses.is_empty() => {
                problems.push(Problem::new("statuses", "not used with on = \"reply\""))
            }
            _ => {}
        }
        if !raw.reply_payloads.is_empty() && raw.on != Trigger::Reply {
            problems.push(Problem::new(
                "reply_payloads",
                "only used with on = \"reply\"",
            ));
        }
        if !raw.cancel_on.is_empty() && raw.on != Trigger::MissingStatus {
            problems.push(Problem::new(
                "cancel_on",
                "only used with on = \"missing_status\"",
            ));
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

        let (when, when_problems) = compile_when(&raw.when, Some(raw.on));
        problems.extend(when_problems);

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
                    if raw.on != Trigger::Reply && t.vars().iter().any(|v| v.is_reply()) {
                        problems.push(Problem::new(
                            format!("params.{key}"),
                            "{{reply.*}} is only known with on = \"reply\"",
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
                reply_payloads: raw.reply_payloads.clone(),
                since,
                cancel_on_reply: raw.cancel_on.contains(&CancelOn::Reply),
                cancel_on_opt_out: raw.cancel_on.contains(&CancelOn::OptOut),
                skip_opted_out: raw.skip_opted_out,
                after: Duration::seconds(after_seconds as i64),
                when,
                action,
                params,
                signing_key,
            }),
            _ => Err(problems),
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
