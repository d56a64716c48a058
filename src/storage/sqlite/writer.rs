//! What the node's writer thread does: small writes into the journal, large
//! ones straight into `readings`, and the journal merged into `readings` in
//! bulk.
//!
//! Why a journal: `readings` is clustered by `(sensor, ts)`, so a commit of
//! 100 readings of 100 sensors touches about 100 B-tree pages, each written
//! to the WAL in full (1.76 ms, against 11 ms for 5,000 readings, in
//! `cargo bench --bench storage`; 0.54 ms through the journal). The MQTT
//! consumer (at most 100 unacknowledged messages with the embedded broker)
//! and concurrent single-reading POSTs commit exactly such small batches.
//! Appended to the `journal` table, a rowid table in insertion order, the
//! same commit writes two or three pages; the journal is merged into
//! `readings`, where the pages are shared by thousands of rows again, when
//! the node is idle, or from [`MERGE_AT`] records on in slices of [`SLICE`]
//! between writes ([`Sweep`]; past [`SLICE_NOW_AT`], one slice before each
//! write even when writes queue back to back). Merged at once, 4,096 records stalled the
//! next write for 10–20 ms; in slices a write waits a millisecond or two
//! (single-reading POSTs under `wrk -c32`: p99 6.3–6.9 → 4.2–4.6 ms, the
//! same throughput). A write of one sensor
//! (a range copied by recovery or rebalancing, a read repair, a lone POST)
//! touches its few pages in a row, so it goes straight to `readings`.
//!
//! A journaled record is durable once its transaction commits, like any
//! other. Until merged it is also held in memory ([`Pending`]), which point
//! reads consult next to `readings`; everything else that reads `readings`
//! (scans, digests, stats, removals) has the journal merged first, so it
//! never needs to merge two sources. At open, a journal left by a crash is
//! merged before the node serves.
//!
//! Journaling a record needs to know whether it is newer than what the node
//! holds for its key, which is a lookup in `readings` per record. A fresh
//! write's version is above every version the node holds (one clock issues
//! them), so the writer keeps that high-water version (`high_water` on disk,
//! raised in the transactions that write `readings`, plus the journal's own
//! rows) and looks up only records below it: replays, repairs, redeliveries.
//! A journaled commit of 67 records went from 344 to 64 µs (median, the
//! MQTT stream of 100 messages per batch over three nodes).
//!
//! Fresh writes still fall below it: a batch's records arrive in key order,
//! not version order, and two batches in flight reach a node in either
//! order (half of the records of single-reading POSTs under `wrk`). So the
//! writer also keeps the high water of `readings` alone, which the journal
//! leaves behind: a record above it can only be superseded by a journaled
//! one, which memory holds, and needs no lookup in SQLite (writer-thread
//! CPU per POST under `wrk -c32`: 20.1 → 16.2 µs, medians of five
//! alternated pairs).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rusqlite::{CachedStatement, Connection, OptionalExtension, Transaction};

use super::RecordDecoder;
use super::digest_cache::{DigestCache, Touched};
use crate::reading::{Key, SensorId, Unit};
use crate::storage::worker::{Chore, WriteExecutor};
use crate::storage::{Record, StorageResult};
use crate::version::Version;

/// Writes of at most this many records, of more than one sensor, go to
/// the journal.
const JOURNAL_UP_TO: usize = 1_000;
/// Merge the journal in slices between writes once it holds this many
/// records.
const MERGE_AT: usize = 4_096;
/// Records merged per slice: about a millisecond of work, which is what a
/// write arriving meanwhile waits at most.
const SLICE: usize = 1_024;
/// Merge a slice before the next write, gap or not, once the journal holds
/// this many records: writes queued back to back leave no gaps.
const SLICE_NOW_AT: usize = 2 * MERGE_AT;
/// Merge the whole journal before the next write once it holds this many
/// records, should even a slice per write not keep up.
const MERGE_ALL_AT: usize = 4 * MERGE_AT;
/// Rows per multi-row `INSERT`: one statement execution per chunk instead
/// of per row cuts SQLite's per-statement overhead (about a third faster).
pub(super) const UPSERT_CHUNK: usize = 64;

