//! The Postgres backend of [`Store`](super::Store) (`store.backend = "postgres"`): any number
//! of instances share one database (contract section 6).
//!
//! It keeps what the sled store keeps, in tables (`migrations/0001_schema.sql`), and decides
//! with the same code: a message's record is the same versioned bytes, folded by
//! [`MessageState::apply_bounded`](crate::domain::MessageState::apply_bounded); the outbox
//! changes come from [`Rules::plan`] and [`crate::rules::lifecycle`]; the indexes and counts
//! from [`Derived`](super::filing::Derived).
//!
//! What makes it correct with many instances:
//! - A webhook's events are written in one transaction that locks their messages' rows
//!   (`SELECT ... FOR UPDATE`, in id order) and checks duplicates against the locked records,
//!   so two instances folding events of one message take turns, and an event posted to both
//!   is accepted by one and a duplicate for the other. A message new to both is inserted by
//!   one; the other's insert fails on the primary key and its transaction is run again, when
//!   it finds the row (see [`retrying`]).
//! - An action's id is derived from its message and rule, and is the primary key: a rule
//!   fires at most once per message, cluster-wide.
//! - The outbox is the `actions` table's `due_ms`. Claiming takes due rows with
//!   `FOR UPDATE SKIP LOCKED` and moves their `due_ms` to the end of a lease
//!   (`dispatch.lease_seconds`): an instance that dies holding actions leaves them due again
//!   once the lease is over, to be claimed by another with the same `Idempotency-Key`.
//! - Retention holds an advisory lock, so one instance at a time purges.
//!
//! Writes are batched (`UNNEST` arrays, one statement per table), and the requests that
//! arrive together share one transaction ([`batch`]: group commit). A commit that queued
//! actions is followed (never preceded, nor joined) by a `NOTIFY` that wakes the other
//! instances' dispatchers at once; they still poll every 500 ms in case one is lost.

mod batch;
mod ingest;
mod outbox;
mod reads;
mod upkeep;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{Fields, StoreError};
use crate::config::{PostgresSettings, StoreSettings};
use crate::rules::Rules;

/// The schema migrations, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The advisory lock key retention holds while it purges ("flowhook" in ASCII).
const RETENTION_LOCK: i64 = 0x666c_6f77_686f_6f6b;

/// A cheap handle on the database.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Where connections are opened: their sockets belong to this runtime's I/O driver, which
    /// always runs. Callers on other runtimes (actix's workers, the dispatcher's, a test's)
    /// use them from there; a connection opened on one of those would stall whenever that
    /// runtime is idle or gone (its driver is what wakes the socket's readers).
    runtime: Option<tokio::runtime::Runtime>,
    rules: Arc<Rules>,
    fields: Fields,
    max_events: usize,
    /// `store.reply_window_hours`.
    reply_window_hours: f64,
    /// `store.opt_out_keywords`.
    opt_out_keywords: Vec<String>,
    /// Wakes this instance's dispatcher when its own ingest queued something; actions queued
    /// by other instances are found by polling (see [`PgStore::outbox_changed`]).
    outbox_changed: tokio::sync::Notify,
    /// The group commit's queue (see [`batch`]).
    committer: batch::Committer,
    /// `store.postgres.instance_id`: what this instance's leases are marked with.
    instance: String,
}

/// What [`PgStore::open`] does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Apply pending migrations (`serve` by default, `flowhook migrate`).
    Migrate,
    /// Only check that the schema is this build's (`store.postgres.migrate = false`).
    Check,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which an async caller must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

