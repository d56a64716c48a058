//! The cluster's own durable state, in `<data_dir>/cluster.sqlite3`: hints
//! for nodes that are down, and settings (the placement, a rebalance in
//! progress, which nodes are out of service).
//!
//! It is separate from every storage node on purpose: a hint exists because
//! its node is unavailable, so it must not live on that node. Writes share the
//! storage nodes' group-commit writer thread design (`storage/worker.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::reading::Unit;
use crate::storage::sqlite::{ReadPool, RecordDecoder, Synchronous, open_connection};
use crate::storage::worker::{Worker, WriteExecutor};
use crate::storage::{NodeId, Record, StorageError, StorageResult};
use crate::version::Version;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hints (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    node    TEXT    NOT NULL,
    sensor  TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value   REAL,
    unit    TEXT
);
CREATE INDEX IF NOT EXISTS hints_by_node ON hints (node, seq);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The names of the settings the replicator keeps in the cluster store.
pub(super) mod keys {
    /// The current placement.
    pub const PLACEMENT: &str = "placement";
    /// The last complete placement while data moves away from it.
    pub const PREVIOUS_PLACEMENT: &str = "previous_placement";
    /// Copies on nodes that no longer own them await removal.
    pub const CLEANUP_PENDING: &str = "cleanup_pending";
    /// The nodes down, with why.
    pub const DOWN_NODES: &str = "down_nodes";
    /// The incarnation each node's storage was last known by.
    pub const INCARNATIONS: &str = "incarnations";
    /// A version above every version this service has issued (see
    /// `Replicator::persist_clock_high_water`).
    pub const CLOCK_HIGH_WATER: &str = "clock_high_water";
    /// The settings epoch: counts changes of where writes go (see
    /// `Replicator::epoch`).
    pub const EPOCH: &str = "settings_epoch";
}

/// A hint read back: its sequence number (for removal) and the record.
pub struct Hint {
    pub seq: i64,
    pub record: Record,
}

enum MetaWrite {
    AddHints(NodeId, Vec<Record>),
    RemoveHints { node: NodeId, up_to: i64 },
    PutSetting(String, String),
    DeleteSetting(String),
}

struct MetaWriter;

impl WriteExecutor for MetaWriter {
    type Op = MetaWrite;
    type Out = u64;

    fn weight(op: &MetaWrite) -> usize {
        match op {
            MetaWrite::AddHints(_, records) => records.len(),
            _ => 1,
        }
    }

    fn execute(&mut self, tx: &Transaction<'_>, op: &MetaWrite) -> StorageResult<u64> {
        Ok(match op {
            MetaWrite::AddHints(node, records) => {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO hints (node, sensor, ts, version, value, unit) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for r in records {
                    let value = r.sample.as_ref().map(|s| s.value);
                    let unit = r
                        .sample
                        .as_ref()
                        .and_then(|s| s.unit.as_ref())
                        .map(Unit::as_str);
                    insert.execute(params![
                        node.as_str(),
                        r.key.sensor.as_str(),
                        r.key.timestamp_ms,
                        r.version.0 as i64,
                        value,
                        unit
                    ])?;
                }
                records.len() as u64
            }
            MetaWrite::RemoveHints { node, up_to } => tx.execute(
                "DELETE FROM hints WHERE node = ?1 AND seq <= ?2",
                params![node.as_str(), up_to],
            )? as u64,
            MetaWrite::PutSetting(name, value) => tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )? as u64,
            MetaWrite::DeleteSetting(name) => {
                tx.execute("DELETE FROM settings WHERE name = ?1", [name])? as u64
            }
        })
    }
}

pub struct MetaStore {
    writer: Worker<MetaWriter>,
    readers: Arc<ReadPool>,
    /// Hints pending per node, kept in memory for status pages and metrics.
    /// A `std::sync::Mutex`: held for a map update, never across an await.
    pending: Mutex<BTreeMap<NodeId, u64>>,
}

