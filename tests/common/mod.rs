//! Shared test harness: clusters on real SQLite files or in-memory nodes,
//! each in its own temporary directory, and small constructors.
#![allow(dead_code)]

pub mod browser;
pub mod mosquitto;
pub mod mqtt_client;
pub mod mqtt_scenarios;
pub mod node_process;
pub mod promtool;
pub mod service;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use energyguard::reading::{Key, Reading, Sample, SensorId};
use energyguard::replication::meta::MetaStore;
use energyguard::replication::{PlacementSpec, ReplicationSettings, Replicator, StrategyKind};
use energyguard::storage::memory::MemoryNode;
use energyguard::storage::sqlite::{SqliteNode, Synchronous};
use energyguard::storage::{NodeId, StorageNode, StorageResult};
use tempfile::TempDir;

pub fn node_ids(n: usize) -> Vec<NodeId> {
    (1..=n)
        .map(|i| format!("node{i}").parse().expect("valid node id"))
        .collect()
}

pub fn settings(
    strategy: StrategyKind,
    replication_factor: usize,
    write_quorum: usize,
) -> ReplicationSettings {
    ReplicationSettings {
        strategy,
        replication_factor,
        virtual_nodes: 64,
        write_quorum,
    }
}

pub fn sensor(s: &str) -> SensorId {
    s.parse().expect("valid sensor id")
}

pub fn key(s: &str, ts: i64) -> Key {
    Key::new(sensor(s), ts)
}

pub fn reading(s: &str, ts: i64, value: f64) -> Reading {
    Reading {
        key: key(s, ts),
        sample: Sample { value, unit: None },
    }
}

/// A replicator over nodes of one kind, with the nodes at hand (hints and
/// settings on SQLite, nodes' files if any, in a temp dir).
pub struct Cluster<N> {
    pub replicator: Arc<Replicator>,
    pub nodes: BTreeMap<NodeId, Arc<N>>,
    pub dir: TempDir,
}

pub type MemoryCluster = Cluster<MemoryNode>;
pub type SqliteCluster = Cluster<SqliteNode>;

/// A cluster whose nodes `make` builds (given each id and the temp dir).
pub async fn cluster_of<N: StorageNode>(
    n: usize,
    settings: ReplicationSettings,
    make: impl Fn(&NodeId, &std::path::Path) -> StorageResult<N>,
) -> Cluster<N> {
    let dir = tempfile::tempdir().expect("temp dir");
    let created: Arc<Mutex<BTreeMap<NodeId, Arc<N>>>> = Arc::default();
    let meta = MetaStore::open(dir.path(), Synchronous::Normal).expect("meta store");
    let spec = PlacementSpec {
        settings,
        nodes: node_ids(n),
    };
    let (sink, nodes_dir) = (created.clone(), dir.path().to_path_buf());
    let replicator = Replicator::open(meta, spec, move |id| {
        let node = Arc::new(make(id, &nodes_dir)?);
        sink.lock().expect("lock").insert(id.clone(), node.clone());
        Ok(node as Arc<dyn StorageNode>)
    })
    .await
    .expect("open replicator");
    let nodes = created.lock().expect("lock").clone();
    Cluster {
        replicator,
        nodes,
        dir,
    }
}

pub async fn memory_cluster(n: usize, settings: ReplicationSettings) -> MemoryCluster {
    cluster_of(n, settings, |id, _| Ok(MemoryNode::new(id.clone()))).await
}

pub async fn sqlite_node_cluster(n: usize, settings: ReplicationSettings) -> SqliteCluster {
    cluster_of(n, settings, |id, dir| {
        SqliteNode::open(id.clone(), dir, Synchronous::Normal)
    })
    .await
}

pub async fn sqlite_cluster(
    dir: &std::path::Path,
    n: usize,
    settings: ReplicationSettings,
) -> Arc<Replicator> {
    Replicator::open_sqlite(
        dir,
        PlacementSpec {
            settings,
            nodes: node_ids(n),
        },
        Synchronous::Normal,
    )
    .await
    .expect("open replicator")
}

/// Polls `condition` until it holds, failing after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the replicator has no data left to move or clean up.
pub async fn wait_settled(replicator: &Arc<Replicator>) {
    let r = replicator.clone();
    wait_until(Duration::from_secs(30), || {
        let r = r.clone();
        async move { r.is_settled().await.expect("settled") }
    })
    .await;
}

/// The value stored under `key`, through the replicator.
pub async fn value_of(replicator: &Replicator, key: &Key) -> Option<f64> {
    replicator.get(key).await.expect("get").map(|s| s.value)
}
