//! The embedded store: flowhook's key layout over an embedded engine, sled (the default) or
//! fjall. The layout is written once, against [`engine::Engine`]; each engine is one file
//! ([`sled`], [`fjall`]).
//!
//! # Key layout
//!
//! Strings are UTF-8; `\0` separates parts (message ids, callback values and recipients
//! that hold `\0` are refused or left unindexed, so the separator is unambiguous). Numbers are
//! big-endian so that byte order is numeric order.
//!
//! | keyspace        | key                                         | value                              |
//! |-----------------|---------------------------------------------|------------------------------------|
//! | `messages`      | message id                                  | versioned compact record: the timeline and the ids of the message's actions, see [`crate::store::record`] (duplicates are checked against it) |
//! | `dedupe`        | `r\0<provider>\0<sha256 of raw>` (quarantined) | first seen, unix seconds (u64 BE) |
//! |                 | `o\0<event fingerprint, u64 BE>` (an event summarized past `max_events_per_message`) | first seen, unix seconds (u64 BE) |
//! | `idx_callback`  | `<field>\0<value>\0<message id>`            | empty                              |
//! | `idx_recipient` | `<recipient key>\0<message id>` (the E.164 form, else as sent; and the business-scoped user id) | empty |
//! | `idx_time`      | `<updated_at unix ms, u64 BE><message id>`  | empty (retention reads it in order)|
//! | `aggregates`    | `<field>\0<value>\0<day><metric>` (see [`crate::store::stats`]) | count (i64 BE); `\0\0action:<state>` counts all actions |
//! | `rejected`      | id (u64 BE, unix µs at quarantine, unique and increasing) | `RejectedEvent` JSON |
//! | `meta`          | `seq`                                       | the commit's sequence number (u64 BE), written by every commit ([`mark`]) |
//! |                 | `readyz`                                    | last readiness probe time          |
//! |                 | `recipient_index`                           | `e164` once `idx_recipient` uses normalized keys |
//! |                 | `format`                                    | the store's format, one byte (see [`upgrade`]) |
//! | `actions`       | action id (`act_<hex>`, from message id and rule) | `Action` JSON                |
//! | `action_idx`    | `s\0<state>\0<created><id>`, `q\0<rule>\0<state>\0<created><id>` (listing all actions or a rule's merges the six states) | empty (`<created>` is unix ms, u64 BE) |
//! | `outbox`        | `<target>\0<due unix ms, u64 BE><action id>` | empty                            |
//! | `inflight`      | action id                                   | empty                              |
//!
//! Beside the engine's files, `flowhook.mark` records the engine and the last commit known
//! durable ([`mark`]).
//!
//! One thread writes ([`writer`]): every change (a request's events with the actions they
//! trigger, a claim, an outcome, a requeue, a purge batch) is one job, and the jobs that
//! arrive together are one atomic write set, so the timeline, indexes, aggregates and
//! actions never disagree. Durability comes from [`durability::Flusher`]. See
//! [`actions`] for the outbox's invariants.

mod actions;
mod backup;
mod durability;
pub(crate) mod engine;
mod filing;
mod fjall;
mod ingest;
pub(crate) mod mark;
mod outbox;
mod query;
mod retention;
mod sled;
mod stats;
mod tx;
mod upgrade;
mod waiting;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use self::engine::{Engine, Space};
use self::mark::{Loss, Mark};
use self::waiting::Waiting;
use self::writer::{Committer, Sequence, Writer};
use super::{Fields, StoreError};
use crate::config::{StoreBackend, StoreSettings};
use crate::rules::Rules;

pub use durability::FlushFailed;
use durability::{Flusher, Ticket};

/// How a store with lost writes (see [`mark`]) is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Refused, naming the damage (`serve`), unless `store.accept_loss` is set.
    Serve,
    /// Opened, the loss kept for the caller to report (`export`, `check-store`); the mark
    /// is left as it is.
    Inspect,
}

/// The embedded backend of [`super::Store`]: a cheap handle on the open store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    writer: Writer,
    /// The outbox's keys, kept in step by the writer (see [`waiting`]).
    waiting: Arc<Waiting>,
    flusher: Arc<Flusher>,
    context: Arc<Context>,
    outbox_changed: tokio::sync::Notify,
    path: PathBuf,
    min_free_disk: u64,
    /// The last id given to a quarantined event.
    last_rejected_id: AtomicU64,
    /// Acknowledged commits that opening found missing (with [`Opening::Inspect`]).
    loss: Option<Loss>,
}

