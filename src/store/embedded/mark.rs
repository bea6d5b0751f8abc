//! No silent loss: the commit mark.
//!
//! Every commit writes its sequence number into its own write set (`meta/seq`), so the
//! engine's recovered state says which commit it ends with. Outside the engine's files,
//! `flowhook.mark` records the highest commit known to be durable: it is replaced atomically
//! (written beside, synced, renamed, directory synced) about once a second after a flush and
//! at a clean stop. At open, an engine that recovered to a commit below the mark has lost
//! acknowledged writes: its log or a table was damaged or cut short, which both sled and
//! fjall read as a shorter log without a word.
//!
//! A clean stop, a SIGKILL or a full disk never trips it: the mark only ever names a commit
//! that a flush had already made durable, and a failed write of the mark leaves the old one.
//! The mark also names the engine, so a directory of one engine is refused by the other.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

pub(crate) const FILE: &str = "flowhook.mark";

/// What the mark file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    pub engine: String,
    /// The highest commit known durable.
    pub seq: u64,
    /// When it was written (RFC 3339), for the messages.
    pub written_at: String,
}

impl Mark {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// The mark in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Mark>, StoreError> {
        let text = match std::fs::read_to_string(Self::path(dir)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unopenable(dir, &e.to_string())),
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
        };
        let unreadable = || {
            StoreError::Unopenable(format!(
                "{} cannot be read (it is not a flowhook commit mark); if it is damaged, \
                 remove it to open the store without the check for lost writes",
                Self::path(dir).display()
            ))
        };
        Ok(Some(Mark {
            engine: field("engine").ok_or_else(unreadable)?.to_owned(),
            seq: field("seq")
                .and_then(|s| s.parse().ok())
                .ok_or_else(unreadable)?,
            written_at: field("written_at").unwrap_or("").to_owned(),
        }))
    }

    /// Replaces the mark in `dir` atomically and durably.
    pub fn write(dir: &Path, engine: &str, seq: u64) -> std::io::Result<()> {
        let text = format!(
            "# flowhook's commit mark: the last commit known durable. See README, \"No silent loss\".\nengine={engine}\nseq={seq}\nwritten_at={}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let temporary = dir.join(format!("{FILE}.tmp"));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        drop(file);
        std::fs::rename(&temporary, Self::path(dir))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The engine whose files are in `dir`, by the mark or, for a store written before the mark
/// existed, by the files each engine writes; `None` for an empty or new directory.
pub(crate) fn engine_in(dir: &Path) -> Result<Option<String>, StoreError> {
    if let Some(mark) = Mark::read(dir)? {
        return Ok(Some(mark.engine));
    }
    let has = |name: &str| dir.join(name).exists();
    Ok(if has("conf") && has("db") {
        Some("sled".into())
    } else if has("keyspaces") || has("version") {
        Some("fjall".into())
    } else {
        None
    })
}

/// Refuses a directory written by another engine than `engine`, naming both.
pub(crate) fn check_engine(dir: &Path, engine: &str) -> Result<(), StoreError> {
    match engine_in(dir)? {
        Some(found) if found != engine => Err(StoreError::Unopenable(format!(
            "the store at {} was written by {found}, but store.backend is \"{engine}\": {engine} \
             would not read it. Set store.backend = \"{found}\" to open it, or move it to \
             {engine} with `flowhook export` (backend {found}) and `flowhook import` (backend \
             {engine}, an empty store.path); see README, \"Moving between backends\"",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// A store directory that cannot be opened, with the way out.
pub(crate) fn unopenable(dir: &Path, error: &str) -> StoreError {
    unopenable_with(dir, error, "")
}

/// [`unopenable`] with an engine's own advice first (it ends with a space, or is empty).
pub(crate) fn unopenable_with(dir: &Path, error: &str, advice: &str) -> StoreError {
    let shown = dir.display();
    StoreError::Unopenable(format!(
        "the store at {shown} cannot be opened: {error}. {advice}Restore a backup with \
         `flowhook import` into an empty directory (set store.path to it), or move {shown} \
         aside to start empty"
    ))
}

/// A store directory another process holds.
pub(crate) fn in_use(dir: &Path, detail: &str) -> StoreError {
    StoreError::Unopenable(format!(
        "the store at {} is in use by another process{detail}; stop it first",
        dir.display()
    ))
}

/// What opening found missing: acknowledged commits the engine did not recover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub engine: String,
    /// The last commit the engine recovered.
    pub recovered: u64,
    /// The last commit known durable, by the mark.
    pub acknowledged: u64,
    pub mark_written_at: String,
    pub path: PathBuf,
}

impl Loss {
    pub fn missing(&self) -> u64 {
        self.acknowledged.saturating_sub(self.recovered)
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the store at {} is damaged: {} recovered its writes up to commit {}, but commits \
             up to {} had been acknowledged (mark written at {}), so {} acknowledged commits \
             are missing: a file of the store was damaged or cut short. Ways out: `flowhook \
             export` writes everything that can still be read, to `flowhook import` into an \
             empty store (set store.path to an empty directory); or `flowhook serve \
             --accept-loss` serves the store as it is and records that as its new state",
            self.path.display(),
            self.engine,
            self.recovered,
            self.acknowledged,
            self.mark_written_at,
            self.missing()
        )
    }
}
