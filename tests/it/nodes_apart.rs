//! Storage nodes in processes of their own (`energyguard node`), failed the
//! ways real ones fail: SIGKILL, a wiped directory, a network partition, a
//! service killed or started before its nodes. Each test asserts what an
//! operator cares about: every acknowledged reading readable, no deleted
//! key back, every replica holding the same keys, and nodes found down and
//! brought back without anyone calling `recover_node`.

use crate::common;

use std::time::Duration;

use common::node_process::{NodeProcess, Proxy, SECRET};
use common::promtool::promtool_passes;
use common::service::Service;
use common::wait_until;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A service whose three nodes are `node1` in a directory of its own and
/// node processes at `urls` (node2, node3): full replication, quorum 1,
/// failures found within a second.
fn start_service(dir: &std::path::Path, urls: [&str; 2]) -> Service {
    let config = format!(
        "[replication]\nstrategy = \"full\"\nwrite_quorum = 1\nnodes = [\
         {{ id = \"node1\", path = \"{disk1}\" }}, \
         {{ id = \"node2\", url = \"{}\" }}, {{ id = \"node3\", url = \"{}\" }}]\n\
         [cluster]\nsecret = \"{SECRET}\"\nfailure_timeout = \"1s\"\n",
        urls[0],
        urls[1],
        disk1 = dir.join("disk1").display(),
    );
    Service::start_in(dir, &config)
}

/// `/nodes_status`, one node.
async fn node_status(service: &Service, id: &str) -> Value {
    let (status, nodes) = service.get("/nodes_status").await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id).cloned())
        .unwrap_or_else(|| panic!("no node {id} in {nodes}"))
}

async fn wait_for_status(service: &Service, id: &str, status: &str, within: Duration) {
    wait_until(within, || async {
        node_status(service, id).await["status"] == status
    })
    .await;
}

/// Stores `count` readings of sensor `sensor` in batches of ten, one
/// reading a second from `t0`; answers the keys acknowledged.
async fn ingest(service: &Service, sensor: &str, t0: i64, count: i64) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(10) {
        let body: Vec<Value> = batch
            .iter()
            .map(|i| json!({"sensor_id": sensor, "timestamp": t0 + i, "value": *i as f64}))
            .collect();
        let (status, answer) = service.post("/ingest", Value::Array(body)).await;
        if status == StatusCode::OK || status == StatusCode::CREATED {
            for key in answer["keys"].as_array().into_iter().flatten() {
                acknowledged.push(key.as_str().unwrap_or_default().to_string());
            }
        }
    }
    acknowledged
}

async fn assert_readable(service: &Service, keys: &[String]) {
    for key in keys {
        let (status, body) = service.get(&format!("/measurement/{key}")).await;
        assert_eq!(status, StatusCode::OK, "acknowledged {key} lost: {body}");
    }
}

/// Every node up and holding `keys` live keys.
async fn wait_all_hold(service: &Service, keys: u64, within: Duration) {
    wait_until(within, || async {
        let (_, nodes) = service.get("/nodes_status").await;
        nodes.as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .all(|n| n["status"] == "up" && n["keys"].as_u64() == Some(keys))
        })
    })
    .await;
}

