#![no_main]
//! Rule templates: any text (or JSON params) parsed as a template and rendered.
use flowhook::rules::template::{Context, Template, Var};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

struct Facts;

impl Context for Facts {
    fn get(&self, var: &Var) -> Option<Value> {
        match var {
            Var::Recipient => Some(json!("+919000000000")),
            Var::Callback(p) if p.len() % 2 == 0 => Some(json!({"nested": [1, 2, {"x": p}]})),
            Var::Callback(_) => None,
            Var::EventAt => Some(json!("2026-11-21T10:00:00Z")),
            _ => Some(json!(3)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    if let Ok(t) = Template::parse(&Value::String(text)) {
        let _ = t.vars();
        let _ = t.render(&Facts);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        if let Ok(t) = Template::parse(&value) {
            let _ = t.render(&Facts);
        }
    }
});
