//! Helpers the targets share to turn rendered params into requests.

use serde_json::{json, Map, Value};

/// A JSON value as text: strings as they are, anything else as JSON.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An absolute `http://` or `https://` URL (as far as flowhook checks).
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Characters escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one URL path segment.
pub fn path_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// `snake_case` params become the request's `camelCase` fields; nested values pass through.
pub fn camel_object(params: Map<String, Value>) -> Value {
    Value::Object(params.into_iter().map(|(k, v)| (camel(&k), v)).collect())
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes a table param: empty when absent, an error when it is not a table (check-config
/// refuses that, so only a bug can get here).
pub fn take_table(
    params: &mut Map<String, Value>,
    key: &str,
) -> Result<Map<String, Value>, String> {
    match params.remove(key) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(format!("{key} must be a table")),
    }
}

/// `{key: [string]}`: a single value becomes a one-element list and numbers and booleans
/// become their text.
pub fn string_lists(map: Map<String, Value>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(k, v)| {
                let list = match v {
                    Value::Array(items) => items.iter().map(|i| json!(text_of(i))).collect(),
                    other => vec![json!(text_of(&other))],
                };
                (k, Value::Array(list))
            })
            .collect(),
    )
}
