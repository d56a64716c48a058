//! Scenario tests of the replicator: quorum, hints, read repair, recovery,
//! rebalancing and restarts, on in-memory nodes and on real SQLite files.

use crate::common;

use std::time::Duration;

use common::*;
use energyguard::replication::{NodeStatus, ReplicationError, StrategyKind};
use energyguard::storage::{NodeId, Scan, StorageNode};
use std::str::FromStr;

fn everything() -> Scan {
    Scan {
        limit: usize::MAX,
        ..Scan::default()
    }
}

#[tokio::test]
async fn too_few_live_replicas_is_a_typed_error_and_stores_nothing() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 2)).await;
    let owners = c.replicator.replicas_for(&key("s1", 0));
    c.replicator.fail(&owners[0]).await.expect("fail");

    let err = c
        .replicator
        .put(vec![reading("s1", 0, 1.0)])
        .await
        .expect_err("quorum unmet");
    assert!(
        matches!(
            err,
            ReplicationError::Unavailable {
                required: 2,
                available: 1
            }
        ),
        "{err:?}"
    );
    for node in c.nodes.values() {
        assert!(
            node.get(&key("s1", 0)).await.expect("get").is_none(),
            "nothing stored"
        );
    }
}

/// Writes `count` readings while one replica is down, recovers it, and
/// checks every reading arrived and every hint is forgotten.
async fn hinted_writes_are_replayed_on_recovery(count: i64) {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    let owners = c.replicator.replicas_for(&key("s1", 0));
    let down = &owners[1];
    c.replicator.fail(down).await.expect("fail");
    let readings: Vec<_> = (0..count).map(|t| reading("s1", t, t as f64)).collect();
    c.replicator.put(readings).await.expect("quorum of one met");
    let line = |reports: Vec<energyguard::replication::NodeReport>| {
        reports
            .into_iter()
            .find(|r| r.id == *down)
            .expect("reported")
    };

    let before = line(c.replicator.node_reports().await);
    assert_eq!(
        (before.status, before.hints_pending),
        (NodeStatus::Down, count as u64)
    );
    assert!(
        c.nodes[down]
            .scan(everything())
            .await
            .expect("scan")
            .is_empty()
    );

    let recovery = c.replicator.recover(down).await.expect("recover");
    assert_eq!(recovery.hints_replayed, count as u64);
    assert_eq!(recovery.status, NodeStatus::Up);
    assert_eq!(
        c.nodes[down].scan(everything()).await.expect("scan").len(),
        count as usize
    );
    let after = line(c.replicator.node_reports().await);
    assert_eq!((after.hints_pending, after.keys), (0, Some(count as u64)));
    // Nothing left to replay a second time.
    let again = c.replicator.recover(down).await.expect("again");
    assert_eq!(again.hints_replayed, 0);
}

#[tokio::test]
async fn writes_for_a_down_replica_are_hinted_and_replayed_on_recovery() {
    hinted_writes_are_replayed_on_recovery(100).await;
}

#[tokio::test]
async fn hints_of_several_replay_batches_are_all_applied_and_forgotten() {
    // Two and a half of recovery's batches of 10,000.
    hinted_writes_are_replayed_on_recovery(25_000).await;
}

#[tokio::test]
async fn all_replicas_down_is_unavailable_never_not_found() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    c.replicator
        .put(vec![reading("s1", 0, 1.0)])
        .await
        .expect("put");
    for node in c.replicator.replicas_for(&key("s1", 0)) {
        c.replicator.fail(&node).await.expect("fail");
    }
    for k in [key("s1", 0), key("s1", 1)] {
        let err = c.replicator.get(&k).await.expect_err("unavailable");
        assert!(matches!(err, ReplicationError::Unavailable { .. }));
    }
    let err = c
        .replicator
        .scan(everything())
        .await
        .expect_err("a scan over all sensors cannot be complete");
    assert!(matches!(err, ReplicationError::Unavailable { .. }));
}