pub(super) const JOURNAL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    seq     INTEGER PRIMARY KEY,
    sensor  TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value   REAL,
    unit    TEXT
);
CREATE TABLE IF NOT EXISTS high_water (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
";

/// An upsert of `rows` rows that keeps the highest version per key. Within
/// one statement rows are applied in order, so a key repeated in a chunk
/// still ends with its highest version.
fn upsert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO readings (sensor, ts, version, value, unit) VALUES {values}
         ON CONFLICT (sensor, ts) DO UPDATE
             SET version = excluded.version, value = excluded.value, unit = excluded.unit
             WHERE excluded.version > readings.version"
    )
}

/// An append of `rows` rows to the journal.
fn journal_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
    format!("INSERT INTO journal (sensor, ts, version, value, unit) VALUES {values}")
}

/// Journaled records not yet merged into `readings`, newest per key: the
/// writer thread changes them (after its commits), readers look keys up.
///
/// A std `RwLock`: held only for a lookup or an insert, never across a
/// query or an await.
#[derive(Default)]
pub(super) struct Pending {
    records: RwLock<BTreeMap<Key, Record>>,
}

impl Pending {
    pub(super) fn get(&self, key: &Key) -> Option<Record> {
        self.read().get(key).cloned()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Key, Record>> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Key, Record>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }
}

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

/// A merge of the journal in slices: a pass over the pending records in key
/// order. Journal rows are deleted once the pass has gone over every key:
/// the rows up to `up_to_seq` (the journal's end when the pass began) then
/// all hold records merged or superseded. Rows of records merged earlier in
/// the pass stay until then, and a crash merges them again at open, which
/// changes nothing: the upsert keeps the higher version.
struct Sweep {
    up_to_seq: i64,
    /// Where the next slice starts.
    from: Key,
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
    newest: Version,
}

/// What every write of `readings` owes besides its rows, kept apart from
/// the rest of the writer so that it can be updated while the records
/// written are borrowed from the journal's maps.
#[derive(Default)]
struct ReadingsWrites {
    /// The sensors' days whose rows the open transaction changed.
    touched: Touched,
    /// No record in `readings` has a higher version: `high_water` on disk,
    /// as the open transaction raises it (left raised if it rolls back,
    /// which only costs lookups).
    newest: Version,
}

