//! What the shared suite cannot see of the SQLite node: the journal (small
//! writes, its merge, one left by a crash) and the digest cache.

use std::time::{Duration, Instant};

use super::*;
use crate::storage::memory::MemoryNode;
use crate::storage::suite::{all, key, node_id, tombstone, value};

fn open(dir: &Path) -> SqliteNode {
    SqliteNode::open(node_id(), dir, Synchronous::Normal).expect("open node")
}

/// Rows in the node's `journal` table.
fn journal_rows(node: &SqliteNode) -> i64 {
    node.readers
        .read_now(|c| Ok(c.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))?))
        .expect("count journal")
}

/// Writes the node's database file by hand, as an older build or a crash
/// left it: `schemas`, then `rows`.
fn write_node_file(dir: &Path, schemas: &[&str], rows: &str) {
    let c = Connection::open(dir.join("node1.sqlite3")).expect("open file");
    for schema in schemas {
        c.execute_batch(schema).expect("schema");
    }
    c.execute_batch(rows).expect("rows");
}

#[tokio::test]
async fn small_writes_are_journaled_readable_at_once_and_merged_when_idle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = open(dir.path());
    node.apply(vec![value("s", 1, 4, 1.0), value("t", 2, 5, 2.0)])
        .await
        .expect("apply");
    assert_eq!(journal_rows(&node), 2);
    assert_eq!(
        node.get(&key("t", 2)).await.expect("get"),
        Some(value("t", 2, 5, 2.0))
    );
    // One sensor's records lie on a few pages in a row: no journal.
    node.apply(vec![value("u", 1, 6, 1.0), value("u", 2, 6, 1.0)])
        .await
        .expect("apply");
    assert_eq!(journal_rows(&node), 2);

    let deadline = Instant::now() + Duration::from_secs(10);
    while journal_rows(&node) > 0 {
        assert!(Instant::now() < deadline, "the journal was never merged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(node.pending.is_empty());
    assert_eq!(
        node.get(&key("s", 1)).await.expect("get"),
        Some(value("s", 1, 4, 1.0))
    );
}

#[tokio::test]
async fn a_journal_left_by_a_crash_is_merged_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    // What a SIGKILL leaves: rows in the journal, one superseded by a
    // newer row of the same key, one older than what `readings` holds.
    write_node_file(
        dir.path(),
        &[SCHEMA, JOURNAL_SCHEMA],
        "INSERT INTO readings VALUES ('s', 3, 9, 3.0, 'W');
         INSERT INTO journal (sensor, ts, version, value, unit) VALUES
             ('s', 1, 4, 1.0, 'W'), ('s', 1, 6, 1.5, 'W'),
             ('s', 2, 5, NULL, NULL), ('s', 3, 8, 0.5, 'W');",
    );
    let node = open(dir.path());
    assert_eq!(journal_rows(&node), 0);
    assert_eq!(
        node.scan(all()).await.expect("scan"),
        vec![
            value("s", 1, 6, 1.5),
            tombstone("s", 2, 5),
            value("s", 3, 9, 3.0)
        ]
    );
}

#[tokio::test]
async fn journaled_and_direct_writes_of_one_key_keep_the_highest_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = open(dir.path());
    node.apply(vec![
        value("s", 1, 5, 1.0),
        value("s", 2, 5, 1.0),
        value("x", 0, 5, 0.0),
    ])
    .await
    .expect("journaled");
    assert_eq!(journal_rows(&node), 3);
    // Over the journal's limit: written straight into `readings`.
    let mut big: Vec<Record> = (10..2_010).map(|ts| value("t", ts, 1, 0.0)).collect();
    big.push(value("s", 1, 3, 9.0));
    big.push(value("s", 2, 7, 7.0));
    assert_eq!(node.apply(big).await.expect("direct"), 2_001);
    assert_eq!(
        node.get(&key("s", 1)).await.expect("get"),
        Some(value("s", 1, 5, 1.0))
    );
    assert_eq!(
        node.get(&key("s", 2)).await.expect("get"),
        Some(value("s", 2, 7, 7.0))
    );
    // A journaled write older than the direct one changes nothing.
    assert_eq!(
        node.apply(vec![value("s", 2, 6, 6.0), value("x", 0, 4, 4.0)])
            .await
            .expect("journaled"),
        0
    );

    let sensor_s = Scan {
        sensor: Some("s".parse().expect("sensor")),
        ..all()
    };
    assert_eq!(
        node.scan(sensor_s).await.expect("scan"),
        vec![value("s", 1, 5, 1.0), value("s", 2, 7, 7.0)]
    );
    assert_eq!(journal_rows(&node), 0, "a scan merges the journal first");
}