#[tokio::test]
async fn reads_fall_back_to_the_next_replica() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    c.replicator
        .put(vec![reading("s1", 0, 1.5)])
        .await
        .expect("put");
    let owners = c.replicator.replicas_for(&key("s1", 0));
    c.replicator.fail(&owners[0]).await.expect("fail");
    let sample = c
        .replicator
        .get(&key("s1", 0))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(sample.value, 1.5);
    let history = c
        .replicator
        .scan(Scan {
            sensor: Some(sensor("s1")),
            ..everything()
        })
        .await
        .expect("scan");
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn the_highest_version_wins_and_stale_replicas_are_repaired() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 2)).await;
    c.replicator
        .put(vec![reading("s1", 0, 1.0)])
        .await
        .expect("put");
    let owners = c.replicator.replicas_for(&key("s1", 0));
    // A newer version lands on the second replica only (as if the first
    // missed it): a read must answer it and repair the first.
    let mut newer = c.nodes[&owners[1]]
        .get(&key("s1", 0))
        .await
        .expect("get")
        .expect("stored");
    newer.version.0 += 10;
    newer.sample.as_mut().expect("value").value = 2.0;
    c.nodes[&owners[1]]
        .apply(vec![newer.clone()])
        .await
        .expect("apply");

    let sample = c
        .replicator
        .get_repairing(&key("s1", 0))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(sample.value, 2.0);
    let stale = c.nodes[&owners[0]].clone();
    wait_until(Duration::from_secs(5), || {
        let stale = stale.clone();
        let newer = newer.clone();
        async move { stale.get(&newer.key).await.expect("get") == Some(newer) }
    })
    .await;
}

#[tokio::test]
async fn one_read_in_sixteen_repairs_stale_replicas() {
    let c = memory_cluster(2, settings(StrategyKind::Full, 1, 1)).await;
    c.replicator
        .put(vec![reading("s1", 0, 1.0)])
        .await
        .expect("put");
    // The second replica loses the record behind the replicator's back.
    let node2 = c.replicator.replicas_for(&key("s1", 0)).remove(1);
    c.nodes[&node2].wipe();
    for _ in 0..energyguard::replication::READ_REPAIR_EVERY {
        assert_eq!(
            c.replicator
                .get(&key("s1", 0))
                .await
                .expect("get")
                .map(|s| s.value),
            Some(1.0)
        );
    }
    let node = c.nodes[&node2].clone();
    wait_until(Duration::from_secs(5), || {
        let node = node.clone();
        async move { node.get(&key("s1", 0)).await.expect("get").is_some() }
    })
    .await;
}

#[tokio::test]
async fn a_delete_missed_by_a_down_replica_never_comes_back() {
    let c = memory_cluster(3, settings(StrategyKind::Full, 1, 1)).await;
    c.replicator
        .put(vec![reading("s1", 0, 1.0), reading("s1", 1, 2.0)])
        .await
        .expect("put");
    let down = node_ids(3).remove(2);
    c.replicator.fail(&down).await.expect("fail");
    assert!(c.replicator.delete(&key("s1", 0)).await.expect("delete"));
    assert!(
        !c.replicator
            .delete(&key("s1", 0))
            .await
            .expect("second delete"),
        "already gone"
    );
    c.replicator.recover(&down).await.expect("recover");

    for _ in 0..3 {
        assert_eq!(c.replicator.get(&key("s1", 0)).await.expect("get"), None);
    }
    for node in c.nodes.values() {
        let live = node.scan(everything()).await.expect("scan");
        assert_eq!(live.len(), 1, "only s1:1 is live on {}", node.id());
    }
}

#[tokio::test]
async fn updates_replace_existing_values_only() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    assert!(
        !c.replicator
            .update(&key("s1", 0), 5.0, None)
            .await
            .expect("update")
    );
    c.replicator
        .put(vec![reading("s1", 0, 1.0)])
        .await
        .expect("put");
    assert!(
        c.replicator
            .update(&key("s1", 0), 5.0, Some("kW".parse().expect("unit")))
            .await
            .expect("update")
    );
    let sample = c
        .replicator
        .get(&key("s1", 0))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (sample.value, sample.unit.as_ref().map(|u| u.as_str())),
        (5.0, Some("kW"))
    );
}

