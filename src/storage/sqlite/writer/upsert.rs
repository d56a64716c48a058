//! Writes into `readings`, the table clustered by `(sensor, ts)`: multi-row
//! upserts that keep the highest version per key, in key order so that the
//! B-tree is walked sequentially, and the `high_water` version that covers
//! every row.
//!
//! Invariant: `high_water` on disk, raised in the transaction that writes
//! the rows, is at or above every version in `readings`.

use rusqlite::{CachedStatement, OptionalExtension, Transaction};

use super::super::digest_cache::Touched;
use super::NodeWriter;
use crate::reading::Unit;
use crate::storage::{Record, StorageResult};
use crate::version::Version;

/// Rows per multi-row `INSERT`: one statement execution per chunk instead
/// of per row cuts SQLite's per-statement overhead (about a third faster).
pub(in crate::storage::sqlite) const UPSERT_CHUNK: usize = 64;

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

/// What every write of `readings` owes besides its rows, kept apart from
/// the rest of the writer so that it can be updated while the records
/// written are borrowed from the journal's maps.
#[derive(Default)]
pub(super) struct ReadingsWrites {
    /// The sensors' days whose rows the open transaction changed.
    pub(super) touched: Touched,
    /// No record in `readings` has a higher version: `high_water` on disk,
    /// as the open transaction raises it (left raised if it rolls back,
    /// which only costs lookups).
    pub(super) high_water: Version,
}

impl ReadingsWrites {
    /// Upserts key-ordered `records` into `readings`, marks their sensors
    /// touched and raises `high_water`, on disk and in memory. Answers the
    /// rows changed.
    pub(super) fn upsert(
        &mut self,
        tx: &Transaction<'_>,
        records: &[&Record],
    ) -> StorageResult<u64> {
        self.touched.records(records);
        if let Some(highest) = raise_high_water(tx, records)? {
            self.high_water = self.high_water.max(highest);
        }
        insert_chunked(tx, records, upsert_sql)
    }
}

impl NodeWriter {
    /// Writes records straight into `readings`, leaving out those a
    /// journaled record already supersedes.
    pub(super) fn upsert_direct(
        &mut self,
        tx: &Transaction<'_>,
        records: &[Record],
    ) -> StorageResult<u64> {
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
        self.node_high_water = self.node_high_water.max(self.readings.high_water);
        Ok(changed)
    }
}

/// The stored high-water version, set up from `readings` the first time a
/// database is opened by a version that keeps one.
pub(super) fn stored_high_water(tx: &Transaction<'_>) -> StorageResult<Version> {
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

/// Runs `sql(n)`, a statement of `n` rows of (sensor, ts, version, value,
/// unit), over `records` in chunks of [`UPSERT_CHUNK`]. Answers rows changed.
pub(super) fn insert_chunked(
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
