//! Group commit: one flush makes a whole batch durable.
//!
//! Per-request `flush_async` deadlocks under concurrency in sled 0.34 (sled issue 1308),
//! fjall's fsync runs under its journal lock, and one flush per request would cap throughput
//! at the disk's sync rate anyway. Instead each commit has a ticket (its sequence number) and
//! a request waits on a `watch` until a flush that started after its ticket has finished.
//! Every flush makes all earlier tickets durable at once.
//!
//! In `sync` mode the writer flushes right after each commit, on its own thread, before it
//! answers the batch: the requests that arrive meanwhile queue up and make the next batch.
//! (A flusher thread woken per commit cost each request two more context switches, 12% of
//! the ingest rate with one core.) In `relaxed` mode the flusher thread flushes every
//! `relaxed_interval`. Either way, about once a second after a flush, and when it stops, the
//! flusher thread records the last durable commit in the commit mark ([`super::mark`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::engine::Engine;
use super::mark::Mark;
use crate::background::{Background, CancellationToken};
use crate::config::Durability;
use crate::observe;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    /// Every ticket up to this one is on disk.
    flushed: u64,
    /// Tickets up to this one were covered by a flush that failed.
    failed_upto: u64,
}

/// A commit's place in line for the next flush.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(pub(super) u64);

#[derive(Debug, thiserror::Error)]
#[error("the store could not flush to disk")]
pub struct FlushFailed;

struct Shared {
    committed: AtomicU64,
    pending: Mutex<bool>,
    wake: Condvar,
    flushing: Mutex<()>,
    progress: watch::Sender<Progress>,
}

impl Shared {
    fn request_flush(&self) {
        *self.pending.lock().expect("flusher lock") = true;
        self.wake.notify_one();
    }
}

pub struct Flusher {
    shared: Arc<Shared>,
    mode: Durability,
    engine: Arc<dyn Engine>,
    worker: Background,
}

/// How often the mark is replaced while commits are flushed.
pub const MARK_EVERY: Duration = Duration::from_secs(1);

impl Flusher {
    /// Starts flushing `engine`; `recovered` is the last commit the engine holds (durable).
    pub fn start(
        engine: Arc<dyn Engine>,
        mode: Durability,
        relaxed_interval: Duration,
        recovered: u64,
        // The store's directory, where the mark is kept; `None` when the mark must not move (a
        // store opened despite a loss that was not accepted, to export what it holds).
        marking: Option<std::path::PathBuf>,
    ) -> Self {
        let progress = Progress {
            flushed: recovered,
            failed_upto: 0,
        };
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(recovered),
            pending: Mutex::new(false),
            wake: Condvar::new(),
            flushing: Mutex::new(()),
            progress: watch::channel(progress).0,
        });
        let (woken, flushing) = (Arc::clone(&shared), Arc::clone(&shared));
        let flushed_engine = Arc::clone(&engine);
        let worker = Background::spawn(
            "flowhook-flusher",
            move || woken.request_flush(),
            move |token| {
                let mut mark = marking.map(|m| MarkWriter::new(m, engine.name(), recovered));
                run(
                    &flushing,
                    &*engine,
                    mode,
                    relaxed_interval,
                    &token,
                    &mut mark,
                );
                if let Some(mark) = &mut mark {
                    mark.update(shared_flushed(&flushing), true);
                }
            },
        )
        .expect("spawn the flusher thread");
        Self {
            shared,
            mode,
            engine: flushed_engine,
            worker,
        }
    }

    /// Records that commit `seq` is in; in `sync` mode, flushes it (and everything before it)
    /// before returning.
    pub fn committed(&self, seq: u64) -> Ticket {
        self.shared.committed.fetch_max(seq, Ordering::AcqRel);
        if self.mode == Durability::Sync {
            flush(&self.shared, &*self.engine);
        }
        Ticket(seq)
    }

    /// Resolves once the ticket's commit is on disk; at once in relaxed mode.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), FlushFailed> {
        if self.mode == Durability::Relaxed {
            return Ok(());
        }
        let mut rx = self.shared.progress.subscribe();
        let progress = *rx
            .wait_for(|p| p.flushed >= ticket.0 || p.failed_upto >= ticket.0)
            .await
            .map_err(|_| FlushFailed)?;
        if progress.flushed >= ticket.0 {
            Ok(())
        } else {
            Err(FlushFailed)
        }
    }

    /// False when the latest flush failed.
    pub fn healthy(&self) -> bool {
        let p = *self.shared.progress.borrow();
        p.failed_upto <= p.flushed
    }

    /// Flushes what is left and stops the thread (dropping the flusher does too).
    pub fn stop(&self) {
        self.worker.stop();
    }
}

