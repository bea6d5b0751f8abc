//! Application-level group commit for webhooks: one thread writes every request.
//!
//! HTTP workers hand their parsed request to the writer and wait for its answer. The writer
//! takes whatever has queued up (up to [`MAX_BATCH_ITEMS`] events), folds it in one sled
//! transaction, takes one flush ticket for the lot, then answers each request with its own
//! outcome. Every request still gets exactly the semantics of its own transaction (requests
//! are folded in arrival order, so a duplicate across two requests of one batch is a duplicate
//! of the first), but the fixed costs are paid once per batch: the transaction's commit, the
//! hot aggregate counters (each written once, not once per request), the rewrite of a message
//! touched twice, and the flusher's wake-up. Under load the batch grows by itself; when idle a
//! request is written alone at once.
//!
//! A batch whose transaction fails is retried one request at a time, so a request with bad
//! stored data behind it fails alone. A panic while writing fails that batch's requests and
//! leaves the writer running.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::ingest::{commit, Context, Pending, Report};
use super::{StoreError, Ticket};
use crate::background::Background;
use crate::observe;

/// Most events (and quarantined items) folded into one transaction; a single request larger
/// than this is still written whole, alone.
pub(super) const MAX_BATCH_ITEMS: usize = 4096;

/// What the writer answers one request: its outcome, what to report once durable, and the
/// ticket to wait for.
pub(super) type Written = Result<(super::IngestOutcome, Report, Ticket), StoreError>;

pub(super) struct Job {
    pub pending: Pending,
    pub reply: oneshot::Sender<Written>,
}

/// What the writer's queue carries: requests, then a stop once it is to finish.
enum Message {
    Job(Job),
    Stop,
}

/// The writer thread and its queue. Stopping it (or dropping it) lets it write what is
/// queued, then joins it, so the store's files are released when the last handle goes.
pub(super) struct Writer {
    /// `mpsc::Sender` is `Sync`: every HTTP worker sends on it without a lock.
    jobs: mpsc::Sender<Message>,
    worker: Background,
}

impl Writer {
    pub fn start(context: Context) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop = tx.clone();
        let worker = Background::spawn(
            "flowhook-writer",
            move || {
                let _ = stop.send(Message::Stop);
            },
            move |_| run(&context, &rx),
        )
        .expect("spawn the writer thread");
        Self { jobs: tx, worker }
    }

    /// Queues one request and waits until it is committed (not yet flushed).
    pub async fn write(&self, pending: Pending) -> Written {
        let (reply, answer) = oneshot::channel();
        let job = Message::Job(Job { pending, reply });
        if self.jobs.send(job).is_err() {
            return Err(StoreError::Closed);
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    pub fn stop(&self) {
        self.worker.stop();
    }
}

/// Writes batches until told to stop; what was queued before the stop is written first.
fn run(context: &Context, queue: &mpsc::Receiver<Message>) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = queue.recv() else { return };
        let Message::Job(first) = first else {
            stopping = true;
            continue;
        };
        let mut items = first.pending.len();
        let mut batch = vec![first];
        while items < MAX_BATCH_ITEMS {
            match queue.try_recv() {
                Ok(Message::Job(job)) => {
                    items += job.pending.len();
                    batch.push(job);
                }
                Ok(Message::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        metrics::histogram!(observe::WRITE_BATCH).record(batch.len() as f64);
        write_batch(context, batch);
    }
    // Requests that raced the stop are written too.
    let late: Vec<Job> = queue
        .try_iter()
        .filter_map(|m| match m {
            Message::Job(job) => Some(job),
            Message::Stop => None,
        })
        .collect();
    if !late.is_empty() {
        write_batch(context, late);
    }
}

pub(super) fn write_batch(context: &Context, batch: Vec<Job>) {
    let (pending, replies): (Vec<Pending>, Vec<_>) =
        batch.into_iter().map(|j| (j.pending, j.reply)).unzip();
    match guarded(context, &pending) {
        Ok(results) => {
            let ticket = context.flusher.committed();
            for (reply, (outcome, report)) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((outcome, report, ticket)));
            }
        }
        Err(error) if pending.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
        }
        Err(_) => {
            for (one, reply) in pending.iter().zip(replies) {
                let answer = guarded(context, std::slice::from_ref(one)).map(|mut results| {
                    let (outcome, report) = results.pop().expect("one result per request");
                    (outcome, report, context.flusher.committed())
                });
                let _ = reply.send(answer);
            }
        }
    }
}