impl PgStore {
    /// Connects to the database `settings.postgres.url` names and brings or checks its schema.
    pub async fn open(
        settings: &StoreSettings,
        rules: Arc<Rules>,
        schema: Schema,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flowhook-db")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let pool = {
            let _inside = runtime.enter();
            pool(&settings.postgres)?
        };
        let handle = runtime.handle().clone();
        let store = Self {
            inner: Arc::new_cyclic(|weak| Inner {
                pool,
                runtime: Some(runtime),
                rules,
                fields: Fields::of(settings),
                max_events: settings.max_events_per_message,
                reply_window_hours: settings.reply_window_hours,
                opt_out_keywords: settings.opt_out_keywords.clone(),
                outbox_changed: tokio::sync::Notify::new(),
                committer: batch::Committer::start(&handle, weak.clone()),
                instance: settings.postgres.instance_id.clone(),
            }),
        };
        handle.spawn(batch::listen(
            store.pool().clone(),
            Arc::downgrade(&store.inner),
        ));
        match schema {
            Schema::Migrate => store.migrate().await?,
            Schema::Check => store.check_schema().await?,
        }
        // The forwards with deliveries waiting get a queue, configured or not (a removed
        // forward's deliveries then end as dead, saying why, rather than wait unseen).
        let targets: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT target FROM actions WHERE due_ms IS NOT NULL AND target LIKE 'forward:%'",
        )
        // On a connection taken on the store's runtime (see `Inner::runtime`): one opened
        // here, on the caller's, would stall later users once that runtime idles.
        .fetch_all(&mut *store.conn().await?)
        .await?;
        for target in targets {
            crate::rules::Target::parse(&target);
        }
        Ok(store)
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        self.inner
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
            .handle()
    }

    /// Runs `f` on the store's runtime (see [`Inner::runtime`]).
    async fn on_runtime<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
        T: Send + 'static,
    {
        match self.runtime().spawn(f).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(StoreError::Backend(Box::new(e))),
        }
    }

    /// A connection from the pool (opened on the store's runtime if a new one is needed).
    async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let pool = self.pool().clone();
        self.on_runtime(async move { pool.acquire().await }).await
    }

    /// A transaction on a connection from the pool.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let pool = self.pool().clone();
        self.on_runtime(async move { pool.begin().await }).await
    }

    /// Creates or upgrades the schema (under the migrator's advisory lock, so instances
    /// starting together take turns). A database a newer flowhook migrated is refused.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.refuse_newer().await?;
        let pool = self.pool().clone();
        let run = self
            .runtime()
            .spawn(async move { MIGRATOR.run(&pool).await });
        let ran = run.await.map_err(|e| StoreError::Backend(Box::new(e)))?;
        ran.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => unreachable_db(e),
            other => StoreError::Incompatible(format!("migrating the database failed: {other}")),
        })
    }

    /// The newest schema version applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.applied().await?.into_iter().max().unwrap_or(0))
    }

    /// The schema versions applied in the database, newest last; empty for a new database.
    async fn applied(&self) -> Result<Vec<i64>, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *self.conn().await.map_err(unreachable)?)
            .await
            .map_err(unreachable_db)?;
        if !exists {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    async fn refuse_newer(&self) -> Result<(), StoreError> {
        let known = latest_version();
        if let Some(&newest) = self.applied().await?.iter().max() {
            if newest > known {
                return Err(StoreError::Incompatible(format!(
                    "the database's schema is version {newest}, from a newer flowhook; this one \
                     knows up to version {known}. Run the newer flowhook (or restore a backup \
                     into an empty database with `flowhook import`)"
                )));
            }
        }
        Ok(())
    }

    /// Checks, without changing anything, that the schema is the one this build writes.
    async fn check_schema(&self) -> Result<(), StoreError> {
        self.refuse_newer().await?;
        let applied = self.applied().await?;
        let pending: Vec<i64> = MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if !pending.is_empty() {
            return Err(StoreError::Incompatible(format!(
                "the database's schema is not up to date (missing migrations {pending:?}) and \
                 store.postgres.migrate = false: run `flowhook migrate` first"
            )));
        }
        Ok(())
    }

    /// Ready when the database answers and takes writes (a primary, not a replica).
    pub async fn readiness(&self) -> Result<(), String> {
        let probe = async {
            let mut conn = self.conn().await?;
            Ok::<_, StoreError>(
                sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut *conn)
                    .await?,
            )
        };
        match probe.await {
            Ok(false) => Ok(()),
            Ok(true) => Err("the database is a read-only replica".into()),
            Err(error) => Err(format!("the database cannot be reached: {error}")),
        }
    }

    /// The database's size (all of it, with the other tables that may share it).
    pub async fn size_on_disk(&self) -> Result<u64, StoreError> {
        let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut *self.conn().await?)
            .await?;
        Ok(size.max(0) as u64)
    }

    /// Connections open and idle, for the metrics.
    pub fn pool_state(&self) -> (u32, usize) {
        (self.pool().size(), self.pool().num_idle())
    }

    /// Closes every connection once they are returned.
    pub async fn close(&self) {
        // Closing waits for every connection to come back (the listener's included, which
        // hears the pool close); a connection stuck in the network must not hold a stop.
        let pool = self.pool().clone();
        let closing = self.runtime().spawn(async move { pool.close().await });
        if tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .is_err()
        {
            tracing::warn!("closing the database's connections took over 5 s; stopping anyway");
        }
    }

    pub fn index_fields(&self) -> &[String] {
        &self.inner.fields.index
    }

    pub fn stats_fields(&self) -> &[String] {
        &self.inner.fields.stats
    }

    /// Wakes when this instance or another queued something (a `NOTIFY` after their commit),
    /// or after a poll interval: a lost notification, and leases that ran out, are found by
    /// looking again.
    pub async fn outbox_changed(&self) {
        tokio::select! {
            _ = self.inner.outbox_changed.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }

    fn notify_outbox(&self) {
        self.inner.outbox_changed.notify_one();
    }
}

