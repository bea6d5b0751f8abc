//! Where follow-up calls go. Each target is one file: its `[targets.<name>]` settings, the
//! actions it offers with their params and the request each makes, where a request goes and
//! with which credential, and which of its settings are secrets. [`register!`] at the bottom
//! of this file lists them; adding a target is a new file and one line there (README,
//! "Extending").
//!
//! Credentials are not part of a request as stored: the dispatcher adds them from the
//! target's settings when it sends, so rotating a key needs no rewrite of the outbox.

pub mod params;

mod bik;
mod botika;
mod engati;
mod http;

use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::secret::Secret;

/// What a target file provides, implemented on its settings: the section's own keys (the
/// limits are added to every section by [`Section`]).
pub trait Destination: DeserializeOwned + Default + Clone + fmt::Debug + Send + Sync {
    /// The section, `[targets.<NAME>]`, and the first part of its action names.
    const NAME: &'static str;
    /// The actions it offers.
    const ACTIONS: &'static [ActionDef];
    /// Settings a rule sending here needs: `(key, whether it is set)`.
    fn required(&self) -> Vec<(&'static str, bool)>;
    /// Its credentials, by key: a shipped placeholder blocks a public bind once a rule uses it.
    fn secrets(&self) -> Vec<(&'static str, &Secret)>;
    /// Its `base_url`, if it has one (checked to be an http(s) URL when set).
    fn base_url(&self) -> Option<&str>;
    /// Where a request goes and its `Authorization` header.
    fn endpoint(&self, request: &Outbound) -> Endpoint;
}

/// A configured section, whatever its target: what [`TargetSettings`] looks up by [`Target`].
trait Configured {
    fn limits(&self) -> Limits;
    fn missing(&self) -> Vec<&'static str>;
    fn secrets(&self) -> Vec<(&'static str, &Secret)>;
    fn base_url(&self) -> Option<&str>;
    fn endpoint(&self, request: &Outbound) -> Endpoint;
}

impl<D: Destination> Configured for Section<D> {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn missing(&self) -> Vec<&'static str> {
        self.settings
            .required()
            .into_iter()
            .filter_map(|(key, set)| (!set).then_some(key))
            .collect()
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        self.settings.secrets()
    }

    fn base_url(&self) -> Option<&str> {
        self.settings.base_url()
    }

    fn endpoint(&self, request: &Outbound) -> Endpoint {
        self.settings.endpoint(request)
    }
}

/// One action: its name (`<target>.<verb>`), its params, and how its request is made.
pub struct ActionDef {
    pub name: &'static str,
    pub spec: Spec,
    /// Turns rendered params into the request. `Err` says why no valid request can be made
    /// (the action is then recorded as skipped with that reason).
    pub build: fn(Map<String, Value>, &Origin) -> Result<Request, String>,
    /// Whether a rule may give it a `secret` param (a `whsec_` key the call is signed with).
    pub signed: bool,
}

/// Which params an action takes.
pub struct Spec {
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    /// At least one of these must be set.
    pub one_of: &'static [&'static str],
    /// Params that must be tables (TOML) / objects.
    pub tables: &'static [&'static str],
}

/// What caused an action: the message and the rule.
pub struct Origin {
    pub message_id: String,
    pub rule: String,
}

/// A request as an action's builder makes it.
pub struct Request {
    /// Appended to the target's base URL (the target's [`Destination::endpoint`] decides).
    pub path: String,
    pub body: Value,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn new(path: impl Into<String>, body: Value) -> Self {
        Self {
            path: path.into(),
            body,
            headers: Vec::new(),
        }
    }
}

/// A request as the outbox keeps it, without credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    pub target: Target,
    /// Appended to the target's base URL; for Engati, the flow key; for `http.post`, the URL.
    pub path: String,
    pub body: Value,
    /// Extra headers (`http.post` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// Where one call goes.
pub struct Endpoint {
    pub url: String,
    /// The `Authorization` header, if the target takes one.
    pub authorization: Option<String>,
}

/// Per-destination limits; every `[targets.*]` section takes these keys.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The whole request, connect to last byte of the answer.
    pub timeout_ms: u64,
    /// Calls open at once.
    pub max_in_flight: usize,
    /// Calls started per second; 0 means no limit.
    pub rate_per_second: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_in_flight: 8,
            rate_per_second: 20.0,
        }
    }
}

const LIMIT_KEYS: [&str; 3] = ["timeout_ms", "max_in_flight", "rate_per_second"];

/// One `[targets.<name>]` section: the target's settings and the limits.
#[derive(Debug, Clone, Default)]
pub struct Section<S> {
    pub settings: S,
    pub limits: Limits,
}

