//! The dispatcher: sends queued actions, apart from the request path.
//!
//! It runs on its own thread and runtime, so a slow target never holds an HTTP worker. Each
//! pass takes the outbox's due entries in due order; entries are claimed (one transaction for
//! all a pass can start) only while their target has a free `max_in_flight` slot and its
//! `rate_per_second` allows a start. Outcomes are recorded in another transaction, shared by
//! the calls that finished together. It wakes when ingest or the API
//! queues something, when a call finishes, or when the next entry falls due.
//!
//! On stop it claims nothing more and gives calls in flight `dispatch.shutdown_grace_seconds`
//! to finish; any cut off stay marked in flight and are sent again on the next start.

mod gate;
mod schedule;
mod send;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::background::{Background, CancellationToken};
use crate::config::Settings;
use crate::rules::{Rules, Target};
use crate::store::{
    clock_ms, Action, ActionState, Attempt, ClaimToken, DueEntry, RetryPolicy, Store, StoreError,
};
use gate::{Blocked, Gate};
pub use schedule::Schedule;
pub use send::Sender;

/// Due entries read at once per target.
const SCAN: usize = 256;
/// The longest the loop sleeps without looking (a safety net; wake-ups do the real work).
const IDLE: Duration = Duration::from_secs(1);

/// A running dispatcher. [`Dispatcher::stop`] stops it gracefully; dropping it stops the
/// loop without waiting for calls in flight (they are resent on the next start).
pub struct Dispatcher {
    worker: Background,
    /// Cancelled to skip the grace period for calls in flight.
    abort: CancellationToken,
    health: Health,
}

/// Whether the dispatcher loop is alive, for `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    beat: Arc<AtomicI64>,
    stopped: Arc<AtomicBool>,
}

impl Health {
    fn beat(&self) {
        self.beat.store(clock_ms() as i64, Ordering::Relaxed);
    }

    /// `Err` with the reason when the loop has stopped or not run for a while.
    pub fn check(&self) -> Result<(), String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err("the dispatcher has stopped".into());
        }
        let silent_ms = clock_ms() as i64 - self.beat.load(Ordering::Relaxed);
        if silent_ms > 30_000 {
            return Err(format!(
                "the dispatcher has not run for {} s",
                silent_ms / 1000
            ));
        }
        Ok(())
    }
}

impl Dispatcher {
    pub fn start(store: Store, settings: &Settings, rules: Arc<Rules>) -> anyhow::Result<Self> {
        let d = &settings.dispatch;
        let sender = Arc::new(Sender::new(
            settings.targets.clone(),
            rules,
            d.keep_response_bytes,
            Duration::from_secs(d.max_retry_after_seconds),
        )?);
        let policy = Arc::new(Schedule::from(d));
        let grace = Duration::from_secs(d.shutdown_grace_seconds);
        let lease = Duration::from_secs(d.lease_seconds);
        let abort = CancellationToken::new();
        let aborted = abort.clone();
        let health = Health::default();
        health.beat();
        let loop_health = health.clone();
        let worker = Background::spawn(
            "flowhook-dispatch",
            || {},
            move |stop| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("dispatcher runtime");
                let (records, outcomes) = mpsc::unbounded_channel();
                let worker = Worker {
                    calls: Calls {
                        store,
                        lease,
                        sender,
                        policy,
                        finished: Arc::new(Notify::new()),
                        records,
                    },
                    outcomes: Some(outcomes),
                    gates: HashMap::new(),
                    health: loop_health.clone(),
                };
                runtime.block_on(worker.run(stop, aborted, grace));
                loop_health.stopped.store(true, Ordering::Relaxed);
            },
        )?;
        Ok(Self {
            worker,
            abort,
            health,
        })
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Stops claiming, waits (bounded) for calls in flight, and joins the thread.
    pub fn stop(&self) {
        self.worker.stop();
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.abort.cancel();
    }
}

