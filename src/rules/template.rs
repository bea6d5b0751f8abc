//! `{{...}}` templates in rule params, parsed once at startup and rendered per message.
//!
//! A string that is exactly one placeholder keeps the JSON type of what it names
//! (`"{{callback.qty}}"` renders as the number `3`); placeholders inside longer text are
//! interpolated as text. A placeholder whose value is missing (or `null`) makes the render fail
//! with the variable's name, so that the action is recorded as skipped rather than sent half-empty.

use std::fmt;

use serde_json::{Map, Value};

/// A variable a template or a `when` matcher may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    MessageId,
    Recipient,
    Status,
    Channel,
    Provider,
    ClickUrl,
    EventAt,
    /// The triggering reply's text, payload and type (`on = "reply"`).
    ReplyText,
    ReplyPayload,
    ReplyType,
    /// `callback.<dot.path>` into the decoded callback data.
    Callback(String),
}

impl Var {
    /// One of the triggering reply's (`reply.*`).
    pub fn is_reply(&self) -> bool {
        matches!(self, Self::ReplyText | Self::ReplyPayload | Self::ReplyType)
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        let var = match name {
            "message_id" => Self::MessageId,
            "recipient" => Self::Recipient,
            "status" => Self::Status,
            "channel" => Self::Channel,
            "provider" => Self::Provider,
            "click.url" => Self::ClickUrl,
            "event.at" => Self::EventAt,
            "reply.text" => Self::ReplyText,
            "reply.payload" => Self::ReplyPayload,
            "reply.type" => Self::ReplyType,
            other => match other.strip_prefix("callback.") {
                Some(path) if !path.is_empty() && path.split('.').all(|p| !p.is_empty()) => {
                    Self::Callback(path.to_owned())
                }
                _ => {
                    return Err(format!(
                        "unknown variable {name:?} (known: message_id, recipient, status, channel, \
                         provider, click.url, event.at, reply.text, reply.payload, reply.type, callback.<path>)"
                    ))
                }
            },
        };
        Ok(var)
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageId => f.write_str("message_id"),
            Self::Recipient => f.write_str("recipient"),
            Self::Status => f.write_str("status"),
            Self::Channel => f.write_str("channel"),
            Self::Provider => f.write_str("provider"),
            Self::ClickUrl => f.write_str("click.url"),
            Self::EventAt => f.write_str("event.at"),
            Self::ReplyText => f.write_str("reply.text"),
            Self::ReplyPayload => f.write_str("reply.payload"),
            Self::ReplyType => f.write_str("reply.type"),
            Self::Callback(path) => write!(f, "callback.{path}"),
        }
    }
}

/// Where a render finds variable values.
pub trait Context {
    /// The value, or `None` when the message lacks it.
    fn get(&self, var: &Var) -> Option<Value>;
}

/// A variable the message lacks; the render stops at the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub Var);

/// A JSON value with its placeholders parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Literal(Value),
    /// A string that is one placeholder: renders as the value itself, any JSON type.
    Whole(Var),
    /// Text with placeholders: renders as a string.
    Text(Vec<Piece>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

impl Template {
    pub fn parse(value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(s) => Self::parse_str(s)?,
            Value::Array(items) => {
                Self::Array(items.iter().map(Self::parse).collect::<Result<_, _>>()?)
            }
            Value::Object(map) => Self::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::parse(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Self::Literal(other.clone()),
        })
    }

    fn parse_str(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(format!("empty placeholder in {text:?}"));
            }
            pieces.push(Piece::Var(Var::parse(name)?));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("unopened placeholder in {text:?}"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(match pieces.as_slice() {
            [] => Self::Literal(Value::String(String::new())),
            [Piece::Var(v)] => Self::Whole(v.clone()),
            [Piece::Text(t)] => Self::Literal(Value::String(t.clone())),
            _ => Self::Text(pieces),
        })
    }

    /// Every variable the template names, in order.
    pub fn vars(&self) -> Vec<&Var> {
        let mut out = Vec::new();
        self.collect_vars(&mut out);
        out
    }

    fn collect_vars<'a>(&'a self, out: &mut Vec<&'a Var>) {
        match self {
            Self::Literal(_) => {}
            Self::Whole(v) => out.push(v),
            Self::Text(pieces) => out.extend(pieces.iter().filter_map(|p| match p {
                Piece::Var(v) => Some(v),
                Piece::Text(_) => None,
            })),
            Self::Array(items) => items.iter().for_each(|t| t.collect_vars(out)),
            Self::Object(fields) => fields.iter().for_each(|(_, t)| t.collect_vars(out)),
        }
    }

    pub fn render(&self, ctx: &dyn Context) -> Result<Value, Missing> {
        let get = |var: &Var| match ctx.get(var) {
            None | Some(Value::Null) => Err(Missing(var.clone())),
            Some(value) => Ok(value),
        };
        Ok(match self {
            Self::Literal(v) => v.clone(),
            Self::Whole(var) => get(var)?,
            Self::Text(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Var(var) => out.push_str(&text_of(&get(var)?)),
                    }
                }
                Value::String(out)
            }
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(ctx)?)))
                    .collect::<Result<Map<_, _>, _>>()?,
            ),
        })
    }
}

pub use crate::targets::params::text_of;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Fixed;

    impl Context for Fixed {
        fn get(&self, var: &Var) -> Option<Value> {
            match var {
                Var::Recipient => Some(json!("+919000000000")),
                Var::Callback(p) if p == "qty" => Some(json!(3)),
                Var::Callback(p) if p == "order.id" => Some(json!("A-1")),
                Var::Callback(p) if p == "gone" => Some(Value::Null),
                _ => None,
            }
        }
    }

    fn render(value: Value) -> Result<Value, Missing> {
        Template::parse(&value).unwrap().render(&Fixed)
    }

    #[test]
    fn a_single_placeholder_keeps_its_type_and_text_interpolates() {
        assert_eq!(render(json!("{{callback.qty}}")), Ok(json!(3)));
        assert_eq!(render(json!("{{ callback.qty }}")), Ok(json!(3)));
        assert_eq!(
            render(json!({"a": ["x{{callback.qty}}y", "{{callback.order.id}}"], "n": 1})),
            Ok(json!({"a": ["x3y", "A-1"], "n": 1}))
        );
        assert_eq!(
            render(json!("{{recipient}}/{{callback.order.id}}")),
            Ok(json!("+919000000000/A-1"))
        );
    }

    #[test]
    fn a_missing_or_null_value_names_the_variable() {
        assert_eq!(
            render(json!({"x": "{{callback.order_id}}"})),
            Err(Missing(Var::Callback("order_id".into())))
        );
        assert_eq!(
            render(json!("id {{callback.gone}}")),
            Err(Missing(Var::Callback("gone".into())))
        );
    }

    #[test]
    fn bad_placeholders_are_refused_with_the_text() {
        for bad in ["{{nope}}", "{{callback.}}", "a {{recipient", "{{}}", "x}}"] {
            let error = Template::parse(&json!(bad)).unwrap_err();
            assert!(!error.is_empty(), "{bad}");
        }
        assert!(Template::parse(&json!("{{callback..x}}")).is_err());
    }

    #[test]
    fn vars_lists_every_placeholder() {
        let t =
            Template::parse(&json!({"a": "{{recipient}}", "b": ["{{click.url}} {{event.at}}"]}))
                .unwrap();
        let names: Vec<String> = t.vars().iter().map(|v| v.to_string()).collect();
        assert_eq!(names, ["recipient", "click.url", "event.at"]);
    }
}