impl ReadingsWrites {
    /// Upserts key-ordered `records` into `readings`, marks their sensors
    /// touched and raises `high_water`, on disk and in `newest`. Answers the
    /// rows changed.
    fn upsert(&mut self, tx: &Transaction<'_>, records: &[&Record]) -> StorageResult<u64> {
        self.touched.records(records);
        if let Some(highest) = raise_high_water(tx, records)? {
            self.newest = self.newest.max(highest);
        }
        insert_chunked(tx, records, upsert_sql)
    }
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
            newest: Version::default(),
        };
        let tx = connection.transaction()?;
        writer.readings.newest = stored_high_water(&tx)?;
        writer.newest = writer.readings.newest;
        {
            let mut select = tx.prepare("SELECT sensor, ts, version, value, unit FROM journal")?;
            let mut rows = select.query([])?;
            let mut decoder = RecordDecoder::new();
            while let Some(row) = rows.next()? {
                let record = decoder.decode(row)?;
                writer.newest = writer.newest.max(record.version);
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
        if version > self.readings.newest {
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

    /// Journals the records that are newer than what the node holds.
    fn journal(&mut self, tx: &Transaction<'_>, records: &[Record]) -> StorageResult<u64> {
        let pending = self.pending.clone();
        let pending = pending.read();
        let mut lookup =
            tx.prepare_cached("SELECT version FROM readings WHERE sensor = ?1 AND ts = ?2")?;
        let mut newer = Vec::with_capacity(records.len());
        for record in records {
            let is_newer = record.version > self.newest || {
                let current =
                    self.current_version(&pending, &mut lookup, &record.key, record.version)?;
                current.is_none_or(|v| record.version > v)
            };
            if is_newer {
                self.newest = self.newest.max(record.version);
                self.staged.insert(record.key.clone(), record.clone());
                newer.push(record);
            }
        }
        insert_chunked(tx, &newer, journal_sql)?;
        Ok(newer.len() as u64)
    }

    /// Writes records straight into `readings`, leaving out those a
    /// journaled record already supersedes.
    fn upsert_direct(&mut self, tx: &Transaction<'_>, records: &[Record]) -> StorageResult<u64> {
        let pending = self.pending.clone();
        let pending = pending.read();
        let mut ordered: Vec<&Record> = records
            .iter()
            .filter(|r| {
                self.journaled(&pending, &r.key)
                    .is_none_or(|journaled| r.version > journaled.version)
            })
            .collect();
        // Readings of many sensors arrive interleaved; inserting them in key
        // order walks the B-tree sequentially instead of seeking for every row.
        ordered.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let changed = self.readings.upsert(tx, &ordered)?;
        self.newest = self.newest.max(self.readings.newest);
        Ok(changed)
    }

    /// Moves everything journaled (committed or staged) into `readings`.
    fn merge(&mut self, tx: &Transaction<'_>) -> StorageResult<()> {
        let pending = self.pending.clone();
        let pending = pending.read();
        if pending.is_empty() && self.staged.is_empty() {
            return Ok(());
        }
        // Staged records were checked against pending ones: they are newer.
        // Already in key order: no sort. The journal's rows go, and
        // `high_water` covers their versions now (already below `newest`).
        let records = merge_sorted(&pending, &self.staged);
        self.readings.upsert(tx, &records)?;
        tx.execute("DELETE FROM journal", [])?;
        self.staged.clear();
        self.merged = true;
        Ok(())
    }

    /// Moves the sweep's next slice of committed journaled records into
    /// `readings`, starting a sweep if none is under way.
    fn merge_slice(&mut self, tx: &Transaction<'_>) -> StorageResult<()> {
        let pending = self.pending.clone();
        let pending = pending.read();
        let (up_to_seq, from) = match &self.sweep {
            Some(sweep) => (sweep.up_to_seq, &sweep.from),
            None => {
                let Some(first) = pending.keys().next() else {
                    return Ok(());
                };
                let end: Option<i64> =
                    tx.query_row("SELECT max(seq) FROM journal", [], |r| r.get(0))?;
                (end.unwrap_or(0), first)
            }
        };
        let mut rest = pending.range(from..);
        let records: Vec<&Record> = rest.by_ref().take(SLICE).map(|(_, r)| r).collect();
        let next = rest.next().map(|(key, _)| Sweep {
            up_to_seq,
            from: key.clone(),
        });
        self.readings.upsert(tx, &records)?;
        if next.is_none() {
            tx.prepare_cached("DELETE FROM journal WHERE seq <= ?1")?
                .execute([up_to_seq])?;
        }
        let keys = records.iter().map(|r| r.key.clone()).collect();
        self.slice = Some((keys, next));
        Ok(())
    }
}

/// The stored high-water version, set up from `readings` the first time a
/// database is opened by a version that keeps one.
fn stored_high_water(tx: &Transaction<'_>) -> StorageResult<Version> {
    let stored: Option<i64> = tx
        .query_row("SELECT version FROM high_water", [], |r| r.get(0))
        .optional()?;
    let version = match stored {
        Some(v) => v,
        None => {
            let highest: Option<i64> =
                tx.query_row("SELECT max(version) FROM readings", [], |r| r.get(0))?;
            let highest = highest.unwrap_or(0);
            tx.execute(
                "INSERT INTO high_water (id, version) VALUES (0, ?1)",
                [highest],
            )?;
            highest
        }
    };
    Ok(Version(version as u64))
}

/// Keeps `high_water` at or above every version `records` put into
/// `readings`, in their transaction. Answers the highest.
fn raise_high_water(tx: &Transaction<'_>, records: &[&Record]) -> StorageResult<Option<Version>> {
    let Some(highest) = records.iter().map(|r| r.version).max() else {
        return Ok(None);
    };
    tx.prepare_cached("UPDATE high_water SET version = ?1 WHERE version < ?1")?
        .execute([version_to_sql(highest)])?;
    Ok(Some(highest))
}

/// The records of two key-ordered maps in key order, `newer`'s where both
/// hold a key.
fn merge_sorted<'a>(
    older: &'a BTreeMap<Key, Record>,
    newer: &'a BTreeMap<Key, Record>,
) -> Vec<&'a Record> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut a, mut b) = (older.values().peekable(), newer.values().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.key.cmp(&y.key) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(record) => out.push(record),
            None => return out,
        }
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
        match self.pending_len {
            0 => None,
            n if n >= MERGE_ALL_AT => Some((Chore::Now, NodeWrite::Merge)),
            n if n >= SLICE_NOW_AT => Some((Chore::Now, NodeWrite::MergeSlice)),
            n if n >= MERGE_AT || self.sweep.is_some() => {
                Some((Chore::BetweenWrites, NodeWrite::MergeSlice))
            }
            _ => Some((Chore::WhenIdle, NodeWrite::Merge)),
        }
    }
}