/// One dispatcher step as of `now`, without the loop's limits or its clock: claims every
/// action due by `now` (at most `limit` per target, under the default lease), makes each call
/// in turn and records the outcomes as of `now`; returns the actions as recorded. Tests drive
/// the outbox with it instead of waiting for real time.
pub async fn run_once(
    store: &Store,
    sender: &Sender,
    policy: &(dyn RetryPolicy + Sync),
    now: chrono::DateTime<chrono::Utc>,
    limit: usize,
) -> Result<Vec<Action>, StoreError> {
    let now_ms = now.timestamp_millis().max(0) as u64;
    let lease = Duration::from_secs(crate::config::DispatchSettings::default().lease_seconds);
    let mut done = Vec::new();
    for target in Target::all() {
        let due = store.due_actions(target, now_ms, limit).await?;
        for action in store.claim_many(&due, lease).await?.into_iter().flatten() {
            let attempt = attempt(store, sender, &action).await;
            done.push((action.claim_token(), attempt));
        }
    }
    Ok(store
        .complete_many(&done, policy, now)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Makes an action's call, unless its message's recipient is opted out now and its rule
/// says `skip_opted_out` (contract section 8.2): then it is skipped, reason `opted_out`.
async fn attempt(store: &Store, sender: &Sender, action: &Action) -> Attempt {
    if action.skip_opted_out && !store.checks_opt_outs_when_claiming() {
        match store.opted_out(&action.message_id).await {
            Ok(false) => {}
            Ok(true) => {
                return Attempt::Skipped {
                    reason: "opted_out".into(),
                }
            }
            Err(error) => {
                return Attempt::Retry {
                    error: format!("could not read whether the recipient opted out: {error}"),
                    status: None,
                    body: None,
                    retry_after: None,
                }
            }
        }
    }
    sender.send(action).await
}

struct Worker {
    calls: Calls,
    /// Taken by [`record_outcomes`] when the loop starts.
    outcomes: Option<mpsc::UnboundedReceiver<Record>>,
    gates: HashMap<Target, Gate>,
    health: Health,
}

/// What a call in flight needs.
#[derive(Clone)]
struct Calls {
    store: Store,
    /// `dispatch.lease_seconds`: how long a claim holds (Postgres).
    lease: Duration,
    sender: Arc<Sender>,
    policy: Arc<Schedule>,
    /// Notified when a call has finished and freed its slot.
    finished: Arc<Notify>,
    /// To [`record_outcomes`].
    records: mpsc::UnboundedSender<Record>,
}

/// A finished call's outcome, on its way to the store, and where to answer once it is there.
type Record = (
    ClaimToken,
    Attempt,
    oneshot::Sender<Result<Option<Action>, StoreError>>,
);

/// Most outcomes recorded in one transaction.
const RECORD_BATCH: usize = 256;

/// Hands an outcome to [`record_outcomes`] and waits until it is on disk.
async fn record(
    records: &mpsc::UnboundedSender<Record>,
    claim: ClaimToken,
    attempt: Attempt,
) -> Result<Option<Action>, StoreError> {
    let (reply, answer) = oneshot::channel();
    records
        .send((claim, attempt, reply))
        .map_err(|_| StoreError::Closed)?;
    answer.await.unwrap_or(Err(StoreError::Closed))
}

/// Records finished calls' outcomes: what has queued up goes in one transaction and one
/// flush, instead of one each. If that fails, each is tried alone, so one bad action cannot
/// hold the others back; an outcome the failed try did record is not recorded twice (it
/// applies once per claim), only made durable.
async fn record_outcomes(
    store: Store,
    policy: Arc<Schedule>,
    mut records: mpsc::UnboundedReceiver<Record>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while records.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let (done, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|(claim, attempt, reply)| ((claim, attempt), reply))
            .unzip();
        match store
            .complete_many(&done, &*policy, crate::domain::now())
            .await
        {
            Ok(recorded) => {
                for (reply, action) in replies.into_iter().zip(recorded) {
                    let _ = reply.send(Ok(action));
                }
            }
            Err(_) => {
                for ((claim, attempt), reply) in done.iter().zip(replies) {
                    let now = crate::domain::now();
                    let _ = reply.send(store.complete(claim, attempt, &*policy, now).await);
                }
            }
        }
    }
}

impl Worker {
    async fn run(mut self, stop: CancellationToken, abort: CancellationToken, grace: Duration) {
        if let Some(outcomes) = self.outcomes.take() {
            let (store, policy) = (self.calls.store.clone(), Arc::clone(&self.calls.policy));
            tokio::spawn(record_outcomes(store, policy, outcomes));
        }
        match self.calls.store.recover_in_flight().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(actions = n, "resending calls cut off by the last stop"),
            Err(error) => tracing::error!(%error, "could not recover actions left in flight"),
        }
        let mut tasks = JoinSet::new();
        while !stop.is_cancelled() {
            self.health.beat();
            while tasks.try_join_next().is_some() {}
            let wake = match self.pass(&mut tasks).await {
                Ok(wake) => wake,
                Err(error) => {
                    tracing::error!(%error, "dispatcher pass failed");
                    Some(Instant::now() + IDLE)
                }
            };
            let wake = wake.unwrap_or(Instant::now() + IDLE);
            tokio::select! {
                _ = self.calls.store.outbox_changed() => {}
                _ = self.calls.finished.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.cancelled() => break,
            }
        }
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for calls in flight");
            let drained = tokio::select! {
                drained = tokio::time::timeout(grace, async {
                    while tasks.join_next().await.is_some() {}
                }) => drained.is_ok(),
                _ = abort.cancelled() => false,
            };
            if !drained {
                tracing::warn!(
                    left = tasks.len(),
                    "calls still in flight at the end of the grace period; they are resent on the next start"
                );
                tasks.abort_all();
            }
        }
    }

    /// Starts what can start; returns when to look again (`None`: on the next wake-up).
    ///
    /// Each target is read only while it has room for another call, and only as far as it
    /// has room, so a saturated or slow target costs nothing and never holds up the others.
    async fn pass(
        &mut self,
        tasks: &mut JoinSet<()>,
    ) -> Result<Option<Instant>, crate::store::StoreError> {
        let mut wake: Option<Instant> = None;
        let mut sooner = |at: Instant| wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        for target in Target::all() {
            let calls = &self.calls;
            let gate = self
                .gates
                .entry(target)
                .or_insert_with(|| Gate::new(calls.sender.limits(target)));
            loop {
                let room = gate.slots.available_permits();
                if room == 0 {
                    // A finishing call wakes the loop.
                    break;
                }
                let entries = calls
                    .store
                    .due_actions(target, clock_ms(), room.min(SCAN))
                    .await?;
                if entries.is_empty() {
                    if let Some(next) = calls.store.next_due_ms(target).await? {
                        let wait = next.saturating_sub(clock_ms());
                        sooner(Instant::now() + Duration::from_millis(wait));
                    }
                    break;
                }
                // Permits for as many as the gate lets start now; the rest wait for a wake-up.
                let mut permits = Vec::with_capacity(entries.len());
                while permits.len() < entries.len() {
                    match gate.try_start(Instant::now()) {
                        Ok(permit) => permits.push(permit),
                        Err(Blocked::Busy) => break,
                        Err(Blocked::Until(at)) => {
                            sooner(at);
                            break;
                        }
                    }
                }
                let blocked = permits.len() < entries.len();
                let entries = &entries[..permits.len()];
                let claimed = calls.store.claim_many(entries, calls.lease).await?;
                for ((action, permit), entry) in claimed.into_iter().zip(permits).zip(entries) {
                    if let Some(action) = action {
                        calls.spawn(tasks, action, permit, entry);
                    }
                }
                if blocked {
                    break;
                }
            }
        }
        Ok(wake)
    }
}

