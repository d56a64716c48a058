//! An in-memory storage node, for tests and the model test of replication.
//!
//! Same semantics as the SQLite node (it passes the same suite), nothing
//! durable. A `std::sync::Mutex` guards the map: every operation is a short
//! in-memory computation that never awaits while holding it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::digest::DigestBuilder;
use super::{
    DigestRequest, Incarnation, NodeId, NodeStats, RangeDigest, Record, Scan, StorageNode,
    StorageResult,
};
use crate::reading::{Key, SensorId};

pub struct MemoryNode {
    id: NodeId,
    records: Mutex<BTreeMap<Key, Record>>,
    incarnation: Mutex<Incarnation>,
}

impl MemoryNode {
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            records: Mutex::new(BTreeMap::new()),
            incarnation: Mutex::new(Incarnation::new()),
        }
    }

    /// Forgets everything, like a disk replaced by an empty one.
    pub fn wipe(&self) {
        self.records().clear();
        *self.incarnation.lock().unwrap_or_else(|p| p.into_inner()) = Incarnation::new();
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StorageNode for MemoryNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    async fn apply(&self, records: Vec<Record>) -> StorageResult<u64> {
        let mut map = self.records();
        let mut changed = 0;
        for record in records {
            let newer = map
                .get(&record.key)
                .is_none_or(|stored| record.version > stored.version);
            if newer {
                map.insert(record.key.clone(), record);
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn get(&self, key: &Key) -> StorageResult<Option<Record>> {
        Ok(self.records().get(key).cloned())
    }

    async fn scan(&self, scan: Scan) -> StorageResult<Vec<Record>> {
        Ok(self
            .records()
            .values()
            .filter(|r| scan.admits(&r.key) && (scan.tombstones || !r.is_tombstone()))
            .take(scan.limit)
            .cloned()
            .collect())
    }

    async fn digests(&self, request: DigestRequest) -> StorageResult<Vec<RangeDigest>> {
        let mut builder = DigestBuilder::new(&request);
        for r in self.records().values() {
            if request.sensor.as_ref().is_none_or(|s| *s == r.key.sensor) {
                builder.push(
                    &r.key.sensor,
                    r.key.timestamp_ms,
                    r.version,
                    r.is_tombstone(),
                );
            }
        }
        Ok(builder.finish())
    }

    async fn remove_sensors(&self, sensors: Vec<SensorId>) -> StorageResult<u64> {
        let mut map = self.records();
        let before = map.len();
        map.retain(|key, _| !sensors.contains(&key.sensor));
        Ok((before - map.len()) as u64)
    }

    async fn stats(&self) -> StorageResult<NodeStats> {
        let map = self.records();
        let tombstones = map.values().filter(|r| r.is_tombstone()).count() as u64;
        Ok(NodeStats {
            live_keys: map.len() as u64 - tombstones,
            tombstones,
            max_version: map.values().map(|r| r.version).max().unwrap_or_default(),
        })
    }

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }

    fn address(&self) -> String {
        "memory".into()
    }

    async fn probe(&self) -> StorageResult<Incarnation> {
        Ok(self
            .incarnation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }
}