/// Whether `records` are few and spread over several sensors: the writes
/// that cost a page of `readings` per record.
fn worth_journaling(records: &[Record]) -> bool {
    records.len() <= JOURNAL_UP_TO
        && records
            .first()
            .is_some_and(|first| records.iter().any(|r| r.key.sensor != first.key.sensor))
}

/// Runs `sql(n)`, a statement of `n` rows of (sensor, ts, version, value,
/// unit), over `records` in chunks of [`UPSERT_CHUNK`]. Answers rows changed.
fn insert_chunked(
    tx: &Transaction<'_>,
    records: &[&Record],
    sql: fn(usize) -> String,
) -> StorageResult<u64> {
    let mut changed = 0;
    let mut chunks = records.chunks_exact(UPSERT_CHUNK);
    if chunks.len() > 0 {
        let mut statement = tx.prepare_cached(&sql(UPSERT_CHUNK))?;
        for chunk in chunks.by_ref() {
            changed += execute_rows(&mut statement, chunk)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        changed += execute_rows(&mut tx.prepare_cached(&sql(rest.len()))?, rest)?;
    }
    Ok(changed)
}

/// Binds `rows` to a statement of `rows.len()` rows and runs it.
fn execute_rows(statement: &mut CachedStatement<'_>, rows: &[&Record]) -> StorageResult<u64> {
    for (i, r) in rows.iter().enumerate() {
        let (value, unit) = match &r.sample {
            Some(s) => (Some(s.value), s.unit.as_ref().map(Unit::as_str)),
            None => (None, None),
        };
        let first = i * 5 + 1;
        statement.raw_bind_parameter(first, r.key.sensor.as_str())?;
        statement.raw_bind_parameter(first + 1, r.key.timestamp_ms)?;
        statement.raw_bind_parameter(first + 2, version_to_sql(r.version))?;
        statement.raw_bind_parameter(first + 3, value)?;
        statement.raw_bind_parameter(first + 4, unit)?;
    }
    Ok(statement.raw_execute()? as u64)
}

/// SQLite stores signed 64-bit integers; versions are below 2^63 until the
/// year 292,000,000, so the cast is lossless in practice and order-preserving.
fn version_to_sql(v: Version) -> i64 {
    v.0 as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::suite::{key, value};

    fn map(records: &[Record]) -> BTreeMap<Key, Record> {
        records.iter().map(|r| (r.key.clone(), r.clone())).collect()
    }

    /// A node database in `dir` and its writer, driven by hand instead of
    /// by a worker thread.
    fn open_writer(dir: &std::path::Path) -> (Connection, NodeWriter, Arc<Pending>) {
        let path = dir.join("node.sqlite3");
        let mut c =
            super::super::open_connection(&path, super::super::Synchronous::Normal).expect("open");
        c.execute_batch(super::super::SCHEMA).expect("schema");
        c.execute_batch(JOURNAL_SCHEMA).expect("journal schema");
        let pending = Arc::new(Pending::default());
        let writer = NodeWriter::open(&mut c, pending.clone(), Arc::new(DigestCache::default()))
            .expect("writer");
        (c, writer, pending)
    }

    /// Runs `op` in a transaction of its own, as the worker runs a chore.
    fn run(connection: &mut Connection, writer: &mut NodeWriter, op: NodeWrite) {
        let tx = connection.transaction().expect("begin");
        writer.execute(&tx, &op).expect("execute");
        tx.commit().expect("commit");
        writer.committed();
    }

    fn count(connection: &Connection, table: &str) -> usize {
        let sql = format!("SELECT count(*) FROM {table}");
        let n: i64 = connection.query_row(&sql, [], |r| r.get(0)).expect("count");
        n as usize
    }

    fn version_in_readings(connection: &Connection, sensor: &str, ts: i64) -> Option<i64> {
        connection
            .query_row(
                "SELECT version FROM readings WHERE sensor = ?1 AND ts = ?2",
                rusqlite::params![sensor, ts],
                |r| r.get(0),
            )
            .optional()
            .expect("lookup")
    }

    /// Sensors `s000`..`s099`, `per_sensor` readings each from `first_ts`.
    fn spread(first_ts: i64, per_sensor: i64, version: u64) -> Vec<Record> {
        (0..per_sensor)
            .flat_map(|t| {
                (0..100).map(move |s| value(&format!("s{s:03}"), first_ts + t, version, 1.0))
            })
            .collect()
    }

    #[test]
    fn a_merge_in_slices_deletes_journal_rows_only_once_its_pass_is_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut c, mut writer, pending) = open_writer(dir.path());
        for batch in 0..3 {
            run(
                &mut c,
                &mut writer,
                NodeWrite::Apply(spread(batch * 10, 10, 1)),
            );
        }
        assert_eq!((count(&c, "journal"), writer.pending_len), (3_000, 3_000));

        run(&mut c, &mut writer, NodeWrite::MergeSlice);
        assert_eq!(writer.pending_len, 3_000 - SLICE);
        assert_eq!(count(&c, "readings"), SLICE);
        assert_eq!(count(&c, "journal"), 3_000, "rows stay until the pass ends");
        let cursor = writer
            .sweep
            .as_ref()
            .expect("a sweep under way")
            .from
            .clone();
        assert!(pending.get(&key("s000", 0)).is_none());

        // Written during the pass: one key behind its cursor, one ahead.
        let behind = value("s000", 0, 5, 2.0);
        let ahead = value("s099", 29, 5, 2.0);
        run(
            &mut c,
            &mut writer,
            NodeWrite::Apply(vec![behind.clone(), ahead.clone()]),
        );
        assert!(cursor > behind.key && cursor < ahead.key);
        while writer.sweep.is_some() {
            run(&mut c, &mut writer, NodeWrite::MergeSlice);
        }
        // The pass merged everything up to its end and the record ahead of
        // its cursor; the journal keeps the two rows written during it.
        assert_eq!(pending.get(&behind.key), Some(behind.clone()));
        assert_eq!(writer.pending_len, 1);
        assert_eq!(count(&c, "journal"), 2);
        assert_eq!(count(&c, "readings"), 3_000);
        assert_eq!(version_in_readings(&c, "s099", 29), Some(5));
        assert_eq!(version_in_readings(&c, "s000", 0), Some(1));

        // Reopened: both rows are merged again, which changes only `behind`.
        drop(writer);
        let reopened = Arc::new(Pending::default());
        let writer =
            NodeWriter::open(&mut c, reopened, Arc::new(DigestCache::default())).expect("writer");
        assert_eq!((count(&c, "journal"), writer.pending_len), (0, 0));
        assert_eq!(version_in_readings(&c, "s000", 0), Some(5));
        assert_eq!(version_in_readings(&c, "s099", 29), Some(5));
    }

    /// Journals batches of 1,000 records, each newer in time, until the
    /// writer holds at least `records` pending.
    fn journal_until(c: &mut Connection, writer: &mut NodeWriter, ts: &mut i64, records: usize) {
        while writer.pending_len < records {
            run(c, writer, NodeWrite::Apply(spread(*ts, 10, 1)));
            *ts += 10;
        }
    }

    #[test]
    fn slices_start_at_the_merge_threshold_and_go_first_over_a_long_backlog() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut c, mut writer, _) = open_writer(dir.path());
        let when = |w: &NodeWriter| w.chore().map(|(when, _)| when);
        assert_eq!(when(&writer), None);
        let mut ts = 0;
        journal_until(&mut c, &mut writer, &mut ts, 1);
        assert_eq!(when(&writer), Some(Chore::WhenIdle));
        journal_until(&mut c, &mut writer, &mut ts, MERGE_AT);
        assert_eq!(when(&writer), Some(Chore::BetweenWrites));
        journal_until(&mut c, &mut writer, &mut ts, SLICE_NOW_AT);
        assert!(matches!(
            writer.chore(),
            Some((Chore::Now, NodeWrite::MergeSlice))
        ));
        journal_until(&mut c, &mut writer, &mut ts, MERGE_ALL_AT);
        assert!(matches!(
            writer.chore(),
            Some((Chore::Now, NodeWrite::Merge))
        ));
    }

    /// Runs `Apply(records)` in a transaction of its own; answers how many
    /// records it kept.
    fn apply(connection: &mut Connection, writer: &mut NodeWriter, records: Vec<Record>) -> u64 {
        let tx = connection.transaction().expect("begin");
        let kept = writer
            .execute(&tx, &NodeWrite::Apply(records))
            .expect("execute");
        tx.commit().expect("commit");
        writer.committed();
        kept
    }

    #[test]
    fn records_below_the_newest_version_are_kept_only_if_newer_than_their_key_s_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut c, mut writer, pending) = open_writer(dir.path());
        // `a` merged into `readings` at version 10, `b` journaled at 20.
        apply(
            &mut c,
            &mut writer,
            vec![value("a", 1, 10, 1.0), value("x", 1, 10, 1.0)],
        );
        run(&mut c, &mut writer, NodeWrite::Merge);
        assert_eq!(writer.readings.newest, Version(10));
        apply(
            &mut c,
            &mut writer,
            vec![value("b", 1, 20, 1.0), value("x", 2, 20, 1.0)],
        );
        assert_eq!(
            (writer.newest, writer.readings.newest),
            (Version(20), Version(10))
        );

        // Each below the node's newest version, in one batch as a node
        // receives it (key order, versions in any order).
        let kept = apply(
            &mut c,
            &mut writer,
            vec![
                value("a", 1, 7, 2.0),  // older than the copy in `readings`
                value("a", 1, 15, 2.0), // newer than it
                value("b", 1, 18, 2.0), // older than the journaled copy
                value("c", 1, 12, 2.0), // a key the node does not hold
                value("c", 1, 11, 3.0), // older than the one before it
            ],
        );
        assert_eq!(kept, 2);
        let version = |sensor: &str| pending.get(&key(sensor, 1)).map(|r| r.version);
        assert_eq!(version("a"), Some(Version(15)));
        assert_eq!(version("b"), Some(Version(20)));
        assert_eq!(version("c"), Some(Version(12)));

        run(&mut c, &mut writer, NodeWrite::Merge);
        assert_eq!(writer.readings.newest, Version(20));
        assert_eq!(version_in_readings(&c, "a", 1), Some(15));
        assert_eq!(version_in_readings(&c, "b", 1), Some(20));
        assert_eq!(version_in_readings(&c, "c", 1), Some(12));
        // Now only `readings` holds `a`: an older copy still loses.
        assert_eq!(
            apply(
                &mut c,
                &mut writer,
                vec![value("a", 1, 14, 4.0), value("d", 1, 3, 4.0)]
            ),
            1
        );
        assert_eq!(version("a"), None);
    }

    #[test]
    fn merging_two_sorted_maps_keeps_key_order_and_the_newer_record() {
        let older = map(&[
            value("a", 1, 1, 1.0),
            value("b", 1, 1, 1.0),
            value("c", 5, 1, 1.0),
        ]);
        let newer = map(&[
            value("a", 0, 2, 2.0),
            value("b", 1, 2, 2.0),
            value("d", 1, 2, 2.0),
        ]);
        let merged: Vec<Record> = merge_sorted(&older, &newer).into_iter().cloned().collect();
        assert_eq!(
            merged,
            vec![
                value("a", 0, 2, 2.0),
                value("a", 1, 1, 1.0),
                value("b", 1, 2, 2.0),
                value("c", 5, 1, 1.0),
                value("d", 1, 2, 2.0),
            ]
        );
        assert!(merge_sorted(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }
}
