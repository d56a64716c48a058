//! The node's writer: every change to a node's database goes through it,
//! one transaction at a time, on the thread [`crate::storage::worker`] runs.
//!
//! Where a write goes:
//! * a small write of several sensors into the [`journal`], a table in
//!   insertion order, where its commit writes two or three pages instead of
//!   one page of `readings` per sensor;
//! * anything else straight into `readings` with the ordered [`upsert`],
//!   and the journal too, merged in bulk when [`chore`] says so.
//!
//! Invariants:
//! * A record is durable once its transaction commits, journaled or not.
//! * `pending` holds the journal's committed records not yet merged, the
//!   newest per key. Point reads consult it next to `readings`; everything
//!   else that reads `readings` (scans, digests, stats, removals) has the
//!   journal merged first, so it never reads two sources. At open, a
//!   journal left by a crash is merged before the node serves.
//! * `node_high_water`: no record of the node, in `readings` or journaled,
//!   has a higher version. Versions come from one clock, so a fresh write
//!   is above it and is journaled without looking up what the node holds;
//!   only records below it (replays, repairs, redeliveries) are looked up.
//! * `readings.high_water`: no record in `readings` has a higher version
//!   (`high_water` on disk). Fresh writes can fall below the node's high
//!   water (a batch arrives in key order, not version order, and batches in
//!   flight reach a node in either order); a record above `readings`' high
//!   water can only be superseded by a journaled record, which memory
//!   holds, so it needs no lookup in SQLite either.

mod chore;
mod journal;
mod upsert;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{CachedStatement, Connection, OptionalExtension, Transaction};

use super::RecordDecoder;
use super::digest_cache::{DigestCache, Touched};
use crate::reading::{Key, SensorId};
use crate::storage::worker::{Chore, WriteExecutor};
use crate::storage::{Record, StorageResult};
use crate::version::Version;
pub(super) use journal::{JOURNAL_SCHEMA, Pending};
use journal::{Sweep, worth_journaling};
pub(super) use upsert::UPSERT_CHUNK;
use upsert::{ReadingsWrites, stored_high_water};

/// Writes that go through the node's writer thread.
pub(super) enum NodeWrite {
    Apply(Vec<Record>),
    RemoveSensors(Vec<SensorId>),
    /// Moves everything journaled into `readings`.
    Merge,
    /// Moves the next [`SLICE`] journaled records of the sweep into
    /// `readings`.
    MergeSlice,
}

pub(super) struct NodeWriter {
    pending: Arc<Pending>,
    /// How many records `pending` holds (only this thread changes it).
    pending_len: usize,
    /// Journaled by the open transaction: pending once it commits.
    staged: BTreeMap<Key, Record>,
    /// The open transaction merged the journal into `readings`.
    merged: bool,
    /// The merge in slices under way, as committed.
    sweep: Option<Sweep>,
    /// The open transaction's slice: the keys it merged, and the sweep after
    /// it (`None` when the pass is complete).
    slice: Option<(Vec<Key>, Option<Sweep>)>,
    /// What the writes of `readings` left besides their rows.
    readings: ReadingsWrites,
    digests: Arc<DigestCache>,
    /// No record of this node, in `readings` or journaled, has a higher
    /// version. A new write's version is above it (versions come from one
    /// clock), so journaling it needs no lookup of what the node holds.
    /// On disk it is `high_water` (covering `readings`) together with the
    /// journal's own rows.
    node_high_water: Version,
}

impl NodeWriter {
    /// Merges a journal left by the previous run, then answers the writer.
    pub(super) fn open(
        connection: &mut Connection,
        pending: Arc<Pending>,
        digests: Arc<DigestCache>,
    ) -> StorageResult<Self> {
        let mut writer = Self {
            pending,
            pending_len: 0,
            staged: BTreeMap::new(),
            merged: false,
            sweep: None,
            slice: None,
            readings: ReadingsWrites::default(),
            digests,
            node_high_water: Version::default(),
        };
        let tx = connection.transaction()?;
        writer.readings.high_water = stored_high_water(&tx)?;
        writer.node_high_water = writer.readings.high_water;
        {
            let mut select = tx.prepare("SELECT sensor, ts, version, value, unit FROM journal")?;
            let mut rows = select.query([])?;
            let mut decoder = RecordDecoder::new();
            while let Some(row) = rows.next()? {
                let record = decoder.decode(row)?;
                writer.node_high_water = writer.node_high_water.max(record.version);
                let newest = match writer.staged.remove(&record.key) {
                    Some(other) => Record::newest(other, record),
                    None => record,
                };
                writer.staged.insert(newest.key.clone(), newest);
            }
        }
        if !writer.staged.is_empty() {
            tracing::info!(
                records = writer.staged.len(),
                "merging the journal left by the last run"
            );
            writer.merge(&tx)?;
        }
        tx.commit()?;
        writer.committed();
        Ok(writer)
    }

