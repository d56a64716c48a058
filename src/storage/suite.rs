//! The one test suite every `StorageNode` implementation must pass.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

use super::memory::MemoryNode;
use super::sqlite::{SqliteNode, Synchronous};
use super::*;
use crate::reading::Unit;

/// A node under test, and the temporary directory it lives in (if any).
type Subject = (Box<dyn StorageNode>, Option<TempDir>);

fn memory() -> Subject {
    (Box::new(MemoryNode::new(node_id())), None)
}

fn sqlite() -> Subject {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = SqliteNode::open(node_id(), dir.path(), Synchronous::Normal).expect("open node");
    (Box::new(node), Some(dir))
}

pub(super) fn node_id() -> NodeId {
    "node1".parse().expect("valid node id")
}

pub(super) fn key(sensor: &str, ts: i64) -> Key {
    Key::new(sensor.parse().expect("valid sensor"), ts)
}

pub(super) fn value(sensor: &str, ts: i64, version: u64, v: f64) -> Record {
    Record {
        key: key(sensor, ts),
        version: Version(version),
        sample: Some(Sample {
            value: v,
            unit: Some("W".parse::<Unit>().expect("unit")),
        }),
    }
}

pub(super) fn tombstone(sensor: &str, ts: i64, version: u64) -> Record {
    Record {
        key: key(sensor, ts),
        version: Version(version),
        sample: None,
    }
}

pub(super) fn all() -> Scan {
    Scan {
        limit: usize::MAX,
        tombstones: true,
        ..Scan::default()
    }
}

async fn keeps_the_highest_version(node: &dyn StorageNode) {
    assert_eq!(
        node.apply(vec![value("s", 1, 10, 1.0)])
            .await
            .expect("apply"),
        1
    );
    assert_eq!(
        node.apply(vec![value("s", 1, 5, 2.0)])
            .await
            .expect("apply"),
        0
    );
    assert_eq!(
        node.get(&key("s", 1)).await.expect("get"),
        Some(value("s", 1, 10, 1.0))
    );
    assert_eq!(
        node.apply(vec![value("s", 1, 11, 3.0)])
            .await
            .expect("apply"),
        1
    );
    assert_eq!(
        node.get(&key("s", 1)).await.expect("get"),
        Some(value("s", 1, 11, 3.0))
    );
    assert_eq!(node.get(&key("s", 2)).await.expect("get"), None);
}

async fn tombstones_are_never_resurrected_by_older_writes(node: &dyn StorageNode) {
    node.apply(vec![value("s", 1, 10, 1.0), tombstone("s", 1, 20)])
        .await
        .expect("apply");
    assert_eq!(
        node.apply(vec![value("s", 1, 15, 9.0)])
            .await
            .expect("apply"),
        0
    );
    let stored = node
        .get(&key("s", 1))
        .await
        .expect("get")
        .expect("tombstone kept");
    assert!(stored.is_tombstone());
    let live = node
        .scan(Scan {
            limit: 10,
            ..Scan::default()
        })
        .await
        .expect("scan");
    assert!(live.is_empty(), "a tombstone is not a live record");
    assert_eq!(
        node.apply(vec![value("s", 1, 30, 4.0)])
            .await
            .expect("apply"),
        1
    );
    assert_eq!(
        node.get(&key("s", 1)).await.expect("get"),
        Some(value("s", 1, 30, 4.0))
    );
}

async fn any_replay_order_converges(make: fn() -> Subject) {
    let mut writes = Vec::new();
    for version in 1..=300u64 {
        let sensor = ["a", "b", "c"][(version % 3) as usize];
        let ts = (version * 7 % 40) as i64;
        if version % 5 == 0 {
            writes.push(tombstone(sensor, ts, version));
        } else {
            writes.push(value(sensor, ts, version, version as f64));
        }
    }
    let mut states = Vec::new();
    for seed in 0..4 {
        let (node, _dir) = make();
        let mut shuffled = writes.clone();
        shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        for chunk in shuffled.chunks(17) {
            node.apply(chunk.to_vec()).await.expect("apply");
        }
        let digests = node
            .digests(DigestRequest::default())
            .await
            .expect("digests");
        states.push((node.scan(all()).await.expect("scan"), digests));
    }
    assert!(states.windows(2).all(|w| w[0] == w[1]));
}

async fn scans_filter_page_and_order(node: &dyn StorageNode) {
    let mut records = Vec::new();
    for sensor in ["b", "a", "c"] {
        for ts in (0..10).rev() {
            records.push(value(sensor, ts * 100, 1, ts as f64));
        }
    }
    records.push(tombstone("a", 50, 2));
    node.apply(records).await.expect("apply");

    let keys = |records: Vec<Record>| {
        records
            .into_iter()
            .map(|r| r.key.to_string())
            .collect::<Vec<_>>()
    };
    let everything = node
        .scan(Scan {
            limit: 100,
            ..Scan::default()
        })
        .await
        .expect("scan");
    assert_eq!(everything.len(), 30);
    assert!(
        everything.windows(2).all(|w| w[0].key < w[1].key),
        "key order"
    );

    let a_range = node
        .scan(Scan {
            sensor: Some("a".parse().expect("sensor")),
            from_ms: Some(200),
            to_ms: Some(500),
            limit: 100,
            ..Scan::default()
        })
        .await
        .expect("scan");
    assert_eq!(keys(a_range), ["a:200", "a:300", "a:400"]);

    let page = node
        .scan(Scan {
            after: Some(key("a", 900)),
            limit: 3,
            ..Scan::default()
        })
        .await
        .expect("scan");
    assert_eq!(keys(page), ["b:0", "b:100", "b:200"]);

    // One sensor's history paged: `after` in the same sensor, before it
    // (everything of the sensor), or past it (nothing).
    let b_after = |after| Scan {
        sensor: Some("b".parse().expect("sensor")),
        after: Some(after),
        limit: 2,
        ..Scan::default()
    };
    let pages = [
        (key("b", 300), vec!["b:400", "b:500"]),
        (key("a", 900), vec!["b:0", "b:100"]),
        (key("c", 0), vec![]),
    ];
    for (after, expected) in pages {
        let page = node.scan(b_after(after.clone())).await.expect("scan");
        assert_eq!(keys(page), expected, "sensor b after {after}");
    }

    let with_tombstones = node
        .scan(Scan {
            sensor: Some("a".parse().expect("sensor")),
            limit: 100,
            tombstones: true,
            ..Scan::default()
        })
        .await
        .expect("scan");
    assert_eq!(with_tombstones.len(), 11);
}

