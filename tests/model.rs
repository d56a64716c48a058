//! The randomized model test of replication.
//!
//! A long, seeded random sequence of writes, updates, deletes, node failures,
//! recoveries, disk replacements, strategy changes and rebalancing steps runs
//! against a replicator of in-memory nodes, and the same without disk
//! replacements against SQLite nodes (journal, merges and digest cache
//! included), next to a plain `BTreeMap` as the model. Every answer is checked against the model as it goes; at the end,
//! once every node is recovered and the rebalance is finished, each node must
//! hold exactly the model's live data for the sensors it owns, and no deleted
//! key may be readable anywhere.
//!
//! Reproducible: the rebalance is stepped by the test (no background task)
//! on a single-threaded runtime. `MODEL_SEEDS` (default 4; half as many on
//! SQLite) and `MODEL_OPS` (default 2,500) scale it; `MODEL_SEED` replays
//! one seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use energyguard::reading::{Key, Reading, Sample};
use energyguard::replication::Replicator;
use energyguard::replication::{NodeStatus, ReplicationError, ReplicationSettings, StrategyKind};
use energyguard::storage::memory::MemoryNode;
use energyguard::storage::{NodeId, Scan, StorageNode};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: usize = 4;
const SENSORS: usize = 10;
const TIMESTAMPS: i64 = 30;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seeds to run: `MODEL_SEED`, or the first `count`.
fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..count).collect(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn random_operations_on_memory_nodes_match_a_plain_map() {
    let ops = env_number("MODEL_OPS", 2_500) as usize;
    for seed in seeds(env_number("MODEL_SEEDS", 4)) {
        let cluster = memory_cluster(NODES, initial_settings()).await;
        let nodes = Nodes {
            all: as_storage(&cluster.nodes),
            wipeable: Some(cluster.nodes.clone()),
        };
        run(seed, ops, cluster.replicator.clone(), nodes).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn random_operations_on_sqlite_nodes_match_a_plain_map() {
    let ops = env_number("MODEL_OPS", 2_500) as usize;
    for seed in seeds(env_number("MODEL_SEEDS", 4).div_ceil(2)) {
        let cluster = sqlite_node_cluster(NODES, initial_settings()).await;
        let nodes = Nodes {
            all: as_storage(&cluster.nodes),
            wipeable: None,
        };
        run(seed, ops, cluster.replicator.clone(), nodes).await;
    }
}

fn initial_settings() -> ReplicationSettings {
    settings(StrategyKind::Consistent, 2, 1)
}

fn as_storage<N: StorageNode>(
    nodes: &BTreeMap<NodeId, Arc<N>>,
) -> BTreeMap<NodeId, Arc<dyn StorageNode>> {
    nodes
        .iter()
        .map(|(id, n)| (id.clone(), n.clone() as Arc<dyn StorageNode>))
        .collect()
}

/// The replicator's nodes, and the in-memory ones that can have their disk
/// replaced by an empty one.
struct Nodes {
    all: BTreeMap<NodeId, Arc<dyn StorageNode>>,
    wipeable: Option<BTreeMap<NodeId, Arc<MemoryNode>>>,
}

fn random_key(rng: &mut ChaCha8Rng) -> Key {
    key(
        &format!("s{}", rng.random_range(0..SENSORS)),
        rng.random_range(0..TIMESTAMPS),
    )
}

fn random_settings(rng: &mut ChaCha8Rng) -> ReplicationSettings {
    if rng.random_bool(0.3) {
        settings(StrategyKind::Full, 1, rng.random_range(1..=2))
    } else {
        let rf = rng.random_range(1..=3);
        ReplicationSettings {
            virtual_nodes: [4, 16, 64][rng.random_range(0..3)],
            ..settings(StrategyKind::Consistent, rf, rng.random_range(1..=rf))
        }
    }
}

struct Run {
    seed: u64,
    op: usize,
    replicator: Arc<Replicator>,
    nodes: Nodes,
    model: BTreeMap<Key, f64>,
    stats: BTreeMap<&'static str, usize>,
    /// A node whose disk was replaced and not yet repaired. Until it is, no
    /// other node is failed: with its only other copies gone, its data would
    /// be lost for real (two faults exceed what two copies can survive).
    wiped: Option<NodeId>,
}

impl Run {
    fn context(&self) -> String {
        format!(
            "seed {} op {} (replay with MODEL_SEED={})",
            self.seed, self.op, self.seed
        )
    }

    async fn statuses(&self) -> BTreeMap<NodeId, NodeStatus> {
        self.replicator
            .node_reports()
            .await
            .into_iter()
            .map(|r| (r.id, r.status))
            .collect()
    }

    async fn down_nodes(&self) -> Vec<NodeId> {
        let statuses = self.statuses().await;
        statuses
            .into_iter()
            .filter(|(_, s)| *s == NodeStatus::Down)
            .map(|(n, _)| n)
            .collect()
    }

    async fn all_up(&self) -> bool {
        self.statuses().await.values().all(|s| *s == NodeStatus::Up)
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// An operation refused for lack of replicas is allowed only while some
    /// node is down.
    async fn check_unavailable(&self, error: ReplicationError) {
        assert!(
            matches!(error, ReplicationError::Unavailable { .. }),
            "{}: {error:?}",
            self.context()
        );
        assert!(
            !self.all_up().await,
            "{}: unavailable with every node up",
            self.context()
        );
    }
}

async fn run(seed: u64, ops: usize, replicator: Arc<Replicator>, nodes: Nodes) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut run = Run {
        seed,
        op: 0,
        replicator: replicator.clone(),
        nodes,
        model: BTreeMap::new(),
        stats: BTreeMap::new(),
        wiped: None,
    };
    let ids = node_ids(NODES);

    for op in 0..ops {
        run.op = op;
        let choice = rng.random_range(0..100);
        match choice {
            0..=34 => {
                let batch: Vec<Reading> = (0..rng.random_range(1..12))
                    .map(|_| Reading {
                        key: random_key(&mut rng),
                        sample: Sample {
                            value: rng.random_range(-1e3..1e3),
                            unit: None,
                        },
                    })
                    .collect();
                match replicator.put(batch.clone()).await {
                    Ok(()) => {
                        run.count("put");
                        for r in batch {
                            run.model.insert(r.key, r.sample.value);
                        }
                    }
                    Err(e) => run.check_unavailable(e).await,
                }
            }
            35..=44 => {
                let k = random_key(&mut rng);
                let value = rng.random_range(-1e3..1e3);
                match replicator.update(&k, value, None).await {
                    Ok(found) => {
                        run.count("update");
                        assert_eq!(
                            found,
                            run.model.contains_key(&k),
                            "{}: update {k}",
                            run.context()
                        );
                        if found {
                            run.model.insert(k, value);
                        }
                    }
                    Err(e) => run.check_unavailable(e).await,
                }
            }
            45..=56 => {
                let k = random_key(&mut rng);
                match replicator.delete(&k).await {
                    Ok(found) => {
                        run.count("delete");
                        assert_eq!(
                            found,
                            run.model.remove(&k).is_some(),
                            "{}: delete {k}",
                            run.context()
                        );
                    }
                    Err(e) => run.check_unavailable(e).await,
                }
            }
            57..=71 => {
                let k = random_key(&mut rng);
                match replicator.get(&k).await {
                    Ok(sample) => {
                        run.count("get");
                        assert_eq!(
                            sample.map(|s| s.value),
                            run.model.get(&k).copied(),
                            "{}: get {k}",
                            run.context()
                        );
                    }
                    Err(e) => run.check_unavailable(e).await,
                }
            }
            72..=75 => match replicator
                .scan(Scan {
                    limit: usize::MAX,
                    ..Scan::default()
                })
                .await
            {
                Ok(records) => {
                    run.count("scan");
                    let got: BTreeMap<Key, f64> = records
                        .into_iter()
                        .map(|r| (r.key, r.sample.expect("live").value))
                        .collect();
                    assert_eq!(got, run.model, "{}: scan", run.context());
                }
                Err(e) => run.check_unavailable(e).await,
            },
            76..=81 => {
                let node = &ids[rng.random_range(0..NODES)];
                // Keep at least one node up, as any real cluster must.
                let down = run
                    .statuses()
                    .await
                    .values()
                    .filter(|s| **s != NodeStatus::Up)
                    .count();
                if down < NODES - 1 && run.wiped.is_none() && replicator.fail(node).await.is_ok() {
                    run.count("fail");
                }
            }
            82..=88 => {
                let down = run.down_nodes().await;
                if !down.is_empty() {
                    let node = down[rng.random_range(0..down.len())].clone();
                    replicator
                        .recover(&node)
                        .await
                        .unwrap_or_else(|e| panic!("{}: recover: {e}", run.context()));
                    if run.wiped.as_ref() == Some(&node) {
                        run.wiped = None;
                    }
                    run.count("recover");
                }
            }
            89..=90 => {
                // A disk replaced by an empty one, safe only when every other
                // node is up and settled and each reading has a second copy.
                let down = run.down_nodes().await;
                let copies = replicator.placement().copies();
                let wipeable = run.nodes.wipeable.as_ref();
                if let Some(nodes) = wipeable.filter(|_| down.len() == 1 && copies >= 2)
                    && replicator.is_settled().await.expect("settled")
                {
                    nodes[&down[0]].wipe();
                    run.wiped = Some(down[0].clone());
                    run.count("wipe");
                }
            }
            91..=94 => {
                let new = random_settings(&mut rng);
                replicator
                    .configure(new)
                    .await
                    .unwrap_or_else(|e| panic!("{}: configure {new:?}: {e}", run.context()));
                run.count("configure");
            }
            _ => {
                replicator
                    .rebalance_step()
                    .await
                    .unwrap_or_else(|e| panic!("{}: rebalance: {e}", run.context()));
                run.count("rebalance step");
            }
        }
    }

    // Bring every node back and let the rebalance finish.
    for node in &ids {
        if run.statuses().await[node] != NodeStatus::Up {
            replicator
                .recover(node)
                .await
                .unwrap_or_else(|e| panic!("{}: final recover: {e}", run.context()));
        }
    }
    for _ in 0..10 {
        if replicator.is_settled().await.expect("settled") {
            break;
        }
        replicator.rebalance_step().await.expect("rebalance");
    }
    assert!(
        replicator.is_settled().await.expect("settled"),
        "seed {seed}: rebalance did not finish"
    );

    let placement = replicator.placement();
    for (id, node) in &run.nodes.all {
        let held: BTreeMap<Key, f64> = node
            .scan(Scan {
                limit: usize::MAX,
                ..Scan::default()
            })
            .await
            .expect("scan")
            .into_iter()
            .map(|r| (r.key, r.sample.expect("live").value))
            .collect();
        let owned: BTreeMap<Key, f64> = run
            .model
            .iter()
            .filter(|(k, _)| placement.replicas(&k.sensor).contains(id))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            held, owned,
            "seed {seed}: node {id} holds exactly its share of the model"
        );
    }
    let every_key: BTreeSet<Key> = (0..SENSORS)
        .flat_map(|s| (0..TIMESTAMPS).map(move |t| key(&format!("s{s}"), t)))
        .collect();
    for k in every_key {
        let got = replicator.get(&k).await.expect("get").map(|s| s.value);
        assert_eq!(
            got,
            run.model.get(&k).copied(),
            "seed {seed}: final read of {k}"
        );
    }
    // Enough of everything happened for the run to mean something.
    for what in ["put", "delete", "fail", "recover", "configure", "get"] {
        assert!(
            run.stats.get(what).copied().unwrap_or(0) > 5,
            "seed {seed}: too few {what}: {:?}",
            run.stats
        );
    }
    eprintln!(
        "seed {seed}: {ops} operations {:?}, {} live keys",
        run.stats,
        run.model.len()
    );
}
