//! The randomized model test of replication.
//!
//! A long, seeded random sequence of writes, updates, deletes, node failures,
//! recoveries, disk replacements, strategy changes and rebalancing steps runs
//! against a replicator of in-memory nodes, and the same without disk
//! replacements against SQLite nodes (journal, merges and digest cache
//! included), next to a plain `BTreeMap` as the model. Every answer is
//! checked against the model as it goes; at the end, once every node is
//! recovered and the rebalance is finished, each node must hold exactly the
//! model's live data for the sensors it owns, the digests of every two
//! replicas of a sensor must be equal, and no deleted key may be readable
//! anywhere.
//!
//! A third run wraps the in-memory nodes in [`FaultyNode`], which fails the
//! way a node process behind a network does, at moments the seed chooses:
//! a write's request dropped, applied with its reply lost, or delayed and
//! delivered later (after newer writes; refused, as a node process does,
//! if the settings epoch moved meanwhile), and a node restarting (every
//! call failing for a while, its data kept), besides disk replacements. A
//! write whose outcome is unknown is allowed to have landed or not, so the
//! model keeps, per key, every value it may hold. The checker asks that
//! every answer be one of them, that every acknowledged write be readable
//! until a later acknowledged write replaces it, that no key deleted (and
//! not maybe-rewritten since) come back, and that at the end all replicas
//! of a sensor hold the same records.
//!
//! Reproducible: the rebalance is stepped by the test (no background task)
//! on a single-threaded runtime. `MODEL_SEEDS` (default 4; half as many on
//! SQLite) and `MODEL_OPS` (default 2,500) scale it; `MODEL_SEED` replays
//! one seed.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use energyguard::reading::SensorId;
use energyguard::reading::{Key, Reading, Sample};
use energyguard::replication::Replicator;
use energyguard::replication::{
    NodeStatus, Placement, ReplicationError, ReplicationSettings, StrategyKind,
};
use energyguard::storage::memory::MemoryNode;
use energyguard::storage::{
    DigestRequest, Incarnation, NodeId, NodeStats, RangeDigest, Record, Scan, StorageError,
    StorageNode, StorageResult,
};
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
            faulty: None,
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
            faulty: None,
        };
        run(seed, ops, cluster.replicator.clone(), nodes).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn random_operations_with_network_faults_and_restarts_keep_every_acknowledged_write() {
    let ops = env_number("MODEL_OPS", 2_500) as usize;
    for seed in seeds(env_number("MODEL_SEEDS", 4)) {
        let cluster = cluster_of(NODES, initial_settings(), |id, _| {
            Ok(FaultyNode::new(Arc::new(MemoryNode::new(id.clone()))))
        })
        .await;
        let nodes = Nodes {
            all: as_storage(&cluster.nodes),
            wipeable: Some(
                cluster
                    .nodes
                    .iter()
                    .map(|(id, node)| (id.clone(), node.inner.clone()))
                    .collect(),
            ),
            faulty: Some(cluster.nodes.clone()),
        };
        run(seed, ops, cluster.replicator.clone(), nodes).await;
    }
}

/// What an armed [`FaultyNode`] does to its next write.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The request never arrives: nothing applied, no answer.
    DropRequest,
    /// Applied, but the reply is lost: the caller cannot know.
    LoseReply,
    /// The request is held up on the way and the caller times out; it
    /// arrives later, when the test delivers it (after newer writes, maybe).
    Delay,
}

/// An in-memory node that fails the way a node process behind a network
/// does: its next write dropped, applied without a reply, or delayed; or
/// every call refused while it is "restarting" (its data kept).
struct FaultyNode {
    inner: Arc<MemoryNode>,
    armed: std::sync::Mutex<Option<Fault>>,
    /// Delayed writes, with the settings epoch of the service that sent
    /// them.
    delayed: std::sync::Mutex<Vec<(u64, Vec<Record>)>>,
    /// The settings epoch the service sends with its calls (set by the test
    /// before each operation), for stamping delayed writes.
    epoch: std::sync::atomic::AtomicU64,
    /// While set, the node process is down: every call fails.
    restarting: std::sync::atomic::AtomicBool,
    /// Faults that went off.
    fired: std::sync::atomic::AtomicUsize,
}

