use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The callbackData a provider echoed back, decoded once.
///
/// `raw` is the string as received (an object sent inline is kept as its JSON text). `value` is
/// the decoded JSON object, or `None`. Callback data may be free text (Meta's
/// `biz_opaque_callback_data` is: "1744434060", "some data"), so only text that starts like
/// JSON (`{` or `[`) and does not decode to an object, or text longer than
/// `store.max_callback_bytes`, gets an `error`; any other text is kept raw without one. Its `Debug` never shows the content: callback
/// data is customer data and must not reach logs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackData {
    pub raw: String,
    pub value: Option<Map<String, Value>>,
    pub error: Option<String>,
}

impl CallbackData {
    /// Decodes what a provider sent: a string holding JSON (as BIK documents) or an inline
    /// object. `null` means there is no callback data.
    pub fn decode(input: &Value, max_bytes: usize) -> Option<Self> {
        match input {
            Value::Null => None,
            Value::String(text) => Some(Self::decode_text(text, max_bytes)),
            Value::Object(map) => {
                // The same text as the object as a `Value`, without copying the map for it.
                let raw = serde_json::to_string(map).expect("a JSON object always serializes");
                if raw.len() > max_bytes {
                    return Some(Self::too_large(raw, max_bytes));
                }
                Some(Self {
                    raw,
                    value: Some(map.clone()),
                    error: None,
                })
            }
            // A number, boolean or array sent inline is kept as its JSON text, like a string.
            other => Some(Self::decode_text(&other.to_string(), max_bytes)),
        }
    }

    /// Callback data as stored (`raw` and `error`), its object decoded again from `raw`.
    pub fn restore(raw: String, error: Option<String>) -> Self {
        let decodable = error.is_none() && raw.trim_start().starts_with('{');
        let value = match decodable.then(|| serde_json::from_str(&raw)) {
            Some(Ok(Value::Object(map))) => Some(map),
            _ => None,
        };
        Self { raw, value, error }
    }

    fn decode_text(text: &str, max_bytes: usize) -> Self {
        if text.len() > max_bytes {
            return Self::too_large(text.to_owned(), max_bytes);
        }
        let looks_like_json = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
        let (value, error) = if !looks_like_json {
            (None, None)
        } else {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => (Some(map), None),
                // Valid JSON that is not an object (an array) is data, with nothing to decode.
                Ok(_) => (None, None),
                Err(_) => (
                    None,
                    Some("callback data starts like JSON but is not valid JSON".to_owned()),
                ),
            }
        };
        Self {
            raw: text.to_owned(),
            value,
            error,
        }
    }

    fn too_large(raw: String, max_bytes: usize) -> Self {
        Self {
            raw,
            value: None,
            error: Some(format!("callback data is longer than {max_bytes} bytes")),
        }
    }
}

/// The value at a dot path (`order.id`, `lines.0.sku`) inside a JSON object.
pub fn lookup_path<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut current = root.get(parts.next()?)?;
    for part in parts {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

impl fmt::Debug for CallbackData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackData")
            .field("bytes", &self.raw.len())
            .field("decoded", &self.value.is_some())
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{lookup_path, CallbackData};

    #[test]
    fn a_json_string_is_decoded_into_an_object() {
        let cb = CallbackData::decode(&json!("{\"order_id\":\"ORD1\"}"), 4096).unwrap();
        assert_eq!(cb.value.unwrap()["order_id"], "ORD1");
        assert_eq!(cb.raw, "{\"order_id\":\"ORD1\"}");
        assert!(cb.error.is_none());
    }

    #[test]
    fn an_inline_object_is_kept_as_its_json_text() {
        let cb = CallbackData::decode(&json!({"a": 1}), 4096).unwrap();
        assert_eq!(cb.raw, "{\"a\":1}");
        assert_eq!(cb.value.unwrap()["a"], 1);
    }

    #[test]
    fn free_text_is_kept_raw_without_an_error() {
        for (input, raw) in [
            (json!("1744434060"), "1744434060"),
            (json!("some data"), "some data"),
            (json!("order=123&campaign=cart"), "order=123&campaign=cart"),
            (json!("true"), "true"),
            (json!(42), "42"),
            (json!("[1,2]"), "[1,2]"),
            (json!([1, 2]), "[1,2]"),
        ] {
            let cb = CallbackData::decode(&input, 4096).unwrap();
            assert_eq!(cb.raw, raw);
            assert!(cb.value.is_none(), "{input}");
            assert!(cb.error.is_none(), "{input}");
        }
    }

    #[test]
    fn bad_values_are_kept_raw_and_flagged() {
        let cases = [
            (json!("{\"order_id\": "), "not valid JSON"),
            (json!("  {nope}"), "not valid JSON"),
            (json!("x".repeat(5000)), "longer than 4096 bytes"),
            (
                json!(format!("{{\"a\":\"{}\"}}", "x".repeat(5000))),
                "longer than 4096 bytes",
            ),
        ];
        for (input, reason) in cases {
            let cb = CallbackData::decode(&input, 4096).unwrap();
            assert!(cb.value.is_none(), "{input}");
            assert!(cb.error.as_deref().unwrap().contains(reason), "{input}");
            assert!(!cb.raw.is_empty());
        }
    }

    #[test]
    fn null_means_no_callback_data() {
        assert!(CallbackData::decode(&json!(null), 4096).is_none());
    }

    #[test]
    fn dot_paths_reach_nested_fields() {
        let cb = CallbackData::decode(
            &json!({"order": {"id": "A", "lines": [{"sku": "S"}]}}),
            4096,
        )
        .unwrap();
        let root = cb.value.unwrap();
        assert_eq!(lookup_path(&root, "order.id").unwrap(), "A");
        assert_eq!(lookup_path(&root, "order.lines.0.sku").unwrap(), "S");
        assert!(lookup_path(&root, "order.missing").is_none());
    }

    #[test]
    fn debug_output_never_shows_the_content() {
        let cb = CallbackData::decode(&json!("{\"secret\":\"s3cr3t\"}"), 4096).unwrap();
        assert!(!format!("{cb:?}").contains("s3cr3t"));
    }
}