impl Calls {
    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        action: Action,
        permit: OwnedSemaphorePermit,
        entry: &DueEntry,
    ) {
        let Calls {
            store,
            sender,
            finished,
            records,
            ..
        } = self.clone();
        let late_ms = clock_ms().saturating_sub(entry.due_ms);
        let entry_target = entry.target;
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let attempt = attempt(&store, &sender, &action).await;
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_millis() as u64;
            let result = match &attempt {
                Attempt::Delivered { .. } => "delivered",
                Attempt::Retry { .. } => "retry",
                Attempt::Failed { .. } => "failed",
                Attempt::Skipped { .. } => "skipped",
            };
            let target = entry_target.as_str();
            metrics::histogram!(crate::observe::DISPATCH_SECONDS, "target" => target, "result" => result)
                .record(elapsed);
            // The slot stays taken until the outcome is on disk: at most `max_in_flight`
            // calls per target can be repeated after a crash.
            let recorded = record(&records, action.claim_token(), attempt.clone()).await;
            drop(permit);
            match recorded {
                Ok(Some(done)) => {
                    if done.action.is_forward() && done.state == ActionState::Delivered {
                        let lag = crate::domain::now() - done.created_at;
                        metrics::histogram!(crate::observe::FORWARD_LAG_SECONDS, "forward" => done.rule.to_string())
                            .record(lag.to_std().unwrap_or_default());
                    }
                    log_outcome(&done, &attempt, elapsed_ms, late_ms)
                }
                Ok(None) => {}
                Err(error) => tracing::error!(
                    %error,
                    action_id = %action.id,
                    "could not record an attempt; the call will be made again"
                ),
            }
            finished.notify_one();
        });
    }
}