#[tokio::test]
async fn a_killed_node_process_is_found_down_and_recovered_by_itself_losing_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node2 = NodeProcess::start("node2", &dir.path().join("disk2"));
    let node3 = NodeProcess::start("node3", &dir.path().join("disk3"));
    let service = start_service(dir.path(), [&node2.url(), &node3.url()]);
    let t0 = 1_700_000_000;
    let mut acknowledged = ingest(&service, "meter", t0, 100).await;

    node2.kill();
    // Writes go on while the node is dead, before and after it is found.
    acknowledged.extend(ingest(&service, "meter", t0 + 100, 100).await);
    wait_for_status(&service, "node2", "down", Duration::from_secs(5)).await;
    let down = node_status(&service, "node2").await;
    assert_eq!(down["reason"], "unreachable", "{down}");
    assert!(down["hints_pending"].as_u64() > Some(0), "{down}");
    let scrape = service.metrics_text().await;
    assert!(
        scrape.contains("energyguard_node_down_reason{node=\"node2\",reason=\"unreachable\"} 1")
    );
    acknowledged.extend(ingest(&service, "meter", t0 + 200, 100).await);

    node2.restart();
    wait_all_hold(&service, 300, Duration::from_secs(15)).await;
    assert_eq!(acknowledged.len(), 300, "every write had its quorum");
    assert_readable(&service, &acknowledged).await;
    assert_eq!(node_status(&service, "node2").await["hints_pending"], 0);

    // The figures of remote nodes lint clean and tell the same story.
    let scrape = service.metrics_text().await;
    promtool_passes(dir.path(), &["check", "metrics"], &scrape);
    for needle in [
        "energyguard_recoveries_total{node=\"node2\",outcome=\"succeeded\"} 1",
        "energyguard_node_down_reason{node=\"node2\",reason=\"unreachable\"} 0",
        "energyguard_node_status{node=\"node2\",status=\"up\"} 1",
        "energyguard_node_commit_duration_seconds_bucket{node=\"node2\",le=",
    ] {
        assert!(scrape.contains(needle), "{needle} not in:\n{scrape}");
    }
    let replayed = scrape
        .lines()
        .find_map(|l| l.strip_prefix("energyguard_recovery_hints_replayed_total{node=\"node2\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(replayed.is_some_and(|n| n >= 100.0), "{scrape}");
}

#[tokio::test]
async fn a_node_whose_directory_was_wiped_is_refilled_by_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node2 = NodeProcess::start("node2", &dir.path().join("disk2"));
    let mut node3 = NodeProcess::start("node3", &dir.path().join("disk3"));
    let service = start_service(dir.path(), [&node2.url(), &node3.url()]);
    let acknowledged = ingest(&service, "meter", 1_700_000_000, 200).await;
    wait_all_hold(&service, 200, Duration::from_secs(5)).await;

    node3.kill();
    std::fs::remove_dir_all(&node3.dir).expect("wipe the node's directory");
    node3.restart();
    // The node answers at once with empty storage: found, refilled, up.
    wait_all_hold(&service, 200, Duration::from_secs(15)).await;
    assert_readable(&service, &acknowledged).await;
}

