//! The narrow interface the embedded layout is written against: named keyspaces, point reads,
//! ordered range scans, one atomic write set across keyspaces, and a durable flush. sled
//! ([`super::sled::SledEngine`]) and fjall ([`super::fjall::FjallEngine`]) each implement it
//! in one file; everything above it (records, indexes, outbox, counters, retention, upgrades,
//! backup, check-store) is written once.
//!
//! There are no engine transactions above this line: one writer thread owns every write
//! (see [`super::writer`]), so a commit is plain reads plus one [`WriteSet`].

use std::ops::Bound;

use super::super::StoreError;

/// The keyspaces of the embedded layout (sled calls them trees, fjall keyspaces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Space {
    Messages,
    Dedupe,
    IdxCallback,
    IdxRecipient,
    IdxTime,
    Aggregates,
    Rejected,
    Meta,
    Actions,
    ActionIdx,
    Outbox,
    Inflight,
    /// Recipients' marketing preferences (opt-outs), by recipient key.
    Recipients,
}

impl Space {
    pub const ALL: [Space; 13] = [
        Space::Messages,
        Space::Dedupe,
        Space::IdxCallback,
        Space::IdxRecipient,
        Space::IdxTime,
        Space::Aggregates,
        Space::Rejected,
        Space::Meta,
        Space::Actions,
        Space::ActionIdx,
        Space::Outbox,
        Space::Inflight,
        Space::Recipients,
    ];

    /// Its name on disk (sled's tree names since the first release).
    pub fn name(self) -> &'static str {
        match self {
            Space::Messages => "messages",
            Space::Dedupe => "dedupe",
            Space::IdxCallback => "idx_callback",
            Space::IdxRecipient => "idx_recipient",
            Space::IdxTime => "idx_time",
            Space::Aggregates => "aggregates",
            Space::Rejected => "rejected",
            Space::Meta => "meta",
            Space::Actions => "actions",
            Space::ActionIdx => "action_idx",
            Space::Outbox => "outbox",
            Space::Inflight => "inflight",
            Space::Recipients => "recipients",
        }
    }

    /// Its position in [`Space::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A key and its value, owned.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// An ordered scan.
pub(crate) type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

/// One atomic change across keyspaces: inserts (`Some`) and removals (`None`), applied in
/// order, so a later change of a key wins.
#[derive(Default, Debug)]
pub(crate) struct WriteSet {
    pub changes: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteSet {
    pub fn insert(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.changes.push((space, key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.changes.push((space, key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

/// An embedded storage engine.
pub(crate) trait Engine: Send + Sync + 'static {
    /// `"sled"` or `"fjall"`.
    fn name(&self) -> &'static str;

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries with keys within the bounds, in key order (or reversed).
    fn range<'a>(
        &'a self,
        space: Space,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
    ) -> Entries<'a>;

    /// Applies the write set atomically: after a crash all of it or none is there. Durable
    /// only after a later [`Engine::flush`].
    fn commit(&self, writes: WriteSet) -> Result<(), StoreError>;

    /// Makes every commit so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Makes every commit durable before the store is closed; an engine may also leave its
    /// files so that the next open has less to replay.
    fn close(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// False once this handle can take no more writes (fjall after a failed commit or
    /// flush); the store is then opened again.
    fn healthy(&self) -> bool {
        true
    }

    /// Whether the keyspace has no entries.
    fn is_empty(&self, space: Space) -> Result<bool, StoreError> {
        Ok(self
            .range(space, Bound::Unbounded, Bound::Unbounded, false)
            .next()
            .transpose()?
            .is_none())
    }
}

/// The entries whose keys start with `prefix`, in order.
pub(crate) fn prefixed<'a>(engine: &'a dyn Engine, space: Space, prefix: &'a [u8]) -> Entries<'a> {
    let scan = engine.range(space, Bound::Included(prefix), Bound::Unbounded, false);
    Box::new(scan.take_while(move |entry| match entry {
        Ok((k, _)) => k.starts_with(prefix),
        Err(_) => true,
    }))
}

/// Every entry of a keyspace, in order.
pub(crate) fn all(engine: &dyn Engine, space: Space) -> Entries<'_> {
    engine.range(space, Bound::Unbounded, Bound::Unbounded, false)
}
