//! Prometheus metrics through the `metrics` facade; `/metrics` renders them.
//!
//! Every metric name lives here, so the README's table and the code cannot drift apart.
//! The recorder is process-wide (the facade's design): it is installed once, on first use.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Webhook events by provider and outcome (`accepted`, `duplicate`, `ignored`, `rejected`),
/// and refused requests (`unauthorized`, `invalid`, `too_large`, `unavailable`).
pub const WEBHOOKS: &str = "flowhook_webhooks_total";
/// Accepted events by kind and status.
pub const EVENTS: &str = "flowhook_events_total";
/// From a verified body to its durable commit, per request.
pub const INGEST_SECONDS: &str = "flowhook_ingest_duration_seconds";
/// Webhook requests written in one transaction by the writer.
pub const WRITE_BATCH: &str = "flowhook_write_batch_size";
/// Commits made durable by one flush.
pub const GROUP_COMMIT_BATCH: &str = "flowhook_group_commit_batch_size";
/// One `Db::flush`.
pub const FLUSH_SECONDS: &str = "flowhook_flush_duration_seconds";
/// Action outcomes by rule and action: `queued`, `skipped`, `delivered`, `retried`, `dead`,
/// `cancelled`, `requeued`.
pub const ACTIONS: &str = "flowhook_actions_total";
/// Actions by state (gauge, read at scrape time).
pub const OUTBOX_DEPTH: &str = "flowhook_outbox_actions";
/// How long the most overdue waiting action has been due (0 when none is overdue).
pub const OUTBOX_OLDEST_DUE: &str = "flowhook_outbox_oldest_due_seconds";
/// One outbound call, by target and result (`delivered`, `retry`, `failed`).
pub const DISPATCH_SECONDS: &str = "flowhook_dispatch_duration_seconds";
/// A forward's delivered events, from accepting the event to its delivery being recorded,
/// by `forward`.
pub const FORWARD_LAG_SECONDS: &str = "flowhook_forward_lag_seconds";
/// What the background purge removed, by kind.
pub const PURGED: &str = "flowhook_purged_total";
/// The embedded store's size on disk (sled or fjall).
pub const STORE_BYTES: &str = "flowhook_store_size_bytes";
/// Stored records (messages, actions, quarantined events) that could not be read.
pub const UNREADABLE: &str = "flowhook_unreadable_records_total";
/// Requests whose body did not arrive within `server.body_timeout_ms`.
pub const BODY_TIMEOUTS: &str = "flowhook_body_timeouts_total";

/// Postgres backend: one store operation (its transaction, with any runs again), by `op`.
pub const DB_SECONDS: &str = "flowhook_db_duration_seconds";
/// Postgres backend: transactions run again because another instance got there first
/// (a duplicate key, a deadlock, a serialization failure), by `op`.
pub const DB_CONFLICTS: &str = "flowhook_db_conflicts_total";
/// Postgres backend: connections in the pool, by `state` (`idle`, `in_use`); read at scrape
/// time.
pub const DB_CONNECTIONS: &str = "flowhook_db_connections";

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's recorder handle, installing it on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GROUP_COMMIT_BATCH.into()), BATCH_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(WRITE_BATCH.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // `build_recorder` starts no upkeep: until a scrape renders them, a histogram keeps
        // every sample it was given (about 64 B per webhook with a follow-up, found as the
        // soak's RSS growth with a heap profile). Fold them into their buckets every few
        // seconds, as `PrometheusBuilder::install` would, whether or not anyone scrapes.
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(error) = started {
            tracing::warn!(%error, "the metrics upkeep thread did not start; histograms grow until scraped");
        }
        // Fails only if another recorder is installed, in which case ours stays unused.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows ours only");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        UNREADABLE,
        "Stored records that could not be read when asked for (see `flowhook check-store`)"
    );
    describe_counter!(
        BODY_TIMEOUTS,
        "Requests answered 408 because their body did not arrive within server.body_timeout_ms"
    );
    describe_counter!(
        WEBHOOKS,
        "Webhook events by provider and outcome, and refused requests"
    );
    describe_counter!(EVENTS, "Accepted events by kind and status");
    describe_histogram!(
        INGEST_SECONDS,
        Unit::Seconds,
        "Verified body to durable commit"
    );
    describe_histogram!(WRITE_BATCH, "Webhook requests written in one transaction");
    describe_histogram!(GROUP_COMMIT_BATCH, "Commits made durable by one flush");
    describe_histogram!(
        FLUSH_SECONDS,
        Unit::Seconds,
        "One flush of the store to disk"
    );
    describe_counter!(ACTIONS, "Follow-up action outcomes by rule and action");
    describe_gauge!(OUTBOX_DEPTH, "Actions by state");
    describe_gauge!(
        OUTBOX_OLDEST_DUE,
        Unit::Seconds,
        "Time the most overdue action has waited"
    );
    describe_histogram!(DISPATCH_SECONDS, Unit::Seconds, "One outbound call");
    describe_gauge!(STORE_BYTES, Unit::Bytes, "Size of the store on disk");
    describe_counter!(PURGED, "Entries removed by retention, by kind");
    describe_histogram!(
        DB_SECONDS,
        Unit::Seconds,
        "Postgres: one store operation, by op"
    );
    describe_counter!(
        DB_CONFLICTS,
        "Postgres: transactions run again after losing a race to another instance, by op"
    );
    describe_gauge!(DB_CONNECTIONS, "Postgres: pool connections by state");
}

/// Counts an action outcome.
pub fn action(
    rule: &str,
    action: crate::targets::ActionKind,
    outcome: crate::rules::lifecycle::ActionOutcome,
) {
    metrics::counter!(ACTIONS, "rule" => rule.to_owned(), "action" => action.as_str(), "outcome" => outcome.as_str())
        .increment(1);
}