/// What a write needs besides the engine (jobs take a clone of it to the writer thread).
pub(crate) struct Context {
    pub fields: Fields,
    pub rules: Arc<Rules>,
    /// `store.max_events_per_message`.
    pub max_events: usize,
    /// `store.reply_window_hours`.
    pub reply_window_hours: f64,
    /// `store.opt_out_keywords`.
    pub opt_out_keywords: Vec<String>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `store.path` with the engine `store.backend` names.
    pub fn open(
        settings: &StoreSettings,
        rules: Arc<Rules>,
        opening: Opening,
    ) -> Result<Self, StoreError> {
        let dir = &settings.path;
        type Open = fn(&std::path::Path, u64) -> Result<Arc<dyn Engine>, StoreError>;
        let (name, open): (&str, Open) = match settings.backend {
            StoreBackend::Fjall => ("fjall", |dir, cache| {
                Ok(Arc::new(fjall::FjallEngine::open(dir, cache)?))
            }),
            _ => ("sled", |dir, cache| {
                Ok(Arc::new(sled::SledEngine::open(dir, cache)?))
            }),
        };
        // Checked before the engine opens: it would create its own files in the other's
        // directory.
        if dir.exists() {
            mark::check_engine(dir, name)?;
        }
        std::fs::create_dir_all(dir).map_err(|e| mark::unopenable(dir, &e.to_string()))?;
        let engine = open(dir, settings.cache_bytes())?;
        Self::with_engine(engine, settings, rules, Some(dir.clone()), opening)
    }

    fn with_engine(
        engine: Arc<dyn Engine>,
        settings: &StoreSettings,
        rules: Arc<Rules>,
        dir: Option<PathBuf>,
        opening: Opening,
    ) -> Result<Self, StoreError> {
        let recovered = writer::recovered_seq(&*engine)?;
        let mark = match &dir {
            Some(dir) => Mark::read(dir)?,
            None => None,
        };
        let loss = match (&dir, mark) {
            (Some(dir), Some(mark)) if mark.seq > recovered => Some(Loss {
                engine: engine.name().into(),
                recovered,
                acknowledged: mark.seq,
                mark_written_at: mark.written_at,
                path: dir.clone(),
            }),
            _ => None,
        };
        let mut keep_mark = false;
        if let Some(loss) = &loss {
            match opening {
                Opening::Serve if !settings.accept_loss => {
                    return Err(StoreError::Damaged(Box::new(loss.clone())))
                }
                Opening::Serve => tracing::error!(
                    missing = loss.missing(),
                    "{loss}. Served anyway (store.accept_loss); the store as it is now is its \
                     new state"
                ),
                Opening::Inspect => keep_mark = true,
            }
        }
        let sequence = Arc::new(Sequence::starting_at(recovered));
        upgrade::run(&*engine, &sequence)?;
        engine.flush()?;
        let marking = dir.clone().filter(|_| !keep_mark);
        if let Some(dir) = &marking {
            Mark::write(dir, engine.name(), sequence.last()).map_err(|e| {
                StoreError::Unopenable(format!(
                    "the commit mark in {} cannot be written: {e}",
                    dir.display()
                ))
            })?;
        }
        let flusher = Arc::new(Flusher::start(
            Arc::clone(&engine),
            settings.durability,
            Duration::from_millis(settings.relaxed_flush_ms),
            sequence.last(),
            marking,
        ));
        let waiting = Arc::new(Waiting::load(&*engine)?);
        waiting.register_forwards();
        let writer = Writer::start(Committer {
            engine: Arc::clone(&engine),
            sequence,
            flusher: Arc::clone(&flusher),
            waiting: Arc::clone(&waiting),
        });
        let last_rejected_id = last_key_u64(&*engine, Space::Rejected)?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                writer,
                waiting,
                flusher,
                context: Arc::new(Context {
                    fields: Fields::of(settings),
                    rules,
                    max_events: settings.max_events_per_message,
                    reply_window_hours: settings.reply_window_hours,
                    opt_out_keywords: settings.opt_out_keywords.clone(),
                }),
                outbox_changed: tokio::sync::Notify::new(),
                path: dir.unwrap_or_default(),
                min_free_disk: settings.min_free_disk_bytes,
                last_rejected_id: AtomicU64::new(last_rejected_id),
                loss,
            }),
        })
    }

    /// The engine's name: `"sled"` or `"fjall"`.
    pub fn engine_name(&self) -> &'static str {
        self.inner.engine.name()
    }

    /// Acknowledged commits that opening found missing (only with [`Opening::Inspect`]).
    pub fn loss(&self) -> Option<&Loss> {
        self.inner.loss.as_ref()
    }

    fn engine(&self) -> &dyn Engine {
        &*self.inner.engine
    }

    /// Waits until a commit is durable (at once with `durability = "relaxed"`).
    async fn wait_durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        Ok(self.inner.flusher.wait(ticket).await?)
    }

    /// A new id for a quarantined event: unix µs, unique and increasing.
    fn rejected_id(&self) -> u64 {
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let previous = self
            .inner
            .last_rejected_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(previous + 1)
    }

    /// Ready when a write goes through, the last flush succeeded and the disk has at least
    /// `store.min_free_disk_bytes` free; the reason otherwise.
    pub async fn readiness(&self) -> Result<(), String> {
        let free = super::free_disk_bytes(&self.inner.path)
            .map_err(|e| format!("cannot read the free disk space of the store: {e}"))?;
        if free < self.inner.min_free_disk {
            return Err(format!(
                "only {free} bytes free on the store's disk, below store.min_free_disk_bytes ({})",
                self.inner.min_free_disk
            ));
        }
        let now = chrono::Utc::now().timestamp().to_be_bytes();
        self.inner
            .writer
            .write(0, move |tx| {
                tx.insert(Space::Meta, "readyz", now);
                Ok(())
            })
            .await
            .map_err(|e| format!("store is not writable: {e}"))?;
        if !self.flushes_healthy() {
            return Err("the last flush to disk failed".into());
        }
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.engine().size_on_disk()
    }

    /// Stops the writer and the flusher (for [`super::Store::reopen`]); requests queued
    /// meanwhile are answered [`StoreError::Closed`].
    pub(crate) fn stop_background(&self) {
        self.inner.writer.stop();
        self.inner.flusher.stop();
    }

    /// False when the latest flush failed, or the engine takes no more writes.
    pub(crate) fn flushes_healthy(&self) -> bool {
        self.inner.flusher.healthy() && self.inner.engine.healthy()
    }

    /// Whether this is the last handle on the open store (no request is using it).
    pub(crate) fn sole_handle(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// Writes what is queued, then flushes; `Err` when that last flush failed (what was not
    /// yet acknowledged may not be on disk).
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.writer.stop();
        self.inner.flusher.stop();
        self.engine().close()
    }

    pub fn index_fields(&self) -> &[String] {
        &self.inner.context.fields.index
    }

    /// The callback fields counted per value (`store.stats_callback_fields`).
    pub fn stats_fields(&self) -> &[String] {
        &self.inner.context.fields.stats
    }
}