async fn digests_match_between_implementations(node: &dyn StorageNode) {
    let reference = MemoryNode::new(node_id());
    let records: Vec<Record> = (0..500)
        .map(|i| match i % 7 {
            0 => tombstone(["x", "y"][i % 2], i as i64 * 1_000, i as u64 + 1),
            _ => value(["x", "y"][i % 2], i as i64 * 1_000, i as u64 + 1, i as f64),
        })
        .collect();
    node.apply(records.clone()).await.expect("apply");
    reference.apply(records).await.expect("apply");
    for request in [
        DigestRequest::default(),
        DigestRequest {
            sensor: Some("x".parse().expect("sensor")),
            bucket_ms: Some(60_000),
        },
    ] {
        let got = node.digests(request.clone()).await.expect("digests");
        assert!(!got.is_empty());
        assert_eq!(got, reference.digests(request).await.expect("digests"));
    }
}

async fn removing_sensors_removes_everything_of_them(node: &dyn StorageNode) {
    node.apply(vec![
        value("a", 1, 1, 1.0),
        tombstone("a", 2, 2),
        value("b", 1, 3, 1.0),
    ])
    .await
    .expect("apply");
    assert_eq!(
        node.remove_sensors(vec!["a".parse().expect("sensor")])
            .await
            .expect("remove"),
        2
    );
    assert_eq!(node.get(&key("a", 2)).await.expect("get"), None);
    assert_eq!(
        node.scan(all()).await.expect("scan"),
        vec![value("b", 1, 3, 1.0)]
    );
}

async fn stats_count_live_keys_tombstones_and_versions(node: &dyn StorageNode) {
    assert_eq!(node.stats().await.expect("stats"), NodeStats::default());
    node.apply(vec![
        value("a", 1, 7, 1.0),
        tombstone("a", 2, 9),
        value("b", 1, 3, 1.0),
    ])
    .await
    .expect("apply");
    let stats = node.stats().await.expect("stats");
    assert_eq!(
        (stats.live_keys, stats.tombstones, stats.max_version),
        (2, 1, Version(9))
    );
}

async fn concurrent_writers_all_land(node: &dyn StorageNode) {
    let writes = (0..64).map(|w| {
        let batch: Vec<Record> = (0..100)
            .map(|i| value("c", w * 1_000 + i, 1, i as f64))
            .collect();
        node.apply(batch)
    });
    let changed: u64 = futures::future::try_join_all(writes)
        .await
        .expect("apply")
        .iter()
        .sum();
    assert_eq!(changed, 6_400);
    assert_eq!(node.stats().await.expect("stats").live_keys, 6_400);
}

macro_rules! storage_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn keeps_the_highest_version() {
                super::keeps_the_highest_version(&*$make().0).await;
            }
            #[tokio::test]
            async fn tombstones_are_never_resurrected_by_older_writes() {
                super::tombstones_are_never_resurrected_by_older_writes(&*$make().0).await;
            }
            #[tokio::test]
            async fn any_replay_order_converges() {
                super::any_replay_order_converges($make).await;
            }
            #[tokio::test]
            async fn scans_filter_page_and_order() {
                super::scans_filter_page_and_order(&*$make().0).await;
            }
            #[tokio::test]
            async fn digests_match_between_implementations() {
                super::digests_match_between_implementations(&*$make().0).await;
            }
            #[tokio::test]
            async fn removing_sensors_removes_everything_of_them() {
                super::removing_sensors_removes_everything_of_them(&*$make().0).await;
            }
            #[tokio::test]
            async fn stats_count_live_keys_tombstones_and_versions() {
                super::stats_count_live_keys_tombstones_and_versions(&*$make().0).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_writers_all_land() {
                super::concurrent_writers_all_land(&*$make().0).await;
            }
        }
    };
}

storage_suite!(memory_node, memory);
storage_suite!(sqlite_node, sqlite);

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = SqliteNode::open(node_id(), dir.path(), Synchronous::Full).expect("open");
    node.apply(vec![value("s", 1, 4, 2.5), tombstone("s", 2, 5)])
        .await
        .expect("apply");
    node.close().await.expect("close");
    assert!(matches!(
        node.apply(vec![value("s", 3, 6, 1.0)]).await,
        Err(StorageError::Closed)
    ));

    let reopened = SqliteNode::open(node_id(), dir.path(), Synchronous::Full).expect("reopen");
    assert_eq!(
        reopened.scan(all()).await.expect("scan"),
        vec![value("s", 1, 4, 2.5), tombstone("s", 2, 5)]
    );
}
