//! The writer driven by hand, without a worker thread: journaling, merges
//! in slices, the chore thresholds and the high waters.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use super::chore::{MERGE_ALL_AT, MERGE_AT, SLICE_NOW_AT};
use super::journal::{SLICE, merge_sorted};
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
        .flat_map(|t| (0..100).map(move |s| value(&format!("s{s:03}"), first_ts + t, version, 1.0)))
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
    assert_eq!(writer.readings.high_water, Version(10));
    apply(
        &mut c,
        &mut writer,
        vec![value("b", 1, 20, 1.0), value("x", 2, 20, 1.0)],
    );
    assert_eq!(
        (writer.node_high_water, writer.readings.high_water),
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
    assert_eq!(writer.readings.high_water, Version(20));
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
