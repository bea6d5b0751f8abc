//! Group commit on Postgres: the requests that arrive together are written in one transaction.
//!
//! Each request's parts go to a queue; a flusher (see [`FLUSHERS`]) takes what is queued
//! when it is free: a lone request at once, a crowd in batches of up to
//! [`MAX_PARTS`] parts or [`MAX_EVENTS`] events, so a commit's WAL flush and round trips are
//! shared by everything waiting instead of paid per webhook (as the embedded writer does,
//! and as Convoy's and River's Postgres queues do). Every part still gets its own answer, and
//! only once the commit is in. If a batch fails, its parts are written again one by one, so
//! a part that cannot be written fails alone; a batch that lost a race (a deadlock, a row
//! another instance inserted first) is run again whole first, as a single request is.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{retrying, Inner, PgStore};
use crate::domain::{Event, MessageId, OptOutItem};
use crate::store::ingest::Report;
use crate::store::StoreError;

/// Parts in one transaction, at most.
const MAX_PARTS: usize = 64;
/// Events in one transaction, at most (a part holds up to 64).
const MAX_EVENTS: usize = 512;
/// Ingest transactions in flight at once per instance, each on a connection of its own.
/// Measured on 2 cores with Postgres beside flowhook (bench/postgres.sh, runs of the whole
/// script): with 4, two instances' eight transactions thrashed (6,058 req/s, p99 102 ms); with
/// 2, three runs of six fell into a slow mode (10.7-11.9k req/s, p99 63-70 ms, the row-lock
/// query at 1.1 ms instead of 0.03: concurrent batches probing and filling the same index
/// pages), the others gave 18.1-20.2k; with 1, four runs gave 18.3-22.3k req/s for one
/// instance and 17.5-20.4k for two, p99 about 10 ms, none slow. A batch waits for the one
/// before it, so the next one is bigger: the commit's cost is shared either way.
const FLUSHERS: usize = 1;

/// One request's part to write: its events, and (in its first part) its opt-out items with
/// the message each landed on.
#[derive(Default)]
pub(in crate::store) struct Part {
    pub events: Vec<Event>,
    pub direct: Vec<OptOutItem>,
    pub attributed: Vec<Option<MessageId>>,
    pub received_at: DateTime<Utc>,
}

/// What writing a part did.
#[derive(Default)]
pub(in crate::store) struct Written {
    pub accepted: u32,
    pub duplicates: u32,
    /// Its opt-out items whose choice was new, by their place in [`Part::direct`].
    pub new_choices: HashSet<usize>,
    pub report: Report,
}

type Job = (Part, oneshot::Sender<Result<Written, StoreError>>);

/// The queue the flushers take parts from.
pub(super) struct Committer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Committer {
    /// Starts the flushers on the store's runtime. They hold the store weakly: once every
    /// handle is dropped the queue closes and they end.
    pub fn start(runtime: &tokio::runtime::Handle, store: Weak<Inner>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..FLUSHERS {
            runtime.spawn(flush(Arc::clone(&queue), store.clone()));
        }
        Self { jobs }
    }
}

impl PgStore {
    /// Writes a part with whatever else is waiting; returns once its commit is in.
    pub(super) async fn commit(&self, part: Part) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .committer
            .jobs
            .send((part, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Writes one batch and answers each of its parts.
    async fn write_jobs(&self, jobs: Vec<Job>) {
        let (parts, replies): (Vec<Part>, Vec<_>) = jobs.into_iter().unzip();
        let all: Vec<&Part> = parts.iter().collect();
        metrics::histogram!(crate::observe::WRITE_BATCH).record(all.len() as f64);
        match retrying("ingest", || self.write_batch(&all)).await {
            Ok(written) => {
                let queued = written.iter().any(|w| w.report.queues());
                for (reply, written) in replies.into_iter().zip(written) {
                    let _ = reply.send(Ok(written));
                }
                if queued {
                    self.notify_peers().await;
                }
            }
            Err(error) if all.len() == 1 => {
                let _ = replies.into_iter().next().map(|r| r.send(Err(error)));
            }
            Err(_) => {
                // One part may be what failed: each alone, so it fails alone.
                for (part, reply) in all.into_iter().zip(replies) {
                    let alone = [part];
                    let written = retrying("ingest", || self.write_batch(&alone))
                        .await
                        .map(|mut w| w.remove(0));
                    let queued = written.as_ref().is_ok_and(|w| w.report.queues());
                    let _ = reply.send(written);
                    if queued {
                        self.notify_peers().await;
                    }
                }
            }
        }
    }
}

/// The channel instances tell each other about new work on: a `NOTIFY` after a commit that
/// queued actions (never inside the ingest transaction, where it would serialize commits),
/// a `LISTEN` on a connection of its own; the poll stays as the fallback.
const CHANNEL: &str = "flowhook_outbox";

impl PgStore {
    /// Tells the other instances (and this one's listener) that actions were queued. Best
    /// effort: a notification lost is found by the next poll.
    async fn notify_peers(&self) {
        let sent = match self.conn().await {
            Ok(mut conn) => sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        if let Err(error) = sent {
            tracing::debug!(%error, "could not notify other instances; they will poll");
        }
    }
}

/// Wakes this instance's dispatcher on every notification on [`CHANNEL`], reconnecting when
/// the connection is lost, until the pool closes or the store is gone.
pub(super) async fn listen(pool: sqlx::PgPool, store: Weak<Inner>) {
    while !pool.is_closed() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        while let Ok(_notification) = listener.recv().await {
            match store.upgrade() {
                Some(inner) => inner.outbox_changed.notify_one(),
                None => return,
            }
        }
    }
}

/// A flusher: takes what is queued (waiting only when nothing is), writes it, answers.
async fn flush(queue: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, store: Weak<Inner>) {
    loop {
        let mut jobs: Vec<Job> = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut events = first.0.events.len();
            jobs.push(first);
            while jobs.len() < MAX_PARTS && events < MAX_EVENTS {
                match queue.try_recv() {
                    Ok(job) => {
                        events += job.0.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        PgStore { inner }.write_jobs(jobs).await;
    }
}
