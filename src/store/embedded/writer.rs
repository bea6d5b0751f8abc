//! One thread owns every write to the embedded store: webhooks, the dispatcher's claims and
//! outcomes, requeues, retention, imports. Group commit comes with it.
//!
//! A caller hands the writer a job (a closure over a [`Tx`]) and waits for its answer. The
//! writer takes whatever has queued up (up to [`MAX_BATCH_ITEMS`] events' worth), runs each
//! job in arrival order against one [`Tx`] (a job reads what the jobs before it wrote), commits
//! the lot as one atomic write set stamped with the next commit sequence number, takes one
//! flush ticket for it, and answers each job with its own result. A job that fails (bad
//! stored data behind it, or a panic, which is logged) is dropped from the batch and fails
//! alone; if the commit itself fails, every job of the batch gets the error.
//!
//! Since nothing else writes, a job needs no engine transaction: its reads cannot go stale
//! before its writes land.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::durability::{Flusher, Ticket};
use super::engine::{Engine, Space, WriteSet};
use super::tx::Tx;
use super::waiting::Waiting;
use crate::background::Background;
use crate::observe;
use crate::store::StoreError;

/// Most events (and quarantined items) folded into one commit; a single job larger than
/// this is still written whole, alone.
pub(crate) const MAX_BATCH_ITEMS: usize = 4096;

/// The `meta` key every commit writes its sequence number under (u64 BE).
pub(crate) const SEQ_KEY: &[u8] = b"seq";