fn log_outcome(action: &Action, attempt: &Attempt, elapsed_ms: u64, late_ms: u64) {
    let span = tracing::info_span!(
        "action",
        action_id = %action.id,
        rule = %action.rule,
        action = %action.action,
        attempt = action.attempts,
    );
    let _enter = span.enter();
    match (action.state, attempt) {
        // A forward delivers every event it takes: one line each would be the log's bulk.
        (ActionState::Delivered, _) if action.action.is_forward() => {
            tracing::debug!(elapsed_ms, late_ms, "event forwarded")
        }
        (ActionState::Delivered, _) => {
            tracing::info!(elapsed_ms, late_ms, "follow-up delivered")
        }
        (ActionState::Retrying, Attempt::Retry { error, .. }) => tracing::warn!(
            %error,
            next_attempt_at = ?action.next_attempt_at,
            "follow-up failed; will retry"
        ),
        (ActionState::Skipped, _) => tracing::info!(
            reason = action.last_error.as_deref().unwrap_or(""),
            "follow-up skipped"
        ),
        (_, _) => tracing::error!(
            error = action.last_error.as_deref().unwrap_or(""),
            "follow-up is dead"
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration as Span;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::schedule::tests::schedule;
    use super::*;
    use crate::config::StoreSettings;
    use crate::domain::{Event, IngestItem, Provider};

    /// A store with one `http.post` rule on `read` to the mock, a sender, and one read
    /// message's action due; the time the test starts from.
    async fn one_due_action(mock: &MockServer) -> (Store, Sender, chrono::DateTime<chrono::Utc>) {
        let toml = format!(
            r#"
[[rules]]
name = "hook"
on = "status"
statuses = ["read"]
action = "http.post"
params = {{ url = "{}/hook", body = {{ id = "{{{{message_id}}}}" }} }}
"#,
            mock.uri()
        );
        let rules = || crate::rules::tests::rules_for(&toml);
        let store: Store = crate::store::temporary_with(&StoreSettings::default(), rules()).into();
        let read = Event::test_status("wamid.ONCE==", "read", 1);
        store
            .ingest(
                Provider::Bik,
                vec![IngestItem::Event(Box::new(read))],
                crate::domain::now(),
            )
            .await
            .unwrap();
        let sender = Sender::new(
            Default::default(),
            Arc::new(rules()),
            1024,
            Duration::from_secs(3600),
        )
        .unwrap();
        (store, sender, crate::domain::now() + Span::seconds(1))
    }

    #[tokio::test]
    async fn a_failed_call_waits_for_its_step_then_is_delivered_without_sleeping() {
        let mock = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .mount(&mock)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&mock)
            .await;
        let (store, sender, t0) = one_due_action(&mock).await;
        let policy = schedule(0.0);
        let first = run_once(&store, &sender, &policy, t0, 10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].state, ActionState::Retrying);
        assert_eq!(first[0].next_attempt_at, Some(t0 + Span::seconds(5)));
        let early = run_once(&store, &sender, &policy, t0 + Span::seconds(4), 10).await;
        assert!(early.unwrap().is_empty(), "not due before its step");
        let second = run_once(&store, &sender, &policy, t0 + Span::seconds(5), 10)
            .await
            .unwrap();
        assert_eq!(second[0].state, ActionState::Delivered);
        assert_eq!(second[0].attempts, 2);
        assert_eq!(mock.received_requests().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn retry_after_zero_still_waits_for_the_schedule_and_the_schedule_ends_dead() {
        let mock = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
            .mount(&mock)
            .await;
        let (store, sender, t0) = one_due_action(&mock).await;
        let policy = schedule(0.0);
        let first = run_once(&store, &sender, &policy, t0, 10).await.unwrap();
        assert_eq!(first[0].next_attempt_at, Some(t0 + Span::seconds(5)));
        let at = t0 + Span::seconds(5);
        let second = run_once(&store, &sender, &policy, at, 10).await.unwrap();
        assert_eq!(second[0].next_attempt_at, Some(at + Span::seconds(30)));
        let third = run_once(&store, &sender, &policy, at + Span::seconds(30), 10)
            .await
            .unwrap();
        assert_eq!(
            third[0].state,
            ActionState::Dead,
            "the schedule has two steps"
        );
        assert_eq!(mock.received_requests().await.unwrap().len(), 3);
    }
}
