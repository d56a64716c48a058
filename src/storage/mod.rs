//! Storage nodes: where versioned records live.
//!
//! A [`StorageNode`] holds records keyed by [`Key`], each with the
//! [`Version`] of the write that produced it, and keeps only the highest
//! version per key. A delete is a record too (a *tombstone*, `sample: None`),
//! so a replica that missed the delete cannot bring the value back.
//!
//! This module knows nothing of replication: the replicator decides which
//! nodes get which records. The trait is asynchronous and takes owned,
//! serializable arguments so that a node living in another process, reached
//! over the network, can implement it without touching the replicator.
//!
//! Implementations: [`sqlite::SqliteNode`] (the real one: a database file per
//! node, WAL, group commit on a writer thread) and [`memory::MemoryNode`]
//! (for tests). Both pass the one shared suite in `suite.rs`.

pub mod digest;
pub mod memory;
pub mod pages;
pub mod remote;
pub mod reopen;
pub mod sqlite;
#[cfg(test)]
mod suite;
pub(crate) mod worker;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::reading::{InvalidInput, Key, Sample, SensorId};
use crate::version::Version;

pub use digest::{DigestRequest, RangeDigest};
pub use pages::Pages;

/// The name of a storage node, e.g. `node1`. Same character rules as a
/// sensor id, because it names a file under `data_dir`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s
            .parse::<SensorId>()
            .map_err(|e| InvalidInput::new("node", e.reason))?;
        Ok(Self(Arc::from(valid.as_str())))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One versioned record: a value, or a tombstone when `sample` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Key,
    pub version: Version,
    pub sample: Option<Sample>,
}

impl Record {
    pub fn is_tombstone(&self) -> bool {
        self.sample.is_none()
    }

    /// Of two records for the same key, the one a replica keeps.
    pub fn newest(a: Record, b: Record) -> Record {
        if b.version > a.version { b } else { a }
    }
}

/// A range read in key order (sensor, then timestamp).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Only this sensor's records.
    pub sensor: Option<SensorId>,
    /// Timestamps at or after this (epoch ms).
    pub from_ms: Option<i64>,
    /// Timestamps strictly before this (epoch ms).
    pub to_ms: Option<i64>,
    /// Only keys strictly after this one (the paging cursor).
    pub after: Option<Key>,
    /// At most this many records.
    pub limit: usize,
    /// Include tombstones (repair and rebalancing need them; answers don't).
    pub tombstones: bool,
}

impl Scan {
    /// Whether `key` falls inside this scan's filters (ignoring `limit`).
    pub fn admits(&self, key: &Key) -> bool {
        self.sensor.as_ref().is_none_or(|s| *s == key.sensor)
            && self.from_ms.is_none_or(|from| key.timestamp_ms >= from)
            && self.to_ms.is_none_or(|to| key.timestamp_ms < to)
            && self.after.as_ref().is_none_or(|after| key > after)
    }
}

/// What a node holds, for status pages and for starting the version clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    pub live_keys: u64,
    pub tombstones: u64,
    pub max_version: Version,
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is in use by another process (is another energyguard running on this data_dir?)"
    )]
    InUse { path: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the storage node is closed")]
    Closed,
    /// A node in another process did not answer (refused, cut off, or past
    /// the call's deadline): what a call did there is unknown.
    #[error("storage node unreachable: {0}")]
    Unreachable(String),
    /// A node in another process failed with its storage.
    #[error("{0}")]
    Remote(String),
    /// A node in another process refused the call: wrong secret, another
    /// node's directory, or a service older than one it has seen.
    #[error("storage node refused the call: {0}")]
    Refused(String),
}

impl StorageError {
    /// Whether the node did not serve the call at all (no answer, or a
    /// refusal: wrong secret, another node, a stale epoch), rather than
    /// failing with its storage.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Refused(_))
    }
}

impl From<rusqlite::types::FromSqlError> for StorageError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Creates `dir` (and its parents) if needed.
pub(crate) fn ensure_dir(dir: &std::path::Path) -> StorageResult<()> {
    std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
        path: dir.display().to_string(),
        source,
    })
}

/// Replaces `path` with `contents` so that a crash leaves the old file or
/// the new one, never a part: written beside it, synced, renamed over it,
/// and the directory synced.
pub(crate) fn write_file_durably(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A place that durably stores versioned records.
#[async_trait]
pub trait StorageNode: Send + Sync + 'static {
    fn id(&self) -> &NodeId;

    /// Merges `records` in: for each key the highest version is kept.
    /// Returns once the records are durable; answers how many changed the
    /// node (a record older than what is stored changes nothing).
    async fn apply(&self, records: Vec<Record>) -> StorageResult<u64>;

    /// The stored record for `key`, tombstones included.
    async fn get(&self, key: &Key) -> StorageResult<Option<Record>>;

    /// Records in key order, filtered as `scan` says.
    async fn scan(&self, scan: Scan) -> StorageResult<Vec<Record>>;

    /// Digests of what the node holds, per sensor or per sensor and time
    /// bucket, for comparing replicas without shipping the data.
    async fn digests(&self, request: DigestRequest) -> StorageResult<Vec<RangeDigest>>;

    /// Physically removes every record (tombstones too) of these sensors:
    /// used when the node no longer owns them. Answers records removed.
    async fn remove_sensors(&self, sensors: Vec<SensorId>) -> StorageResult<u64>;

    async fn stats(&self) -> StorageResult<NodeStats>;

    /// Finishes pending writes and releases the node's resources.
    async fn close(&self) -> StorageResult<()>;

    /// Where the node keeps its data, for status pages: a directory, or the
    /// URL of a node process.
    fn address(&self) -> String;

    /// A cheap call that tells whether the node serves, and which
    /// incarnation of its storage answers: the incarnation is made with the
    /// node's database, so a new one means the data it held is gone (a
    /// wiped directory, a replaced disk).
    async fn probe(&self) -> StorageResult<Incarnation>;
}

/// Names one life of a node's storage, from its creation to its loss.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Incarnation(pub String);

impl Incarnation {
    /// A new, random one.
    pub fn new() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }
}

impl Default for Incarnation {
    fn default() -> Self {
        Self::new()
    }
}