#[tokio::test]
async fn recovery_repairs_writes_that_were_never_hinted() {
    // A node whose disk was replaced by an empty one: no hints exist for the
    // data it lost, so only digest repair can bring it back.
    let dir = tempfile::tempdir().expect("temp dir");
    let node2 = node_ids(3).remove(1);
    {
        let r = sqlite_cluster(dir.path(), 3, settings(StrategyKind::Full, 1, 1)).await;
        let readings: Vec<_> = (0..5_000)
            .map(|i| reading(&format!("s{}", i % 7), i, i as f64))
            .collect();
        r.put(readings).await.expect("put");
        r.delete(&key("s0", 0)).await.expect("delete");
        r.fail(&node2).await.expect("fail");
        r.close().await;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("node2.sqlite3{suffix}")));
    }
    let r = sqlite_cluster(dir.path(), 3, settings(StrategyKind::Full, 1, 1)).await;
    let report = r.node_reports().await;
    assert_eq!(
        report[1].status,
        NodeStatus::Down,
        "a failed node stays down across restarts"
    );
    assert_eq!(report[1].keys, Some(0));

    let recovery = r.recover(&node2).await.expect("recover");
    assert_eq!(recovery.hints_replayed, 0);
    assert_eq!(recovery.repaired, 5_000, "4,999 values and one tombstone");
    let reports = r.node_reports().await;
    assert!(
        reports
            .iter()
            .all(|n| n.keys == Some(4_999) && n.tombstones == Some(1)),
        "{reports:?}"
    );

    // The recovered node alone answers exactly what the others do.
    for other in [node_ids(3).remove(0), node_ids(3).remove(2)] {
        r.fail(&other).await.expect("fail");
    }
    assert_eq!(r.get(&key("s0", 0)).await.expect("get"), None);
    assert_eq!(value_of(&r, &key("s3", 3)).await, Some(3.0));
    r.close().await;
}

#[tokio::test]
async fn recovery_repairs_a_partially_stale_node_bucket_by_bucket() {
    let c = memory_cluster(2, settings(StrategyKind::Full, 1, 1)).await;
    let hour = 3_600_000;
    let readings: Vec<_> = (0..48).map(|h| reading("s", h * hour, h as f64)).collect();
    c.replicator.put(readings).await.expect("put");
    let node2 = node_ids(2).remove(1);
    // Three records vanish from node2 behind the replicator's back.
    let lost: Vec<_> = [3, 20, 40].iter().map(|h| key("s", h * hour)).collect();
    let kept: Vec<_> = c.nodes[&node2]
        .scan(Scan {
            tombstones: true,
            ..everything()
        })
        .await
        .expect("scan")
        .into_iter()
        .filter(|r| !lost.contains(&r.key))
        .collect();
    c.nodes[&node2].wipe();
    c.nodes[&node2].apply(kept).await.expect("apply");

    let recovery = c.replicator.recover(&node2).await.expect("recover");
    assert_eq!(recovery.repaired, 3);
    assert_eq!(
        c.nodes[&node2]
            .scan(everything())
            .await
            .expect("scan")
            .len(),
        48
    );
}

#[tokio::test]
async fn scans_over_all_sensors_merge_replicas_and_page() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    let readings: Vec<_> = (0..300)
        .map(|i| reading(&format!("s{}", i % 10), i, i as f64))
        .collect();
    c.replicator.put(readings).await.expect("put");
    c.replicator.delete(&key("s0", 0)).await.expect("delete");

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .replicator
            .scan(Scan {
                after: after.clone(),
                limit: 7,
                ..Scan::default()
            })
            .await
            .expect("scan");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.key.clone());
        pages.extend(page);
    }
    assert_eq!(pages.len(), 299);
    assert!(
        pages.windows(2).all(|w| w[0].key < w[1].key),
        "strict key order, no duplicates"
    );
}