impl<'de, S: DeserializeOwned> Deserialize<'de> for Section<S> {
    /// Splits the limit keys from the target's own (serde cannot flatten into a struct that
    /// refuses unknown keys), so that each part still refuses keys it does not know.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut own: Map<String, Value> = Map::deserialize(d)?;
        let limits: Map<String, Value> = LIMIT_KEYS
            .iter()
            .filter_map(|k| own.remove(*k).map(|v| ((*k).to_owned(), v)))
            .collect();
        Ok(Self {
            settings: keyed(own).map_err(D::Error::custom)?,
            limits: keyed(limits).map_err(D::Error::custom)?,
        })
    }
}

/// A struct from a map of its keys; an error names the key it is about. serde_json does not,
/// but each key alone does: both parts of a section default every key, so only the bad one
/// fails on its own.
fn keyed<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, String> {
    serde_json::from_value(Value::Object(map.clone())).map_err(|error| {
        let bad = map.into_iter().find(|(k, v)| {
            let alone = Map::from_iter([(k.clone(), v.clone())]);
            serde_json::from_value::<T>(Value::Object(alone)).is_err()
        });
        match bad {
            Some((key, _)) => format!("{key}: {error}"),
            None => error.to_string(),
        }
    })
}

/// A target: a `[targets.*]` section by its place in [`register!`]'s list, or a
/// `[[forwards]]` entry (`forward:<name>`), each with its own outbox queue and limits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target(u8);

/// What `forward:<name>` targets are named; their names are registered as they are first
/// seen (a forward in the config, or a stored delivery read back), so a name keeps its
/// number for the life of the process.
static FORWARD_TARGETS: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());

/// At most this many targets of both kinds (a [`Target`] is one byte).
const MAX_TARGETS: usize = u8::MAX as usize;

/// The prefix of a forward's target name.
pub const FORWARD_PREFIX: &str = "forward:";

impl Target {
    pub fn as_str(self) -> &'static str {
        let i = self.0 as usize;
        if i < NAMES.len() {
            return NAMES[i];
        }
        let forwards = FORWARD_TARGETS.read().unwrap_or_else(|e| e.into_inner());
        forwards.get(i - NAMES.len()).copied().unwrap_or("forward")
    }

    /// A target by name: a section, or a forward's `forward:<name>` (registered if new, so
    /// that a stored delivery of a forward no longer configured still reads).
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(i) = NAMES.iter().position(|n| *n == text) {
            return Some(Self(i as u8));
        }
        let name = text.strip_prefix(FORWARD_PREFIX)?;
        Self::forward(name)
    }

    /// The target of forward `name`, registered on first use; `None` past [`MAX_TARGETS`].
    pub fn forward(name: &str) -> Option<Self> {
        let full = format!("{FORWARD_PREFIX}{name}");
        let find = |list: &[&str]| list.iter().position(|n| *n == full);
        if let Some(i) = find(&FORWARD_TARGETS.read().unwrap_or_else(|e| e.into_inner())) {
            return Some(Self((NAMES.len() + i) as u8));
        }
        let mut list = FORWARD_TARGETS.write().unwrap_or_else(|e| e.into_inner());
        let i = match find(&list) {
            Some(i) => i,
            None if NAMES.len() + list.len() < MAX_TARGETS => {
                // Leaked once per distinct forward name: a handful per process.
                list.push(Box::leak(full.into_boxed_str()));
                list.len() - 1
            }
            None => return None,
        };
        Some(Self((NAMES.len() + i) as u8))
    }

    /// The forward's name, for a forward's target.
    pub fn forward_name(self) -> Option<&'static str> {
        if (self.0 as usize) < NAMES.len() {
            return None;
        }
        self.as_str().strip_prefix(FORWARD_PREFIX)
    }

    /// Every target with a queue: the sections, then the forwards registered so far.
    pub fn all() -> impl Iterator<Item = Target> {
        let forwards = FORWARD_TARGETS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        (0..NAMES.len() + forwards).map(|i| Self(i as u8))
    }

    /// The `[targets.*]` sections.
    pub fn sections() -> impl Iterator<Item = Target> {
        (0..NAMES.len()).map(|i| Self(i as u8))
    }

    /// The actions it offers (a forward offers none a rule may name).
    pub fn actions(self) -> &'static [ActionDef] {
        ACTIONS.get(self.0 as usize).copied().unwrap_or(&[])
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown target {name:?} (known: {})",
                NAMES.join(", ")
            ))
        })
    }
}

/// An action a rule can ask for: `bik.initiate_flow`, `http.post`, ...
#[derive(Clone, Copy)]
pub struct ActionKind {
    target: Target,
    def: &'static ActionDef,
}

/// What a forward's deliveries are (not an action a rule may name).
static FORWARD: ActionDef = ActionDef {
    name: "forward",
    spec: Spec {
        required: &[],
        optional: &[],
        one_of: &[],
        tables: &[],
    },
    build: |_, _| Err("a forward's delivery is made by its forward, not from params".into()),
    signed: true,
};