/// A journaled write above the high-water version skips the lookup of what
/// the node holds; these reopen the node between writes, so a high water
/// that was not kept on disk (by a merge, by a direct write, or set up from
/// an older database) would count an older write as a change.
#[tokio::test]
async fn the_high_water_version_survives_merges_direct_writes_and_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = open(dir.path());
    node.apply(vec![value("s", 1, 20, 1.0), value("x", 1, 20, 1.0)])
        .await
        .expect("journaled");
    node.stats().await.expect("stats merge the journal");
    assert_eq!(journal_rows(&node), 0);
    node.close().await.expect("close");

    let node = open(dir.path());
    assert_eq!(
        node.apply(vec![value("s", 1, 15, 9.0), value("y", 1, 26, 2.0)])
            .await
            .expect("journaled"),
        1,
        "the merge kept the high water"
    );
    node.apply((0..2_000).map(|ts| value("t", ts, 30, 0.0)).collect())
        .await
        .expect("direct");
    node.close().await.expect("close");

    let node = open(dir.path());
    assert_eq!(
        node.apply(vec![value("t", 5, 28, 9.0), value("z", 1, 29, 2.0)])
            .await
            .expect("journaled"),
        1,
        "the direct write kept the high water"
    );
    assert_eq!(
        node.get(&key("t", 5)).await.expect("get"),
        Some(value("t", 5, 30, 0.0))
    );
    // Below the high water yet newer than the key's record: a change.
    assert_eq!(
        node.apply(vec![value("s", 1, 21, 3.0), value("x", 1, 19, 3.0)])
            .await
            .expect("journaled"),
        1
    );
    assert_eq!(
        node.get(&key("s", 1)).await.expect("get"),
        Some(value("s", 1, 21, 3.0))
    );
}

#[tokio::test]
async fn a_database_without_a_high_water_gets_one_from_its_readings() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_node_file(
        dir.path(),
        &[SCHEMA],
        "INSERT INTO readings VALUES ('s', 3, 9, 3.0, 'W');",
    );
    let node = open(dir.path());
    assert_eq!(
        node.apply(vec![value("s", 3, 7, 1.0), value("u", 1, 8, 1.0)])
            .await
            .expect("journaled"),
        1
    );
    assert_eq!(
        node.get(&key("s", 3)).await.expect("get"),
        Some(value("s", 3, 9, 3.0))
    );
}

async fn assert_same_digests(node: &SqliteNode, model: &MemoryNode) {
    assert_eq!(
        node.digests(DigestRequest::default())
            .await
            .expect("digests"),
        model
            .digests(DigestRequest::default())
            .await
            .expect("model digests")
    );
}

#[tokio::test]
async fn cached_digests_follow_every_kind_of_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = open(dir.path());
    let model = MemoryNode::new(node_id());
    let both = |records: Vec<Record>| {
        let (node, model) = (&node, &model);
        async move {
            node.apply(records.clone()).await.expect("apply");
            model.apply(records).await.expect("apply model");
        }
    };
    for sensor in ["a", "b", "c", "d", "e"] {
        both((0..50).map(|ts| value(sensor, ts, 1, 1.0)).collect()).await;
    }
    assert_same_digests(&node, &model).await;
    // Sensors changed by a journaled write, then by direct ones.
    both(vec![value("a", 7, 2, 2.0), value("e", 70, 2, 2.0)]).await;
    assert_same_digests(&node, &model).await;
    both((0..1_500).map(|ts| value("b", ts, 3, 3.0)).collect()).await;
    assert_same_digests(&node, &model).await;
    both(vec![tombstone("c", 3, 4)]).await;
    assert_same_digests(&node, &model).await;
    let gone = vec!["d".parse().expect("sensor")];
    node.remove_sensors(gone.clone()).await.expect("remove");
    model.remove_sensors(gone).await.expect("remove model");
    assert_same_digests(&node, &model).await;
    // Reopened: the cache starts empty and the answer is the same.
    node.close().await.expect("close");
    let node = open(dir.path());
    assert_same_digests(&node, &model).await;
}

#[tokio::test]
async fn reads_beyond_the_pool_wait_for_a_connection_instead_of_opening_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = open(dir.path());
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = Arc::new(Mutex::new(held));
    let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
    let mut blocked = Vec::new();
    for _ in 0..MAX_READERS {
        let (held, started) = (held.clone(), started.clone());
        blocked.push(tokio::spawn({
            let readers = node.readers.clone();
            async move {
                readers
                    .read(move |_| {
                        let _ = started.send(());
                        // Each read holds its connection until released.
                        let _ = held.lock().expect("lock").recv();
                        Ok(())
                    })
                    .await
            }
        }));
    }
    for _ in 0..MAX_READERS {
        running.recv().await.expect("a read started");
    }
    let absent = key("s1", 1);
    let mut extra = std::pin::pin!(node.get(&absent));
    assert!(
        futures::poll!(extra.as_mut()).is_pending(),
        "a read beyond MAX_READERS must wait"
    );
    for _ in 0..MAX_READERS {
        release.send(()).expect("a read is waiting");
    }
    for read in blocked {
        read.await.expect("read task").expect("read");
    }
    assert_eq!(extra.await.expect("the waiting read runs"), None);
    let idle = node.readers.idle.lock().expect("lock").len();
    assert_eq!(
        idle, MAX_READERS,
        "no connection beyond the limit was opened"
    );
}
