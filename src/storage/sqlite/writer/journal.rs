//! The journal: small writes of several sensors appended to a table in
//! insertion order, merged into `readings` later in bulk, where each page is
//! shared by thousands of rows again.
//!
//! Rules:
//! * only records newer than what the node holds for their key are
//!   journaled (see the writer's high waters for when that needs a lookup);
//! * merging moves records in key order and keeps the newer of a key's
//!   pending and staged copies; a slice merge ([`Sweep`]) deletes the
//!   journal's rows only once its pass has gone over every key, so a crash
//!   in between merges some records twice, which changes nothing (the
//!   upsert keeps the higher version).

use std::collections::BTreeMap;
use std::sync::RwLock;

use rusqlite::Transaction;

use super::NodeWriter;
use super::upsert::insert_chunked;
use crate::reading::Key;
use crate::storage::{Record, StorageResult};

/// Writes of at most this many records, of more than one sensor, go to
/// the journal.
const JOURNAL_UP_TO: usize = 1_000;
/// Records merged per slice: about a millisecond of work, which is what a
/// write arriving meanwhile waits at most.
pub(super) const SLICE: usize = 1_024;
pub(in crate::storage::sqlite) const JOURNAL_SCHEMA: &str = "
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
pub(in crate::storage::sqlite) struct Pending {
    records: RwLock<BTreeMap<Key, Record>>,
}

impl Pending {
    pub(in crate::storage::sqlite) fn get(&self, key: &Key) -> Option<Record> {
        self.read().get(key).cloned()
    }

    pub(in crate::storage::sqlite) fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Key, Record>> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Key, Record>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A merge of the journal in slices: a pass over the pending records in key
/// order. Journal rows are deleted once the pass has gone over every key:
/// the rows up to `up_to_seq` (the journal's end when the pass began) then
/// all hold records merged or superseded. Rows of records merged earlier in
/// the pass stay until then, and a crash merges them again at open, which
/// changes nothing: the upsert keeps the higher version.
pub(super) struct Sweep {
    up_to_seq: i64,
    /// Where the next slice starts.
    pub(super) from: Key,
}

impl NodeWriter {
    /// Journals the records that are newer than what the node holds.
    pub(super) fn journal(
        &mut self,
        tx: &Transaction<'_>,
        records: &[Record],
    ) -> StorageResult<u64> {
        let pending = self.pending.clone();
        let pending = pending.read();
        let mut lookup =
            tx.prepare_cached("SELECT version FROM readings WHERE sensor = ?1 AND ts = ?2")?;
        let mut newer = Vec::with_capacity(records.len());
        for record in records {
            let is_newer = record.version > self.node_high_water || {
                let current =
                    self.current_version(&pending, &mut lookup, &record.key, record.version)?;
                current.is_none_or(|v| record.version > v)
            };
            if is_newer {
                self.node_high_water = self.node_high_water.max(record.version);
                self.staged.insert(record.key.clone(), record.clone());
                newer.push(record);
            }
        }
        insert_chunked(tx, &newer, journal_sql)?;
        Ok(newer.len() as u64)
    }

    /// Moves everything journaled (committed or staged) into `readings`.
    pub(super) fn merge(&mut self, tx: &Transaction<'_>) -> StorageResult<()> {
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
    pub(super) fn merge_slice(&mut self, tx: &Transaction<'_>) -> StorageResult<()> {
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

/// The records of two key-ordered maps in key order, `newer`'s where both
/// hold a key.
pub(super) fn merge_sorted<'a>(
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

/// Whether `records` are few and spread over several sensors: the writes
/// that cost a page of `readings` per record.
pub(super) fn worth_journaling(records: &[Record]) -> bool {
    records.len() <= JOURNAL_UP_TO
        && records
            .first()
            .is_some_and(|first| records.iter().any(|r| r.key.sensor != first.key.sensor))
}