impl MetaStore {
    pub fn open(dir: &Path, synchronous: Synchronous) -> StorageResult<Self> {
        crate::storage::ensure_dir(dir)?;
        let path = dir.join("cluster.sqlite3");
        let connection = open_connection(&path, synchronous)?;
        connection.execute_batch(SCHEMA)?;
        let mut pending = BTreeMap::new();
        {
            let mut stmt = connection.prepare("SELECT node, count(*) FROM hints GROUP BY node")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let node: String = row.get(0)?;
                let node: NodeId = node
                    .parse()
                    .map_err(|e| StorageError::Corrupt(format!("hint for node {node:?}: {e}")))?;
                pending.insert(node, row.get::<_, i64>(1)? as u64);
            }
        }
        Ok(Self {
            writer: Worker::spawn("cluster-meta".into(), connection, MetaWriter)?,
            readers: Arc::new(ReadPool::new(path)),
            pending: Mutex::new(pending),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, u64>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durably keeps `records` for `node` until it recovers.
    pub async fn add_hints(&self, node: &NodeId, records: Vec<Record>) -> StorageResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let added = self
            .writer
            .submit(MetaWrite::AddHints(node.clone(), records))
            .await?;
        *self.pending().entry(node.clone()).or_default() += added;
        Ok(())
    }

    /// Up to `limit` hints for `node` after sequence number `after`, oldest first.
    pub async fn hints(&self, node: &NodeId, after: i64, limit: usize) -> StorageResult<Vec<Hint>> {
        let node = node.clone();
        self.readers
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT sensor, ts, version, value, unit, seq FROM hints
                     WHERE node = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let mut rows = stmt.query(params![node.as_str(), after, limit as i64])?;
                let mut decoder = RecordDecoder::new();
                let mut hints = Vec::new();
                while let Some(row) = rows.next()? {
                    hints.push(Hint {
                        record: decoder.decode(row)?,
                        seq: row.get(5)?,
                    });
                }
                Ok(hints)
            })
            .await
    }

    /// Forgets `node`'s hints up to and including sequence number `up_to`.
    pub async fn remove_hints(&self, node: &NodeId, up_to: i64) -> StorageResult<()> {
        let removed = self
            .writer
            .submit(MetaWrite::RemoveHints {
                node: node.clone(),
                up_to,
            })
            .await?;
        let mut pending = self.pending();
        let count = pending.entry(node.clone()).or_default();
        *count = count.saturating_sub(removed);
        Ok(())
    }

    pub fn hints_pending(&self, node: &NodeId) -> u64 {
        self.pending().get(node).copied().unwrap_or(0)
    }

    /// The highest version of any hint, so the clock starts above it.
    pub async fn max_version(&self) -> StorageResult<Version> {
        self.readers
            .read(|c| {
                let max: Option<i64> =
                    c.query_row("SELECT max(version) FROM hints", [], |r| r.get(0))?;
                Ok(Version(max.unwrap_or(0) as u64))
            })
            .await
    }

    pub async fn setting<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> StorageResult<Option<T>> {
        let name = name.to_string();
        self.readers
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT value FROM settings WHERE name = ?1")?;
                let mut rows = stmt.query([&name])?;
                match rows.next()? {
                    None => Ok(None),
                    Some(row) => {
                        let text: String = row.get(0)?;
                        serde_json::from_str(&text)
                            .map(Some)
                            .map_err(|e| StorageError::Corrupt(format!("setting {name}: {e}")))
                    }
                }
            })
            .await
    }

    pub async fn put_setting<T: Serialize>(&self, name: &str, value: &T) -> StorageResult<()> {
        let text = serde_json::to_string(value)
            .map_err(|e| StorageError::Corrupt(format!("setting {name}: {e}")))?;
        self.writer
            .submit(MetaWrite::PutSetting(name.to_string(), text))
            .await?;
        Ok(())
    }

    pub async fn delete_setting(&self, name: &str) -> StorageResult<()> {
        self.writer
            .submit(MetaWrite::DeleteSetting(name.to_string()))
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.clear();
    }
}