impl ActionKind {
    /// An action a rule may name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::all().find(|a| a.as_str() == name)
    }

    /// A delivery of a `[[forwards]]` entry, to `target` (its `forward:<name>`).
    pub fn forward(target: Target) -> Self {
        Self {
            target,
            def: &FORWARD,
        }
    }

    /// Whether it is a forward's delivery.
    pub fn is_forward(self) -> bool {
        std::ptr::eq(self.def, &FORWARD)
    }

    /// Every action of every target.
    pub fn all() -> impl Iterator<Item = ActionKind> {
        Target::all().flat_map(|target| {
            target
                .actions()
                .iter()
                .map(move |def| ActionKind { target, def })
        })
    }

    pub fn as_str(self) -> &'static str {
        self.def.name
    }

    pub fn target(self) -> Target {
        self.target
    }

    pub fn spec(self) -> &'static Spec {
        &self.def.spec
    }

    /// Whether its rules may sign it with a `secret` param.
    pub fn signed(self) -> bool {
        self.def.signed
    }

    /// The request for rendered params (see [`ActionDef::build`]).
    pub fn build(self, params: Map<String, Value>, origin: &Origin) -> Result<Outbound, String> {
        let request = (self.def.build)(params, origin)?;
        Ok(Outbound {
            target: self.target,
            path: request.path,
            body: request.body,
            headers: request.headers,
        })
    }
}

impl PartialEq for ActionKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ActionKind {}

impl fmt::Debug for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ActionKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ActionKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name == FORWARD.name {
            // Which forward is the request's target; the kind only says "a delivery".
            return Ok(Self::forward(Target(u8::MAX)));
        }
        Self::parse(&name).ok_or_else(|| D::Error::custom(format!("unknown action {name:?}")))
    }
}

/// Lists the targets: each line is `<section name>: <its settings type in its file>`.
/// Generates [`TargetSettings`] (one field per section) and the one lookup that goes from a
/// [`Target`] to its section.
macro_rules! register {
    ($($name:ident: $settings:ty),* $(,)?) => {
        const NAMES: &[&str] = &[$(<$settings as Destination>::NAME),*];
        const ACTIONS: &[&[ActionDef]] = &[$(<$settings as Destination>::ACTIONS),*];

        /// Every `[targets.*]` section.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct TargetSettings {
            $(pub $name: Section<$settings>,)*
        }

        impl TargetSettings {
            /// The section of a `[targets.*]` target; `None` for a forward.
            fn section(&self, target: Target) -> Option<&dyn Configured> {
                [$(&self.$name as &dyn Configured),*].get(target.0 as usize).copied()
            }
        }
    };
}

/// A forward's targets have no section: their limits, URL and key are the forward's own
/// (see [`crate::rules::Forward`]); asked here, they answer the defaults and nothing.
impl TargetSettings {
    pub fn limits(&self, target: Target) -> Limits {
        self.section(target)
            .map_or_else(Limits::default, |s| s.limits())
    }

    /// What a rule sending to `target` still needs set: its unset required keys.
    pub fn missing(&self, target: Target) -> Vec<&'static str> {
        self.section(target).map_or_else(Vec::new, |s| s.missing())
    }

    /// The target's credentials, by key.
    pub fn secrets(&self, target: Target) -> Vec<(&'static str, &Secret)> {
        self.section(target).map_or_else(Vec::new, |s| s.secrets())
    }

    pub fn base_url(&self, target: Target) -> Option<&str> {
        self.section(target)?.base_url()
    }

    pub fn endpoint(&self, request: &Outbound) -> Endpoint {
        match self.section(request.target) {
            Some(section) => section.endpoint(request),
            None => Endpoint {
                url: request.path.clone(),
                authorization: None,
            },
        }
    }
}

register! {
    bik: bik::Settings,
    engati: engati::Settings,
    botika: botika::Settings,
    http: http::Settings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_splits_its_limits_from_its_own_keys_and_refuses_unknown_ones() {
        let section: Section<bik::Settings> = serde_json::from_value(
            serde_json::json!({"base_url": "https://b.example", "timeout_ms": 500}),
        )
        .unwrap();
        assert_eq!(section.settings.base_url, "https://b.example");
        assert_eq!(section.limits.timeout_ms, 500);
        assert_eq!(
            section.limits.max_in_flight,
            Limits::default().max_in_flight
        );
        let error =
            serde_json::from_value::<Section<bik::Settings>>(serde_json::json!({"base_ur": "x"}))
                .unwrap_err();
        assert!(error.to_string().contains("base_ur"), "{error}");
    }

    #[test]
    fn every_action_is_named_after_its_target_and_found_by_name() {
        for kind in ActionKind::all() {
            assert!(
                kind.as_str()
                    .starts_with(&format!("{}.", kind.target().as_str())),
                "{kind}"
            );
            assert_eq!(ActionKind::parse(kind.as_str()), Some(kind));
        }
        for name in [
            "bik.initiate_flow",
            "bik.send_event",
            "bik.send_message",
            "engati.trigger_flow",
            "botika.send_flow",
            "http.post",
        ] {
            assert!(ActionKind::parse(name).is_some(), "{name}");
        }
        assert_eq!(Target::parse("engati").unwrap().as_str(), "engati");
    }
}
