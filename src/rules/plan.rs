//! What a change of a message asks of the outbox, decided without a store: the rules that now
//! hold create their action (queued, or skipped with the reason), and timers whose awaited
//! status arrived are cancelled. The store looks up existing actions for it and persists the
//! answer in the same commit as the events.

use chrono::{DateTime, Utc};

use super::lifecycle::{Action, ActionOutcome, ActionState, RuleName};
use super::{action_id, Due, Rules, Step};
use crate::domain::MessageState;

/// One change to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A new action, `Pending` (queued) or `Skipped`.
    Create(Box<Action>),
    /// A timer that will not fire.
    Cancel { old: Box<Action>, new: Box<Action> },
}

impl Planned {
    /// Queued, skipped or cancelled.
    pub fn outcome(&self) -> ActionOutcome {
        match self {
            Self::Create(a) if a.state == ActionState::Pending => ActionOutcome::Queued,
            Self::Create(_) => ActionOutcome::Skipped,
            Self::Cancel { .. } => ActionOutcome::Cancelled,
        }
    }

    pub fn action(&self) -> &Action {
        match self {
            Self::Create(a) | Self::Cancel { new: a, .. } => a,
        }
    }
}

impl Rules {
    /// The outbox changes a message's new state asks for. `existing` finds an action by id
    /// (each rule has at most one per message); `facets` are the counted callback values the
    /// actions are counted under; `now` is when the change was received.
    pub fn plan<E>(
        &self,
        state: &MessageState,
        facets: &[(String, String)],
        now: DateTime<Utc>,
        mut existing: impl FnMut(&str) -> Result<Option<Action>, E>,
    ) -> Result<Vec<Planned>, E> {
        let mut planned = Vec::new();
        for due in self.due(state) {
            match due {
                Due::Cancel { rule, reason } => {
                    let id = action_id(state.message_id.as_str(), &rule.name);
                    // Only a timer that has not fired yet; a call already made is not undone.
                    if let Some(old) = existing(&id)?.filter(Action::cancellable) {
                        let new = Box::new(old.cancelled(now, reason.into()));
                        planned.push(Planned::Cancel {
                            old: Box::new(old),
                            new,
                        });
                    }
                }
                Due::Fire { rule, at, trigger } => {
                    let id = action_id(state.message_id.as_str(), &rule.name);
                    if existing(&id)?.is_some() {
                        continue;
                    }
                    let (request, skipped) = match rule.step(state, trigger) {
                        Step::Send(request) => (Some(request), None),
                        Step::Skip(reason) => (None, Some(reason)),
                    };
                    let due_at = at.map_or(now, |t| {
                        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
                    });
                    planned.push(Planned::Create(Box::new(Action {
                        id,
                        message_id: state.message_id.as_str().to_owned(),
                        rule: RuleName::new(rule.name.as_str()),
                        action: rule.action,
                        state: if request.is_some() {
                            ActionState::Pending
                        } else {
                            ActionState::Skipped
                        },
                        attempts: 0,
                        next_attempt_at: request.is_some().then_some(due_at),
                        completed_at: skipped.is_some().then_some(now),
                        last_error: skipped,
                        last_status: None,
                        last_response: None,
                        created_at: now,
                        request,
                        until: rule.awaited().to_vec(),
                        facets: facets.to_vec(),
                        schedule_from: 0,
                        bucket: crate::domain::day_of(state.first_seen_at),
                        in_flight: false,
                        skip_opted_out: rule.skip_opted_out,
                        direct: None,
                    })));
                }
            }
        }
        Ok(planned)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use chrono::TimeZone;

    use super::*;
    use crate::domain::{CallbackData, Event};
    use crate::rules::ActionId;

    fn state(statuses: &[(&str, i64)]) -> MessageState {
        let mut state = None;
        for (status, secs) in statuses {
            let event = Event {
                callback: CallbackData::decode(&serde_json::json!({"order_id": "O1"}), 4096),
                ..Event::test_status("wamid.P==", status, *secs)
            };
            state = Some(MessageState::apply(state, event).0);
        }
        state.unwrap()
    }

    const RULES: &str = r#"
[[rules]]
name = "on-read"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "http://127.0.0.1:9/hook", body = { order = "{{callback.order_id}}" } }

[[rules]]
name = "needs-sku"
on = "status"
statuses = ["read"]
action = "http.post"
params = { url = "http://127.0.0.1:9/hook", body = { sku = "{{callback.sku}}" } }

[[rules]]
name = "unread"
on = "missing_status"
statuses = ["read"]
since = "delivered"
after_seconds = 60
action = "http.post"
params = { url = "http://127.0.0.1:9/hook", body = { id = "{{message_id}}" } }
"#;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_795_260_000, 0).unwrap()
    }

    fn plan(
        rules: &Rules,
        state: &MessageState,
        existing: &HashMap<ActionId, Action>,
    ) -> Vec<Planned> {
        rules
            .plan(state, &[], now(), |id| {
                Ok::<_, Infallible>(existing.get(id).cloned())
            })
            .unwrap()
    }

    #[test]
    fn a_delivered_message_queues_its_timer_due_after_the_delay() {
        let rules = super::super::tests::rules_for(RULES);
        let planned = plan(&rules, &state(&[("delivered", 1)]), &HashMap::new());
        assert_eq!(planned.len(), 1);
        let timer = planned[0].action();
        assert_eq!(
            (timer.rule.as_str(), planned[0].outcome().as_str()),
            ("unread", "queued")
        );
        let delivered_at = state(&[("delivered", 1)]).delivered_at.unwrap();
        assert_eq!(
            timer.next_attempt_at,
            Some(delivered_at + chrono::Duration::seconds(60))
        );
        assert_eq!(timer.until, vec![crate::domain::Status::Read]);
    }

    #[test]
    fn a_read_queues_one_skips_one_and_cancels_the_waiting_timer() {
        let rules = super::super::tests::rules_for(RULES);
        let delivered = plan(&rules, &state(&[("delivered", 1)]), &HashMap::new());
        let timer = delivered[0].action().clone();
        let existing = HashMap::from([(timer.id.clone(), timer)]);
        let read = state(&[("delivered", 1), ("read", 2)]);
        let planned = plan(&rules, &read, &existing);
        let outcomes: Vec<(&str, &str)> = planned
            .iter()
            .map(|p| (p.action().rule.as_str(), p.outcome().as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("on-read", "queued"),
                ("needs-sku", "skipped"),
                ("unread", "cancelled")
            ]
        );
        let skipped = planned[1].action();
        assert_eq!(
            skipped.last_error.as_deref(),
            Some("missing field: callback.sku")
        );
        assert!(skipped.next_attempt_at.is_none());
    }

    #[test]
    fn an_existing_action_is_never_queued_twice_and_a_fired_timer_is_not_cancelled() {
        let rules = super::super::tests::rules_for(RULES);
        let read = state(&[("delivered", 1), ("read", 2)]);
        let first = plan(&rules, &read, &HashMap::new());
        let mut existing: HashMap<ActionId, Action> = first
            .iter()
            .map(|p| (p.action().id.clone(), p.action().clone()))
            .collect();
        assert!(plan(&rules, &read, &existing).is_empty());
        // A timer already being sent stays as it is.
        let timer_id = action_id("wamid.P==", "unread");
        let fired = plan(&rules, &state(&[("delivered", 1)]), &HashMap::new())[0]
            .action()
            .claimed();
        existing.insert(timer_id, fired);
        assert!(plan(&rules, &read, &existing).is_empty());
    }
}
