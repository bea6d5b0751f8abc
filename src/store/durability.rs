//! Group commit: one thread calls `Db::flush` for everyone.
//!
//! Per-request `flush_async` deadlocks under concurrency in sled 0.34 (sled issue 1308), and
//! one flush per request would cap throughput at the disk's sync rate anyway. Instead each
//! committer takes a ticket after its transaction, wakes the flusher and waits on a `watch`
//! until a flush that started after its ticket has finished. Every flush makes all earlier
//! tickets durable at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

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
pub struct Ticket(u64);

#[derive(Debug, thiserror::Error)]
#[error("the store could not flush to disk")]
pub struct FlushFailed;

struct Shared {
    committed: AtomicU64,
    pending: Mutex<bool>,
    wake: Condvar,
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
    worker: Background,
}

impl Flusher {
    pub fn start(db: sled::Db, mode: Durability, relaxed_interval: Duration) -> Self {
        let shared = Arc::new(Shared {
            committed: AtomicU64::new(0),
            pending: Mutex::new(false),
            wake: Condvar::new(),
            progress: watch::channel(Progress::default()).0,
        });
        let (woken, flushing) = (Arc::clone(&shared), Arc::clone(&shared));
        let worker = Background::spawn(
            "flowhook-flusher",
            move || woken.request_flush(),
            move |token| run(&flushing, &db, mode, relaxed_interval, &token),
        )
        .expect("spawn the flusher thread");
        Self {
            shared,
            mode,
            worker,
        }
    }

    /// Records that a transaction has committed and asks for a flush.
    pub fn committed(&self) -> Ticket {
        let ticket = self.shared.committed.fetch_add(1, Ordering::AcqRel) + 1;
        if self.mode == Durability::Sync {
            self.shared.request_flush();
        }
        Ticket(ticket)
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

fn run(
    shared: &Shared,
    db: &sled::Db,
    mode: Durability,
    relaxed_interval: Duration,
    token: &CancellationToken,
) {
    loop {
        {
            let mut pending = shared.pending.lock().expect("flusher lock");
            match mode {
                Durability::Sync => {
                    while !*pending {
                        pending = shared.wake.wait(pending).expect("flusher lock");
                    }
                }
                Durability::Relaxed => {
                    if !*pending {
                        pending = shared
                            .wake
                            .wait_timeout(pending, relaxed_interval)
                            .expect("flusher lock")
                            .0;
                    }
                }
            }
            *pending = false;
        }
        let target = shared.committed.load(Ordering::Acquire);
        let already = shared.progress.borrow().flushed;
        if target > already || token.is_cancelled() {
            let started = std::time::Instant::now();
            match db.flush() {
                Ok(_) => {
                    metrics::histogram!(observe::FLUSH_SECONDS).record(started.elapsed());
                    metrics::histogram!(observe::GROUP_COMMIT_BATCH)
                        .record(target.saturating_sub(already) as f64);
                    shared
                        .progress
                        .send_modify(|p| p.flushed = p.flushed.max(target))
                }
                Err(error) => {
                    tracing::error!(%error, "store flush failed");
                    shared
                        .progress
                        .send_modify(|p| p.failed_upto = p.failed_upto.max(target));
                }
            }
        }
        if token.is_cancelled() {
            return;
        }
    }
}