    /// The journaled record for `key`, staged or committed.
    fn journaled<'a>(
        &'a self,
        pending: &'a BTreeMap<Key, Record>,
        key: &Key,
    ) -> Option<&'a Record> {
        self.staged.get(key).or_else(|| pending.get(key))
    }

    /// The version this node holds for `key` as the open transaction sees
    /// it, as far as it matters to a record of `version`: `readings` is not
    /// looked up when nothing in it is that new.
    fn current_version(
        &self,
        pending: &BTreeMap<Key, Record>,
        lookup: &mut CachedStatement<'_>,
        key: &Key,
        version: Version,
    ) -> StorageResult<Option<Version>> {
        let journaled = self.journaled(pending, key).map(|r| r.version);
        if version > self.readings.high_water {
            return Ok(journaled);
        }
        // Both: a direct write may have superseded a journaled record.
        let stored: Option<i64> = lookup
            .query_row(
                rusqlite::params![key.sensor.as_str(), key.timestamp_ms],
                |r| r.get(0),
            )
            .optional()?;
        let stored = stored.map(|v| Version(v as u64));
        Ok(journaled.max(stored))
    }
}

impl WriteExecutor for NodeWriter {
    type Op = NodeWrite;
    type Out = u64;

    fn weight(op: &NodeWrite) -> usize {
        match op {
            NodeWrite::Apply(records) => records.len(),
            NodeWrite::RemoveSensors(sensors) => sensors.len(),
            NodeWrite::Merge | NodeWrite::MergeSlice => 1,
        }
    }

    fn execute(&mut self, tx: &Transaction<'_>, op: &NodeWrite) -> StorageResult<u64> {
        match op {
            NodeWrite::Apply(records) if worth_journaling(records) => self.journal(tx, records),
            NodeWrite::Apply(records) => self.upsert_direct(tx, records),
            NodeWrite::RemoveSensors(sensors) => {
                self.merge(tx)?;
                let mut delete = tx.prepare_cached("DELETE FROM readings WHERE sensor = ?1")?;
                let mut removed = 0;
                for s in sensors {
                    removed += delete.execute([s.as_str()])? as u64;
                }
                self.readings.touched.sensors(sensors);
                Ok(removed)
            }
            NodeWrite::Merge => {
                self.merge(tx)?;
                Ok(0)
            }
            NodeWrite::MergeSlice => {
                self.merge_slice(tx)?;
                Ok(0)
            }
        }
    }

    fn committed(&mut self) {
        {
            let mut pending = self.pending.write();
            if self.merged {
                pending.clear();
                self.sweep = None;
            }
            // Chores run alone: nothing else in a slice's transaction
            // changed these keys.
            if let Some((keys, sweep)) = self.slice.take() {
                for key in &keys {
                    pending.remove(key);
                }
                self.sweep = sweep;
            }
            // One insert each: `BTreeMap::append` would rebuild the whole
            // map, thousands of records, on every commit of a hundred.
            for (key, record) in std::mem::take(&mut self.staged) {
                pending.insert(key, record);
            }
            self.pending_len = pending.len();
        }
        self.merged = false;
        // After the commit: a digest computed from then on sees the change.
        self.digests
            .touch(std::mem::take(&mut self.readings.touched));
    }

    fn rolled_back(&mut self) {
        self.staged.clear();
        self.merged = false;
        self.slice = None;
        self.readings.touched = Touched::default();
    }

    fn chore(&self) -> Option<(Chore, NodeWrite)> {
        chore::next(self.pending_len, self.sweep.is_some())
    }
}
