// Shared by the fuzz targets (included with `#[path]`).
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use flowhook::domain::MessageState;
use flowhook::providers::ParseContext;
use flowhook::store::IngestItem;

pub fn ctx() -> ParseContext {
    ParseContext {
        received_at: DateTime::<Utc>::from_timestamp(1_795_255_200, 0).unwrap(),
        max_callback_bytes: 4096,
    }
}

/// Folds every parsed event into message states, in order then reversed, and checks the
/// state does not depend on the order.
pub fn fold(items: Vec<IngestItem>) {
    let events: Vec<_> = items
        .into_iter()
        .filter_map(|i| match i {
            IngestItem::Event(e) => Some(*e),
            _ => None,
        })
        .collect();
    let by_message = |order: &mut dyn Iterator<Item = &flowhook::domain::Event>| {
        let mut states: std::collections::BTreeMap<String, MessageState> = Default::default();
        for e in order {
            let id = e.message_id.as_str().to_owned();
            let current = states.remove(&id);
            states.insert(id, MessageState::apply(current, e.clone()).0);
        }
        states
    };
    let forward = by_message(&mut events.iter());
    let backward = by_message(&mut events.iter().rev());
    assert_eq!(forward, backward, "state depends on arrival order");
}