impl FaultyNode {
    fn new(inner: Arc<MemoryNode>) -> Self {
        Self {
            inner,
            armed: std::sync::Mutex::new(None),
            delayed: std::sync::Mutex::new(Vec::new()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            restarting: std::sync::atomic::AtomicBool::new(false),
            fired: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn arm(&self, fault: Fault) {
        *self.armed.lock().expect("lock") = Some(fault);
    }

    fn take_fault(&self) -> Option<Fault> {
        self.armed.lock().expect("lock").take()
    }

    fn set_restarting(&self, restarting: bool) {
        self.restarting
            .store(restarting, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_restarting(&self) -> bool {
        self.restarting.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fire(&self) {
        self.fired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fails the call if the node is restarting.
    fn reachable(&self) -> StorageResult<()> {
        if self.is_restarting() {
            self.fire();
            return Err(lost("node restarting"));
        }
        Ok(())
    }

    /// Lets the delayed writes arrive. A node process refuses a call from
    /// a service whose settings epoch is older than one it has seen, so a
    /// write sent before the placement changed is refused, not applied.
    /// Answers (writes applied, writes refused).
    async fn deliver_delayed(&self, epoch_now: u64) -> (usize, usize) {
        let delayed = std::mem::take(&mut *self.delayed.lock().expect("lock"));
        let (mut applied, mut refused) = (0, 0);
        for (sent_at, records) in delayed {
            if sent_at == epoch_now {
                self.inner.apply(records).await.expect("memory apply");
                applied += 1;
            } else {
                refused += 1;
            }
        }
        (applied, refused)
    }
}

fn lost(what: &str) -> StorageError {
    StorageError::Unreachable(format!("injected: {what}"))
}

#[async_trait]
impl StorageNode for FaultyNode {
    fn id(&self) -> &NodeId {
        self.inner.id()
    }

    async fn apply(&self, records: Vec<Record>) -> StorageResult<u64> {
        self.reachable()?;
        let fault = self.take_fault();
        if fault.is_some() {
            self.fire();
        }
        match fault {
            None => self.inner.apply(records).await,
            Some(Fault::DropRequest) => Err(lost("request dropped")),
            Some(Fault::LoseReply) => {
                self.inner.apply(records).await?;
                Err(lost("reply lost"))
            }
            Some(Fault::Delay) => {
                let epoch = self.epoch.load(std::sync::atomic::Ordering::Relaxed);
                self.delayed.lock().expect("lock").push((epoch, records));
                Err(lost("timed out"))
            }
        }
    }

    async fn get(&self, key: &Key) -> StorageResult<Option<Record>> {
        self.reachable()?;
        self.inner.get(key).await
    }

    async fn scan(&self, scan: Scan) -> StorageResult<Vec<Record>> {
        self.reachable()?;
        self.inner.scan(scan).await
    }

    async fn digests(&self, request: DigestRequest) -> StorageResult<Vec<RangeDigest>> {
        self.reachable()?;
        self.inner.digests(request).await
    }

    async fn remove_sensors(&self, sensors: Vec<SensorId>) -> StorageResult<u64> {
        self.reachable()?;
        self.inner.remove_sensors(sensors).await
    }

    async fn stats(&self) -> StorageResult<NodeStats> {
        self.reachable()?;
        self.inner.stats().await
    }

    async fn close(&self) -> StorageResult<()> {
        self.inner.close().await
    }

    fn address(&self) -> String {
        self.inner.address()
    }

    async fn probe(&self) -> StorageResult<Incarnation> {
        self.reachable()?;
        self.inner.probe().await
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

/// The replicator's nodes, the in-memory ones that can have their disk
/// replaced by an empty one, and the ones that can be made to fail.
struct Nodes {
    all: BTreeMap<NodeId, Arc<dyn StorageNode>>,
    wipeable: Option<BTreeMap<NodeId, Arc<MemoryNode>>>,
    faulty: Option<BTreeMap<NodeId, Arc<FaultyNode>>>,
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
    /// Per key, every value it may hold (`None`: absent); a key not in the
    /// map is certainly absent.
    model: BTreeMap<Key, Vec<Option<f64>>>,
    /// [`Run::fired`] when the current operation began.
    fired_before: usize,
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

    fn faults(&self) -> bool {
        self.nodes.faulty.is_some()
    }

    /// Faults that went off so far, on every node.
    fn fired(&self) -> usize {
        self.nodes
            .faulty
            .iter()
            .flat_map(|nodes| nodes.values())
            .map(|n| n.fired.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn faulty(&self) -> &BTreeMap<NodeId, Arc<FaultyNode>> {
        self.nodes.faulty.as_ref().expect("faulty nodes")
    }

    /// One fault, as the seed picks: a node's next write dropped, applied
    /// with its reply lost, or delayed; delayed writes delivered; a node
    /// process restarting (every call fails) or back. Not while nodes are
    /// down or restarting beyond what the cluster can lose.
    async fn inject_fault(&mut self, rng: &mut ChaCha8Rng) {
        let ids = node_ids(NODES);
        let node = &ids[rng.random_range(0..NODES)];
        let out = self.down_nodes().await.len()
            + self.faulty().values().filter(|n| n.is_restarting()).count();
        let epoch = self.replicator.epoch();
        // A wiped node's data has one copy left: no second fault until it
        // is refilled.
        let out = if self.wiped.is_some() { NODES } else { out };
        match rng.random_range(0..6) {
            kind @ 0..=3 if out + 1 < NODES - 1 => {
                let fault = match kind {
                    0 => Fault::DropRequest,
                    1 => Fault::LoseReply,
                    _ => Fault::Delay,
                };
                self.faulty()[node].arm(fault);
                self.count("fault armed");
            }
            4 => {
                let restarting = self.faulty().values().find(|n| n.is_restarting()).cloned();
                match restarting {
                    Some(n) => {
                        n.set_restarting(false);
                        self.count("node back");
                    }
                    None if out + 1 < NODES - 1 => {
                        self.faulty()[node].set_restarting(true);
                        self.count("node restarting");
                    }
                    None => {}
                }
            }
            5 => {
                for n in self.faulty().values().cloned().collect::<Vec<_>>() {
                    let (applied, refused) = n.deliver_delayed(epoch).await;
                    *self.stats.entry("delayed write delivered").or_default() += applied;
                    *self.stats.entry("delayed write refused").or_default() += refused;
                }
            }
            _ => {}
        }
    }

    /// What `key` may hold.
    fn possible(&self, key: &Key) -> Vec<Option<f64>> {
        self.model.get(key).cloned().unwrap_or_else(|| vec![None])
    }

    /// An acknowledged write: `key` now holds `value`, whatever came before.
    fn certain(&mut self, key: Key, value: Option<f64>) {
        match value {
            Some(v) => self.model.insert(key, vec![Some(v)]),
            None => self.model.remove(&key),
        };
    }

    /// A write whose outcome is unknown: `value` joins what `key` may hold.
    fn maybe(&mut self, key: Key, value: Option<f64>) {
        let mut possible = self.possible(&key);
        if !possible.contains(&value) {
            possible.push(value);
        }
        self.model.insert(key, possible);
    }

    /// Whether `key` was found as the model allows.
    fn check_found(&self, key: &Key, found: bool, what: &str) {
        let possible = self.possible(key);
        let allowed = if found {
            possible.iter().any(Option::is_some)
        } else {
            possible.contains(&None)
        };
        assert!(
            allowed,
            "{}: {what} {key} found={found}, may hold {possible:?}",
            self.context()
        );
    }

    fn check_value(&self, key: &Key, value: Option<f64>, what: &str) {
        let possible = self.possible(key);
        assert!(
            possible.contains(&value),
            "{}: {what} {key} gave {value:?}, may hold {possible:?}",
            self.context()
        );
    }

    /// A write during which a fault went off may have landed: its values
    /// join what the keys may hold. Otherwise it was refused before
    /// anything was written.
    async fn write_failed(&mut self, error: ReplicationError, writes: Vec<(Key, Option<f64>)>) {
        if self.fired() > self.fired_before {
            self.count("unknown outcome");
            for (key, value) in writes {
                self.maybe(key, value);
            }
        } else {
            self.check_unavailable(error).await;
        }
    }

    /// A read may fail when its replicas are down, or when a fault went off
    /// on every one it asked.
    async fn read_failed(&self, error: ReplicationError) {
        let faulted = self.fired() > self.fired_before;
        if !(faulted && matches!(error, ReplicationError::Storage(_))) {
            self.check_unavailable(error).await;
        }
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
        fired_before: 0,
        stats: BTreeMap::new(),
        wiped: None,
    };
    let ids = node_ids(NODES);

    for op in 0..ops {
        run.op = op;
        run.fired_before = run.fired();
        // What the service sends with its calls in this operation.
        for node in run.nodes.faulty.iter().flat_map(|f| f.values()) {
            node.epoch
                .store(replicator.epoch(), std::sync::atomic::Ordering::Relaxed);
        }
        let choice = rng.random_range(0..100);
        // Faults take some of the wipes' and strategy changes' share: a
        // change of placement makes every write delayed before it stale.
        if run.faults() && (90..=93).contains(&choice) {
            run.inject_fault(&mut rng).await;
            continue;
        }
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
                let writes: Vec<(Key, Option<f64>)> = batch
                    .iter()
                    .map(|r| (r.key.clone(), Some(r.sample.value)))
                    .collect();
                match replicator.put(batch).await {
                    Ok(()) => {
                        run.count("put");
                        for (key, value) in writes {
                            run.certain(key, value);
                        }
                    }
                    Err(e) => run.write_failed(e, writes).await,
                }
            }
            35..=44 => {
                let k = random_key(&mut rng);
                let value = rng.random_range(-1e3..1e3);
                match replicator.update(&k, value, None).await {
                    Ok(found) => {
                        run.count("update");
                        run.check_found(&k, found, "update");
                        if found {
                            run.certain(k, Some(value));
                        }
                    }
                    Err(e) => run.write_failed(e, vec![(k, Some(value))]).await,
                }
            }
            45..=56 => {
                let k = random_key(&mut rng);
                match replicator.delete(&k).await {
                    Ok(found) => {
                        run.count("delete");
                        run.check_found(&k, found, "delete");
                        if found {
                            run.certain(k, None);
                        }
                    }
                    Err(e) => run.write_failed(e, vec![(k, None)]).await,
                }
            }
            57..=71 => {
                let k = random_key(&mut rng);
                match replicator.get(&k).await {
                    Ok(sample) => {
                        run.count("get");
                        run.check_value(&k, sample.map(|s| s.value), "get");
                    }
                    Err(e) => run.read_failed(e).await,
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
                    check_holds(&run, &got, |_| true, "scan");
                }
                Err(e) => run.read_failed(e).await,
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
                    match replicator.recover(&node).await {
                        Ok(_) => {
                            if run.wiped.as_ref() == Some(&node) {
                                run.wiped = None;
                            }
                            run.count("recover");
                        }
                        // A fault during the recovery's copying: it stays down.
                        Err(ReplicationError::Storage(_)) if run.fired() > run.fired_before => {
                            run.count("recovery failed")
                        }
                        Err(e) => panic!("{}: recover: {e}", run.context()),
                    }
                }
            }
            89..=90 => {
                // A disk replaced by an empty one, safe only when every other
                // node is up and settled and each reading has a second copy.
                let down = run.down_nodes().await;
                let copies = replicator.placement().copies();
                let wipeable = run.nodes.wipeable.as_ref();
                let faulty = run.nodes.faulty.iter().flat_map(|f| f.values());
                let restarting = faulty.clone().any(|n| n.is_restarting());
                if let Some(nodes) =
                    wipeable.filter(|_| down.len() == 1 && copies >= 2 && !restarting)
                    && replicator.is_settled().await.expect("settled")
                {
                    // No fault already armed may take a second node out.
                    for node in faulty {
                        node.take_fault();
                    }
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
            _ => match replicator.rebalance_step().await {
                Ok(_) => run.count("rebalance step"),
                // A fault while copying: the mover tries again later.
                Err(ReplicationError::Storage(_)) if run.fired() > run.fired_before => {
                    run.count("move failed")
                }
                Err(e) => panic!("{}: rebalance: {e}", run.context()),
            },
        }
    }

    // Disarm every fault, bring every node back and let the rebalance
    // finish.
    for node in run.nodes.faulty.iter().flat_map(|f| f.values()) {
        node.take_fault();
        node.set_restarting(false);
    }
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

    // Writes still on their way arrive last, after the clean-up removed
    // what nodes no longer own: those sent under an older placement must
    // be refused, or a node would hold a sensor it does not own.
    for node in run.nodes.faulty.iter().flat_map(|f| f.values()) {
        let (applied, refused) = node.deliver_delayed(replicator.epoch()).await;
        *run.stats.entry("delayed write delivered").or_default() += applied;
        *run.stats.entry("delayed write refused").or_default() += refused;
    }

    let placement = replicator.placement();
    let mut replicas = Vec::new();
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
        let owns = |k: &Key| placement.replicas(&k.sensor).contains(id);
        assert!(
            held.keys().all(owns),
            "seed {seed}: node {id} holds a sensor it does not own"
        );
        check_holds(&run, &held, owns, &format!("node {id}"));
        replicas.push((id.clone(), held));
    }
    // Replicas agree: every pair of nodes holds the same records for the
    // sensors both own, and the same digests, down to versions and tombstones.
    let records: Vec<_> = replicas
        .into_iter()
        .map(|(id, held)| (id, held.into_iter().collect::<Vec<_>>()))
        .collect();
    assert_replicas_agree(&placement, &records, |(k, _)| &k.sensor, "records", seed);
    let mut digests = Vec::new();
    for (id, node) in &run.nodes.all {
        let of_node = node
            .digests(DigestRequest::default())
            .await
            .expect("digests");
        digests.push((id.clone(), of_node));
    }
    assert_replicas_agree(&placement, &digests, |d| &d.sensor, "digests", seed);
    let every_key: BTreeSet<Key> = (0..SENSORS)
        .flat_map(|s| (0..TIMESTAMPS).map(move |t| key(&format!("s{s}"), t)))
        .collect();
    for k in every_key {
        let got = replicator.get(&k).await.expect("get").map(|s| s.value);
        run.check_value(&k, got, "final read of");
    }
    // Enough of everything happened for the run to mean something.
    let mut expected = vec!["put", "delete", "fail", "recover", "configure", "get"];
    if run.faults() {
        expected.push("fault armed");
        let delayed = |what| run.stats.get(what).copied().unwrap_or(0);
        let (delivered, refused) = (
            delayed("delayed write delivered"),
            delayed("delayed write refused"),
        );
        assert!(
            delivered + refused > 0 && delayed("node restarting") > 0,
            "seed {seed}: too few delayed writes or restarts: {:?}",
            run.stats
        );
        assert!(run.fired() > 5, "seed {seed}: too few faults went off");
    }
    for what in expected {
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

/// `held` (a scan of a node or of the cluster) against the model, for the
/// keys `covers` selects: every value one the key may hold, and every key
/// that certainly holds a value present.
fn check_holds(run: &Run, held: &BTreeMap<Key, f64>, covers: impl Fn(&Key) -> bool, what: &str) {
    for (key, value) in held {
        run.check_value(key, Some(*value), what);
    }
    for (key, possible) in &run.model {
        if covers(key) && !possible.contains(&None) {
            assert!(
                held.contains_key(key),
                "{}: {what} lacks {key}, which holds one of {possible:?}",
                run.context()
            );
        }
    }
}

/// Every two nodes hold equal `what` (records, digests) for the sensors
/// both own under `placement`.
fn assert_replicas_agree<T: PartialEq + std::fmt::Debug>(
    placement: &Placement,
    held: &[(NodeId, Vec<T>)],
    sensor_of: impl Fn(&T) -> &SensorId,
    what: &str,
    seed: u64,
) {
    for (a, held_a) in held {
        for (b, held_b) in held {
            let both = |item: &&T| {
                let owners = placement.replicas(sensor_of(item));
                owners.contains(a) && owners.contains(b)
            };
            let on_a: Vec<&T> = held_a.iter().filter(both).collect();
            let on_b: Vec<&T> = held_b.iter().filter(both).collect();
            assert_eq!(on_a, on_b, "seed {seed}: {what} of {a} and {b} differ");
        }
    }
}