fn shared_flushed(shared: &Shared) -> u64 {
    shared.progress.borrow().flushed
}

/// Replaces the commit mark at most once per [`MARK_EVERY`], and always at the end.
struct MarkWriter {
    dir: std::path::PathBuf,
    engine: &'static str,
    written: u64,
    at: std::time::Instant,
    /// Whether the last write failed (logged once until one succeeds).
    failing: bool,
}

impl MarkWriter {
    fn new(dir: std::path::PathBuf, engine: &'static str, written: u64) -> Self {
        Self {
            dir,
            engine,
            written,
            at: std::time::Instant::now(),
            failing: false,
        }
    }

    fn update(&mut self, flushed: u64, now: bool) {
        if flushed <= self.written || (!now && self.at.elapsed() < MARK_EVERY) {
            return;
        }
        match Mark::write(&self.dir, self.engine, flushed) {
            Ok(()) => {
                self.written = flushed;
                self.at = std::time::Instant::now();
                self.failing = false;
            }
            // A full disk, say: the old mark stays, which only makes the check less strict.
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, "the store's commit mark could not be written");
            }
            Err(_) => {}
        }
    }
}

/// Flushes everything committed so far and records the outcome for the waiting tickets. One
/// flush at a time (the writer's, or the flusher thread's at a stop).
fn flush(shared: &Shared, engine: &dyn Engine) {
    let _one_at_a_time = shared.flushing.lock().expect("flush lock");
    let target = shared.committed.load(Ordering::Acquire);
    let already = shared.progress.borrow().flushed;
    let started = std::time::Instant::now();
    match engine.flush() {
        Ok(()) => {
            metrics::histogram!(observe::FLUSH_SECONDS).record(started.elapsed());
            metrics::histogram!(observe::GROUP_COMMIT_BATCH)
                .record(target.saturating_sub(already) as f64);
            shared
                .progress
                .send_modify(|p| p.flushed = p.flushed.max(target));
        }
        Err(error) => {
            tracing::error!(%error, "store flush failed");
            shared
                .progress
                .send_modify(|p| p.failed_upto = p.failed_upto.max(target));
        }
    }
}

fn run(
    shared: &Shared,
    engine: &dyn Engine,
    mode: Durability,
    relaxed_interval: Duration,
    token: &CancellationToken,
    mark: &mut Option<MarkWriter>,
) {
    loop {
        {
            let mut pending = shared.pending.lock().expect("flusher lock");
            // Sync: once per MARK_EVERY to bring the mark up to date (the writer flushes).
            // Relaxed: every relaxed_interval.
            let interval = match mode {
                Durability::Sync => MARK_EVERY,
                Durability::Relaxed => relaxed_interval,
            };
            if !*pending {
                pending = shared
                    .wake
                    .wait_timeout(pending, interval)
                    .expect("flusher lock")
                    .0;
            }
            *pending = false;
        }
        let target = shared.committed.load(Ordering::Acquire);
        if target > shared_flushed(shared) || token.is_cancelled() {
            flush(shared, engine);
        }
        if let Some(mark) = mark {
            mark.update(shared_flushed(shared), false);
        }
        if token.is_cancelled() {
            return;
        }
    }
}