/// How often an idle dispatcher looks for work other instances queued.
const POLL: Duration = Duration::from_millis(500);

/// The newest schema version this build knows.
fn latest_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

fn pool(settings: &PostgresSettings) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(settings.url.expose())
        .map_err(|e| StoreError::Incompatible(format!("store.postgres.url: {e}")))?
        .application_name("flowhook")
        .options([
            (
                "statement_timeout",
                settings.statement_timeout_ms.to_string(),
            ),
            // A transaction left open by a stuck client must not hold its locks for ever.
            (
                "idle_in_transaction_session_timeout",
                (settings.statement_timeout_ms * 2).to_string(),
            ),
            // Every statement is prepared once per connection and finds its rows by key or
            // array, so one plan serves all: without this, Postgres planned the write
            // statement again on every call (measured: half its time, bench/results.md).
            ("plan_cache_mode", "force_generic_plan".to_owned()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms))
        // Connections that died with the server are found on use and replaced.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// An error reaching the database, said as such (with the cause).
fn unreachable_db(e: sqlx::Error) -> StoreError {
    StoreError::Unopenable(format!("the database cannot be reached: {e}"))
}

/// [`unreachable_db`] for an error from [`PgStore::conn`].
fn unreachable(e: StoreError) -> StoreError {
    match e {
        StoreError::Backend(e) => {
            StoreError::Unopenable(format!("the database cannot be reached: {e}"))
        }
        other => other,
    }
}

/// Whether a transaction failed only because another one got there first and running it
/// again will do: a serialization failure, a deadlock, or a unique key another instance
/// inserted meanwhile.
fn conflict(e: &StoreError) -> bool {
    let StoreError::Backend(e) = e else {
        return false;
    };
    let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    matches!(db.code().as_deref(), Some("40001" | "40P01" | "23505"))
}

/// How many times a transaction that lost a race is run again.
const ATTEMPTS: u32 = 8;

/// Runs `attempt` until it succeeds, fails for a reason other than a [`conflict`], or has
/// lost [`ATTEMPTS`] races.
async fn retrying<T, F, Fut>(op: &'static str, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut tries = 0;
    let result = loop {
        tries += 1;
        match attempt().await {
            Err(e) if conflict(&e) && tries < ATTEMPTS => {
                metrics::counter!(crate::observe::DB_CONFLICTS, "op" => op).increment(1);
            }
            other => break other,
        }
    };
    metrics::histogram!(crate::observe::DB_SECONDS, "op" => op)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Unix ms as Postgres keeps it.
fn ms(time: chrono::DateTime<chrono::Utc>) -> i64 {
    time.timestamp_millis()
}