#[tokio::test]
async fn a_partitioned_node_heals_without_bringing_back_what_was_deleted_meanwhile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node2 = NodeProcess::start("node2", &dir.path().join("disk2"));
    let node3 = NodeProcess::start("node3", &dir.path().join("disk3"));
    let link = Proxy::start(node2.address.clone()).await;
    let service = start_service(dir.path(), [&link.url(), &node3.url()]);
    let acknowledged = ingest(&service, "meter", 1_700_000_000, 50).await;
    wait_all_hold(&service, 50, Duration::from_secs(5)).await;

    link.cut();
    let (deleted, kept) = acknowledged.split_at(10);
    for key in deleted {
        let (status, body) = service
            .admin(reqwest::Method::DELETE, &format!("/measurement/{key}"))
            .await;
        assert!(status.is_success(), "{status} {body}");
    }
    let later = ingest(&service, "meter", 1_700_000_100, 20).await;
    wait_for_status(&service, "node2", "down", Duration::from_secs(10)).await;
    assert_eq!(
        node_status(&service, "node2").await["reason"],
        "unreachable"
    );

    link.heal();
    wait_all_hold(&service, 60, Duration::from_secs(20)).await;
    for key in deleted {
        let (status, _) = service.get(&format!("/measurement/{key}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "deleted {key} came back");
    }
    assert_readable(&service, kept).await;
    assert_readable(&service, &later).await;
}

#[tokio::test]
async fn a_service_killed_with_remote_nodes_loses_nothing_and_one_started_first_waits_for_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node2_dir = dir.path().join("disk2");
    // node2 is not running yet: the service starts anyway, node2 down.
    let mut node2 = NodeProcess::start("node2", &node2_dir);
    let node2_url = node2.url();
    node2.kill();
    let node3 = NodeProcess::start("node3", &dir.path().join("disk3"));
    let service = start_service(dir.path(), [&node2_url, &node3.url()]);
    let status = node_status(&service, "node2").await;
    assert_eq!(status["status"], "down", "{status}");
    assert_eq!(status["reason"], "unreachable", "{status}");
    let mut acknowledged = ingest(&service, "meter", 1_700_000_000, 50).await;
    node2.restart();
    wait_all_hold(&service, 50, Duration::from_secs(15)).await;

    acknowledged.extend(ingest(&service, "meter", 1_700_000_050, 50).await);
    service.kill();
    let service = start_service(dir.path(), [&node2_url, &node3.url()]);
    wait_all_hold(&service, 100, Duration::from_secs(15)).await;
    assert_readable(&service, &acknowledged).await;
    // A later write of a key wins over the one before the crash: the
    // restarted service's clock did not go back.
    let key = &acknowledged[0];
    let (status, body) = service
        .call(
            reqwest::Method::PUT,
            &format!("/measurement/{key}"),
            Some(common::service::ADMIN_TOKEN),
            Some(json!({"value": 42.0})),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (_, read) = service.get(&format!("/measurement/{key}")).await;
    assert_eq!(read["value"], 42.0, "{read}");
}

#[tokio::test]
async fn a_node_refuses_the_wrong_secret_and_another_nodes_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node2 = NodeProcess::start("node2", &dir.path().join("disk2"));

    let log = NodeProcess::refused("node9", &node2.dir, SECRET);
    assert!(
        log.iter().any(|l| l.contains("belongs to node \"node2\"")),
        "{log:#?}"
    );
    let log = NodeProcess::refused("node4", &dir.path().join("disk4"), "short");
    assert!(log.iter().any(|l| l.contains("cluster.secret")), "{log:#?}");

    // A caller without the secret gets 401 (gRPC: unauthenticated), and a
    // service with the wrong one sees the node down.
    energyguard::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let answer = client
        .post(format!(
            "{}/energyguard.node.v1.StorageNode/Stats",
            node2.url()
        ))
        .header("content-type", "application/grpc")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    let node3 = NodeProcess::start("node3", &dir.path().join("disk3"));
    let config = format!(
        "[replication]\nstrategy = \"full\"\nnodes = [\"node1\", \
         {{ id = \"node2\", url = \"{}\" }}, {{ id = \"node3\", url = \"{}\" }}]\n\
         [cluster]\nsecret = \"not-the-cluster-secret\"\nfailure_timeout = \"1s\"\n",
        node2.url(),
        node3.url(),
    );
    let service = Service::start_in(dir.path(), &config);
    let status = node_status(&service, "node2").await;
    assert_eq!(status["status"], "down", "{status}");
    let (stored, _) = service
        .post("/ingest", json!({"sensor_id": "s", "value": 1.0}))
        .await;
    assert!(
        stored.is_success(),
        "node1 alone takes the write (quorum 1)"
    );
}

#[tokio::test]
async fn a_disk_that_cannot_be_opened_at_start_leaves_its_node_down_until_it_can() {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = |n: u32| dir.path().join(format!("disk{n}"));
    // A file where node3's directory should be: it cannot be opened.
    std::fs::write(disk(3), "not a directory").expect("block node3's directory");
    let config = format!(
        "[replication]\nstrategy = \"full\"\nwrite_quorum = 1\nnodes = [\
         {{ id = \"node1\", path = \"{}\" }}, {{ id = \"node2\", path = \"{}\" }}, \
         {{ id = \"node3\", path = \"{}\" }}]\n[cluster]\nfailure_timeout = \"1s\"\n",
        disk(1).display(),
        disk(2).display(),
        disk(3).display(),
    );
    let service = Service::start_in(dir.path(), &config);
    let down = node_status(&service, "node3").await;
    assert_eq!(down["status"], "down", "{down}");
    assert_eq!(down["reason"], "disk", "{down}");
    let acknowledged = ingest(&service, "meter", 1_700_000_000, 100).await;
    assert_eq!(
        acknowledged.len(),
        100,
        "the other two nodes take the writes"
    );

    std::fs::remove_file(disk(3)).expect("unblock node3's directory");
    wait_all_hold(&service, 100, Duration::from_secs(15)).await;
    assert_readable(&service, &acknowledged).await;
}