/// A unit of work for the writer.
trait Job: Send {
    /// Events (or other items) it writes, to bound a batch.
    fn weight(&self) -> usize;
    /// Writes into the batch; an error fails this job alone.
    fn write(&mut self, tx: &Tx<'_>) -> Result<(), StoreError>;
    /// Answers the caller: the batch's commit ticket, or why this job failed (its own write,
    /// or the commit).
    fn answer(self: Box<Self>, outcome: Result<Ticket, StoreError>);
}

/// A closure and the channel its caller waits on.
struct Call<T, F> {
    write: Option<F>,
    weight: usize,
    /// What `write` returned, until the answer.
    value: Option<T>,
    reply: oneshot::Sender<Result<(T, Ticket), StoreError>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send,
{
    fn weight(&self) -> usize {
        self.weight
    }

    fn write(&mut self, tx: &Tx<'_>) -> Result<(), StoreError> {
        let write = self.write.take().expect("a job is written once");
        self.value = Some(write(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<Ticket, StoreError>) {
        let Call { value, reply, .. } = *self;
        let answer = outcome.and_then(|ticket| {
            let value = value.ok_or(StoreError::WriterPanicked)?;
            Ok((value, ticket))
        });
        let _ = reply.send(answer);
    }
}

/// What the writer's queue carries: jobs, then a stop once it is to finish.
enum Message {
    Job(Box<dyn Job>),
    Stop,
}

/// The commit sequence: the last number used, shared with readers of the store's state.
pub(crate) struct Sequence(AtomicU64);

impl Sequence {
    pub fn starting_at(last: u64) -> Self {
        Self(AtomicU64::new(last))
    }

    pub fn last(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The last commit sequence number an engine holds (0 for a new store, or one written before
/// commits were numbered).
pub(crate) fn recovered_seq(engine: &dyn Engine) -> Result<u64, StoreError> {
    Ok(engine
        .get(Space::Meta, SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Commits a batch's writes with the next sequence number; the ticket to wait for (the last
/// commit's, when there was nothing to write).
pub(crate) fn commit(context: &Committer, tx: Tx<'_>) -> Result<Ticket, StoreError> {
    if tx.is_empty() {
        return Ok(Ticket(context.sequence.last()));
    }
    let writes = tx.into_write_set();
    let waiting = Waiting::changes(&writes);
    let seq = commit_writes(&*context.engine, &context.sequence, writes)?;
    context.waiting.apply(waiting);
    Ok(context.flusher.committed(seq))
}

/// What the writer commits to and keeps in step.
pub(crate) struct Committer {
    pub engine: Arc<dyn Engine>,
    pub sequence: Arc<Sequence>,
    pub flusher: Arc<Flusher>,
    /// The outbox's keys in memory (see [`super::waiting`]).
    pub waiting: Arc<Waiting>,
}

/// Commits a write set stamped with the next sequence number; that number.
pub(crate) fn commit_writes(
    engine: &dyn Engine,
    sequence: &Sequence,
    mut writes: WriteSet,
) -> Result<u64, StoreError> {
    let seq = sequence.next();
    writes.insert(Space::Meta, SEQ_KEY, seq.to_be_bytes());
    engine.commit(writes)?;
    Ok(seq)
}

/// The writer thread and its queue. Stopping it (or dropping it) lets it write what is
/// queued, then joins it, so the store's files are released when the last handle goes.
pub(crate) struct Writer {
    /// `mpsc::Sender` is `Sync`: every HTTP worker sends on it without a lock.
    jobs: mpsc::Sender<Message>,
    worker: Background,
}

impl Writer {
    pub fn start(committer: Committer) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop = tx.clone();
        let worker = Background::spawn(
            "flowhook-writer",
            move || {
                let _ = stop.send(Message::Stop);
            },
            move |_| run(&committer, &rx),
        )
        .expect("spawn the writer thread");
        Self { jobs: tx, worker }
    }

    /// Runs `write` on the writer thread and waits until its batch is committed (not yet
    /// flushed: wait for the ticket for that). `weight` is how many events it writes.
    pub async fn write<T, F>(&self, weight: usize, write: F) -> Result<(T, Ticket), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        match self.queue(weight, write) {
            Ok(answer) => answer.await.unwrap_or(Err(StoreError::Closed)),
            Err(error) => Err(error),
        }
    }

    /// [`Writer::write`] from a thread that is not in an async context (the blocking pool).
    pub fn write_blocking<T, F>(&self, weight: usize, write: F) -> Result<(T, Ticket), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let answer = self.queue(weight, write)?;
        answer.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Queues a job; the channel its answer comes on.
    #[allow(clippy::type_complexity)]
    fn queue<T, F>(
        &self,
        weight: usize,
        write: F,
    ) -> Result<oneshot::Receiver<Result<(T, Ticket), StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Call {
            write: Some(write),
            weight,
            value: None,
            reply,
        };
        self.jobs
            .send(Message::Job(Box::new(job)))
            .map_err(|_| StoreError::Closed)?;
        Ok(answer)
    }

    pub fn stop(&self) {
        self.worker.stop();
    }
}

/// Writes batches until told to stop; what was queued before the stop is written first.
fn run(committer: &Committer, queue: &mpsc::Receiver<Message>) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = queue.recv() else { return };
        let Message::Job(first) = first else {
            stopping = true;
            continue;
        };
        let mut items = first.weight();
        let mut batch = vec![first];
        while items < MAX_BATCH_ITEMS {
            match queue.try_recv() {
                Ok(Message::Job(job)) => {
                    items += job.weight();
                    batch.push(job);
                }
                Ok(Message::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        metrics::histogram!(observe::WRITE_BATCH).record(batch.len() as f64);
        write_batch(committer, batch);
    }
    // Jobs that raced the stop are written too.
    let late: Vec<Box<dyn Job>> = queue
        .try_iter()
        .filter_map(|m| match m {
            Message::Job(job) => Some(job),
            Message::Stop => None,
        })
        .collect();
    if !late.is_empty() {
        write_batch(committer, late);
    }
}

fn write_batch(committer: &Committer, batch: Vec<Box<dyn Job>>) {
    let tx = Tx::new(&*committer.engine);
    let mut written = Vec::with_capacity(batch.len());
    for mut job in batch {
        let result = unpanicked(|| job.write(&tx));
        tx.end_job(result.is_ok());
        match result {
            Ok(()) => written.push(job),
            Err(error) => job.answer(Err(error)),
        }
    }
    match commit(committer, tx) {
        Ok(ticket) => {
            for job in written {
                job.answer(Ok(ticket));
            }
        }
        // Logged once per change of state by the store's handle, not once per batch.
        Err(error) => {
            for job in written {
                job.answer(Err(copy_error(&error)));
            }
        }
    }
}

/// `write()`'s answer, or [`StoreError::WriterPanicked`] if it panicked (logged).
fn unpanicked<T>(write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(write)).unwrap_or_else(|_| {
        tracing::error!("writing to the store panicked; the request was refused");
        Err(StoreError::WriterPanicked)
    })
}

/// The same failure for another caller: errors are not `Clone`, so all but what decides how
/// it is handled (a closed store, a storage failure) is carried as text.
fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Closed => StoreError::Closed,
        StoreError::WriterPanicked => StoreError::WriterPanicked,
        StoreError::BadCursor => StoreError::BadCursor,
        StoreError::Corrupt(text) => StoreError::Corrupt(text.clone()),
        StoreError::Incompatible(text) => StoreError::Incompatible(text.clone()),
        StoreError::Unopenable(text) => StoreError::Unopenable(text.clone()),
        StoreError::Serde(e) => StoreError::Corrupt(e.to_string()),
        StoreError::Backend(e) => StoreError::Backend(e.to_string().into()),
        other => StoreError::Backend(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_writing_is_its_own_error() {
        let answer: Result<(), _> = unpanicked(|| panic!("a bug"));
        assert!(matches!(answer, Err(StoreError::WriterPanicked)));
        assert_eq!(unpanicked(|| Ok(7)).unwrap(), 7);
    }
}