/// The last key of a keyspace read as a u64 (BE); 0 when it is empty.
fn last_key_u64(engine: &dyn Engine, space: Space) -> Result<u64, StoreError> {
    let last = engine
        .range(
            space,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            true,
        )
        .next()
        .transpose()?;
    Ok(last
        .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// A stored counter (i64 BE); 0 when absent or malformed.
fn read_i64(bytes: Option<&[u8]>) -> i64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
}

/// A message's entry in `idx_time`: when it last changed, then its id.
fn time_key(state: &crate::domain::MessageState) -> Vec<u8> {
    let mut k = (state.updated_at.timestamp_millis().max(0) as u64)
        .to_be_bytes()
        .to_vec();
    k.extend_from_slice(state.message_id.as_str().as_bytes());
    k
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// A store on a temporary sled, for tests.
#[cfg(test)]
pub(crate) fn temporary(settings: &StoreSettings) -> EmbeddedStore {
    temporary_with(settings, Rules::default())
}

#[cfg(test)]
pub(crate) fn temporary_with(settings: &StoreSettings, rules: Rules) -> EmbeddedStore {
    on_engine(Arc::new(sled::SledEngine::temporary()), settings, rules)
}

/// A store on a temporary fjall, for tests.
#[cfg(test)]
pub(crate) fn temporary_fjall(settings: &StoreSettings, rules: Rules) -> EmbeddedStore {
    on_engine(Arc::new(fjall::FjallEngine::temporary()), settings, rules)
}

#[cfg(test)]
fn on_engine(engine: Arc<dyn Engine>, settings: &StoreSettings, rules: Rules) -> EmbeddedStore {
    EmbeddedStore::with_engine(engine, settings, Arc::new(rules), None, Opening::Serve)
        .expect("open a temporary store")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, IngestItem, Provider};

    fn event(id: &str) -> IngestItem {
        IngestItem::Event(Box::new(Event {
            callback: crate::domain::CallbackData::decode(
                &serde_json::json!({"campaign": "c"}),
                4096,
            ),
            ..Event::test_status(id, "sent", 1)
        }))
    }

    /// Requests that share a commit keep their own outcomes, and one with bad stored data
    /// behind it fails alone, on both engines.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_committed_together_keep_their_own_outcomes() {
        let settings = StoreSettings::default();
        for store in [
            temporary(&settings),
            temporary_fjall(&settings, Rules::default()),
        ] {
            let engine = store.engine_name();
            store
                .inner
                .writer
                .write(1, |tx| {
                    tx.insert(Space::Messages, "broken", "not json");
                    Ok(())
                })
                .await
                .unwrap();
            let now = crate::domain::now();
            let (a, broken, b, again) = tokio::join!(
                store.ingest(Provider::Bik, vec![event("m1")], now),
                store.ingest(Provider::Bik, vec![event("broken")], now),
                store.ingest(Provider::Bik, vec![event("m2"), event("m1")], now),
                store.ingest(Provider::Bik, vec![event("m2")], now),
            );
            assert!(broken.unwrap_err().is_unreadable(), "{engine}");
            let (a, b, again) = (a.unwrap(), b.unwrap(), again.unwrap());
            assert_eq!(a.accepted + b.accepted + again.accepted, 2, "{engine}");
            assert_eq!(
                a.duplicates + b.duplicates + again.duplicates,
                2,
                "{engine}"
            );
            assert_eq!(store.stat_total("campaign", "c", "messages"), 2, "{engine}");
            assert!(store.message("m2").unwrap().is_some(), "{engine}");
            store.close().unwrap();
        }
    }

    /// Every commit is numbered in its own write set; the mark follows the flushes, and a
    /// store whose engine holds less than the mark says is refused, or opened to inspect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_behind_its_mark_is_refused_naming_the_loss() {
        for backend in [StoreBackend::Sled, StoreBackend::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let settings = StoreSettings {
                backend,
                path: dir.path().join("store"),
                ..StoreSettings::default()
            };
            let store = EmbeddedStore::open(&settings, Arc::default(), Opening::Serve).unwrap();
            for n in 0..5 {
                let id = format!("m{n}");
                store
                    .ingest(Provider::Bik, vec![event(&id)], crate::domain::now())
                    .await
                    .unwrap();
            }
            store.close().unwrap();
            drop(store);
            let mark = Mark::read(&settings.path).unwrap().unwrap();
            assert!(mark.seq >= 5, "{backend:?}: {mark:?}");
            // Reopening a whole store: no alarm.
            let again = EmbeddedStore::open(&settings, Arc::default(), Opening::Serve).unwrap();
            again.close().unwrap();
            drop(again);
            // A mark ahead of the engine: acknowledged commits are missing.
            let name = if backend == StoreBackend::Fjall {
                "fjall"
            } else {
                "sled"
            };
            Mark::write(&settings.path, name, mark.seq + 3).unwrap();
            let Err(StoreError::Damaged(loss)) =
                EmbeddedStore::open(&settings, Arc::default(), Opening::Serve)
            else {
                panic!("{backend:?}: a store behind its mark must be refused");
            };
            assert_eq!(loss.missing(), 3, "{backend:?}");
            let text = loss.to_string();
            assert!(
                text.contains("3 acknowledged commits are missing"),
                "{text}"
            );
            assert!(
                text.contains("--accept-loss") && text.contains("flowhook export"),
                "{text}"
            );
            let inspected =
                EmbeddedStore::open(&settings, Arc::default(), Opening::Inspect).unwrap();
            assert_eq!(inspected.loss().map(Loss::missing), Some(3));
            inspected.close().unwrap();
            drop(inspected);
            // Accepting the loss serves the store and makes its state the new mark.
            let accepting = StoreSettings {
                accept_loss: true,
                ..settings.clone()
            };
            let accepted = EmbeddedStore::open(&accepting, Arc::default(), Opening::Serve).unwrap();
            accepted.close().unwrap();
            drop(accepted);
            EmbeddedStore::open(&settings, Arc::default(), Opening::Serve)
                .unwrap()
                .close()
                .unwrap();
        }
    }

    /// A directory written by one engine is refused by the other, naming both.
    #[test]
    fn a_directory_of_one_engine_is_refused_by_the_other() {
        for (written, read) in [
            (StoreBackend::Sled, StoreBackend::Fjall),
            (StoreBackend::Fjall, StoreBackend::Sled),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store");
            let settings = StoreSettings {
                backend: written,
                path: path.clone(),
                ..StoreSettings::default()
            };
            let store = EmbeddedStore::open(&settings, Arc::default(), Opening::Serve).unwrap();
            store.close().unwrap();
            drop(store);
            for without_mark in [false, true] {
                if without_mark {
                    // A store from before the mark: told apart by its files.
                    std::fs::remove_file(Mark::path(&path)).unwrap();
                }
                let other = StoreSettings {
                    backend: read,
                    ..settings.clone()
                };
                let Err(error) = EmbeddedStore::open(&other, Arc::default(), Opening::Serve) else {
                    panic!("{read:?} opened a {written:?} store");
                };
                let text = error.to_string();
                assert!(
                    text.contains("sled")
                        && text.contains("fjall")
                        && text.contains("was written by"),
                    "{text}"
                );
            }
        }
    }
}