#[tokio::test]
async fn rebalancing_moves_data_and_never_fails_a_read() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 1, 1)).await;
    let readings: Vec<_> = (0..3_000)
        .map(|i| reading(&format!("s{}", i % 30), i, i as f64))
        .collect();
    c.replicator.put(readings).await.expect("put");

    c.replicator
        .configure(settings(StrategyKind::Full, 1, 2))
        .await
        .expect("configure");
    assert!(c.replicator.rebalance_progress().is_some());
    // Mid-move: reads and writes work; a write during the move reaches its new owners.
    assert_eq!(
        c.replicator
            .get(&key("s5", 5))
            .await
            .expect("get")
            .expect("found")
            .value,
        5.0
    );
    c.replicator
        .put(vec![reading("late", 1, 1.0)])
        .await
        .expect("write during move");

    c.replicator.start_background();
    let r = c.replicator.clone();
    wait_settled(&r).await;
    for node in c.nodes.values() {
        assert_eq!(
            node.scan(everything()).await.expect("scan").len(),
            3_001,
            "{} holds everything",
            node.id()
        );
    }

    // Back to one copy each: copies on nodes that no longer own a sensor go.
    c.replicator
        .configure(settings(StrategyKind::Consistent, 1, 1))
        .await
        .expect("configure");
    wait_settled(&r).await;
    let mut total = 0;
    for node in c.nodes.values() {
        let records = node.scan(everything()).await.expect("scan");
        assert!(
            records
                .iter()
                .all(|rec| c.replicator.replicas_for(&rec.key).contains(node.id()))
        );
        total += records.len();
    }
    assert_eq!(total, 3_001);
}

#[tokio::test]
async fn a_rebalance_waits_for_down_nodes_and_loses_nothing() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 1, 1)).await;
    let readings: Vec<_> = (0..600)
        .map(|i| reading(&format!("s{}", i % 20), i, 1.0))
        .collect();
    c.replicator.put(readings).await.expect("put");
    let down = node_ids(3).remove(0);
    c.replicator.fail(&down).await.expect("fail");
    c.replicator
        .configure(settings(StrategyKind::Consistent, 2, 1))
        .await
        .expect("configure");
    assert_eq!(
        c.replicator.rebalance_step().await.expect("step"),
        energyguard::replication::RebalanceStep::Blocked
    );
    c.replicator.recover(&down).await.expect("recover");
    assert_eq!(
        c.replicator.rebalance_step().await.expect("step"),
        energyguard::replication::RebalanceStep::Finished
    );
    let total: usize = futures::future::join_all(c.nodes.values().map(|n| n.scan(everything())))
        .await
        .into_iter()
        .map(|r| r.expect("scan").len())
        .sum();
    assert_eq!(total, 1_200, "two copies of every reading");
}

#[tokio::test]
async fn configuration_and_data_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let r = sqlite_cluster(dir.path(), 3, settings(StrategyKind::Consistent, 2, 1)).await;
        r.put(vec![reading("s1", 0, 1.0)]).await.expect("put");
        r.configure(settings(StrategyKind::Full, 1, 2))
            .await
            .expect("configure");
        r.close().await;
    }
    // The stored configuration wins over the one passed at start.
    let r = sqlite_cluster(dir.path(), 3, settings(StrategyKind::Consistent, 2, 1)).await;
    let placement = r.placement().settings();
    assert_eq!(
        (placement.strategy, placement.write_quorum),
        (StrategyKind::Full, 2)
    );
    assert!(
        r.rebalance_progress().is_some(),
        "the interrupted move resumes"
    );
    r.start_background();
    wait_settled(&r).await;
    assert!(r.node_reports().await.iter().all(|n| n.keys == Some(1)));
    assert_eq!(value_of(&r, &key("s1", 0)).await, Some(1.0));
    r.close().await;
}