/// Commits, turning a panic into an error for this batch only.
fn guarded(
    context: &Context,
    pending: &[Pending],
) -> Result<Vec<(super::IngestOutcome, Report)>, StoreError> {
    unpanicked(|| commit(context, pending))
}

/// `write()`'s answer, or [`StoreError::WriterPanicked`] if it panicked (logged).
fn unpanicked<T>(write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(write)).unwrap_or_else(|_| {
        tracing::error!("writing a batch of webhooks panicked; its requests were refused");
        Err(StoreError::WriterPanicked)
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::config::StoreSettings;
    use crate::domain::Provider;
    use crate::store::ingest::tests::{count, status_event};
    use crate::store::{temporary, IngestItem, SledStore};

    /// Runs `write_batch` on requests as if they had queued up together.
    fn write_together(store: &SledStore, requests: Vec<Vec<IngestItem>>) -> Vec<Written> {
        let mut answers = Vec::new();
        let jobs = requests
            .into_iter()
            .map(|items| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                answers.push(answer);
                let pending = store.prepare(Provider::Bik, items, Utc::now()).unwrap();
                Job { pending, reply }
            })
            .collect();
        let context = Context {
            trees: store.inner.trees.clone(),
            fields: store.inner.fields.clone(),
            rules: Default::default(),
            flusher: std::sync::Arc::clone(&store.inner.flusher),
            max_events: 1000,
        };
        write_batch(&context, jobs);
        answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("every request is answered"))
            .collect()
    }

    #[test]
    fn requests_written_together_keep_their_own_outcomes() {
        let store = temporary(&StoreSettings::default());
        let answers = write_together(
            &store,
            vec![
                vec![status_event("m1", "sent", 1, "c")],
                vec![
                    status_event("m1", "sent", 1, "c"),
                    status_event("m2", "read", 2, "c"),
                ],
                vec![IngestItem::Ignored],
            ],
        );
        let outcomes: Vec<_> = answers.into_iter().map(|a| a.unwrap().0).collect();
        assert_eq!((outcomes[0].accepted, outcomes[0].duplicates), (1, 0));
        // The first request of the batch claimed m1's event: the second sees a duplicate.
        assert_eq!((outcomes[1].accepted, outcomes[1].duplicates), (1, 1));
        assert_eq!(outcomes[2].ignored, 1);
        assert_eq!(count(&store, "c", "messages"), 2);
        assert_eq!(store.message("m1").unwrap().unwrap().events.len(), 1);
    }

    #[test]
    fn a_request_that_cannot_be_written_fails_alone() {
        let store = temporary(&StoreSettings::default());
        store
            .inner
            .trees
            .messages
            .insert("broken", "not json")
            .unwrap();
        let answers = write_together(
            &store,
            vec![
                vec![status_event("m1", "sent", 1, "c")],
                vec![status_event("broken", "sent", 1, "c")],
                vec![status_event("m2", "sent", 1, "c")],
            ],
        );
        let ok: Vec<bool> = answers.iter().map(|a| a.is_ok()).collect();
        assert_eq!(ok, [true, false, true]);
        assert!(matches!(answers[1], Err(StoreError::Serde(_))));
        assert_eq!(count(&store, "c", "messages"), 2);
        assert!(store.message("m2").unwrap().is_some());
    }

    #[test]
    fn a_panic_while_writing_is_its_own_error() {
        let answer: Result<(), _> = unpanicked(|| panic!("a bug"));
        assert!(matches!(answer, Err(StoreError::WriterPanicked)));
        assert_eq!(unpanicked(|| Ok(7)).unwrap(), 7);
    }
}