#[tokio::test]
async fn adding_a_node_in_the_configuration_rebalances_onto_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let r = sqlite_cluster(dir.path(), 3, settings(StrategyKind::Consistent, 1, 1)).await;
        let readings: Vec<_> = (0..2_000)
            .map(|i| reading(&format!("s{i}"), 0, 1.0))
            .collect();
        r.put(readings).await.expect("put");
        r.close().await;
    }
    let r = sqlite_cluster(dir.path(), 4, settings(StrategyKind::Consistent, 1, 1)).await;
    r.start_background();
    wait_settled(&r).await;
    let reports = r.node_reports().await;
    let keys: Vec<u64> = reports.iter().map(|n| n.keys.expect("counted")).collect();
    assert_eq!(keys.iter().sum::<u64>(), 2_000);
    assert!(
        (300..=700).contains(&keys[3]),
        "node4 took about a quarter: {keys:?}"
    );
    r.close().await;
}

#[tokio::test]
async fn invalid_configurations_are_refused_and_change_nothing() {
    let c = memory_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    for bad in [
        settings(StrategyKind::Consistent, 4, 1),
        settings(StrategyKind::Consistent, 2, 3),
        settings(StrategyKind::Full, 1, 4),
    ] {
        let err = c.replicator.configure(bad).await.expect_err("invalid");
        assert!(matches!(err, ReplicationError::InvalidConfig(_)));
    }
    assert_eq!(
        c.replicator.placement().settings(),
        settings(StrategyKind::Consistent, 2, 1)
    );
    assert!(matches!(
        c.replicator.node_id("node9"),
        Err(ReplicationError::UnknownNode(_))
    ));
    assert!(matches!(
        c.replicator.node_id("../etc"),
        Err(ReplicationError::UnknownNode(_))
    ));
}

/// An update racing a delete of the same key is decided against the same
/// version: whenever the delete reports it deleted the key, the key stays
/// deleted, whichever finished last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_never_brings_back_a_key_deleted_concurrently() {
    // SQLite nodes: a read and a write take long enough for the two to
    // interleave when nothing orders them.
    let cluster = sqlite_node_cluster(3, settings(StrategyKind::Consistent, 2, 1)).await;
    let replicator = cluster.replicator.clone();
    for i in 0..300 {
        let reading = reading("race", i, 1.0);
        let key = reading.key.clone();
        replicator.put(vec![reading]).await.expect("put");
        let (updater, deleter) = (replicator.clone(), replicator.clone());
        let (k1, k2) = (key.clone(), key.clone());
        let update = tokio::spawn(async move { updater.update(&k1, 2.0, None).await });
        let delete = tokio::spawn(async move { deleter.delete(&k2).await });
        let (updated, deleted) = (update.await.expect("task"), delete.await.expect("task"));
        assert!(deleted.expect("delete"), "the key existed");
        let _ = updated.expect("update");
        assert_eq!(
            value_of(&replicator, &key).await,
            None,
            "round {i}: an update brought back a deleted key"
        );
    }
}

#[tokio::test]
async fn a_node_that_lost_its_data_stays_down_until_a_peer_can_refill_it() {
    let c = memory_cluster(2, settings(StrategyKind::Full, 1, 1)).await;
    let r = &c.replicator;
    r.put(vec![reading("s1", 1, 1.0), reading("s2", 2, 2.0)])
        .await
        .expect("put");
    let (node1, node2) = (
        NodeId::from_str("node1").expect("id"),
        NodeId::from_str("node2").expect("id"),
    );
    // A recovery of a node that is up records the storage it is known by.
    r.recover(&node2).await.expect("explicit repair");

    r.fail(&node1).await.expect("fail node1");
    r.fail(&node2).await.expect("fail node2");
    c.nodes[&node2].wipe();
    let refused = r.recover(&node2).await;
    assert!(
        matches!(refused, Err(ReplicationError::Unavailable { .. })),
        "an emptied node with no live peer must not come up: {refused:?}"
    );
    assert_eq!(r.status_of(&node2).0, NodeStatus::Down);

    r.recover(&node1).await.expect("recover node1");
    let report = r.recover(&node2).await.expect("refilled from node1");
    assert_eq!(report.repaired, 2, "{report:?}");
    r.fail(&node1).await.expect("fail node1 again");
    assert_eq!(value_of(r, &key("s1", 1)).await, Some(1.0));
    assert_eq!(value_of(r, &key("s2", 2)).await, Some(2.0));
}
