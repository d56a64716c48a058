//! The replicator: writes to a quorum of replicas, reads from live replicas,
//! and owns the cluster's state (node statuses and placements).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::future::join_all;
use serde::Serialize;
use tokio::sync::Notify;

use super::meta::MetaStore;
use super::rebalance::RebalanceProgress;
use super::strategy::{Placement, PlacementSpec};
use super::{ReplicationError, ReplicationResult};
use crate::reading::{Key, Reading, Sample, SensorId};
use crate::storage::{NodeId, Record, Scan, StorageError, StorageNode, StorageResult};
use crate::version::{Clock, Version};

pub(super) const PLACEMENT: &str = "placement";
pub(super) const PREVIOUS_PLACEMENT: &str = "previous_placement";
pub(super) const CLEANUP_PENDING: &str = "cleanup_pending";
const DOWN_NODES: &str = "down_nodes";

/// One point read in this many asks every replica and repairs stale ones.
pub const READ_REPAIR_EVERY: u64 = 16;

/// Largest page fetched from one node while merging a scan over all nodes.
const MERGE_PAGE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Serves reads and writes.
    Up,
    /// Out of service: no reads or writes; writes meant for it become hints.
    Down,
    /// Being repaired: receives writes, serves no reads.
    Recovering,
}

/// One node's line in `/nodes_status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: NodeId,
    pub status: NodeStatus,
    /// Live measurements stored (`None` if the node could not be asked).
    pub keys: Option<u64>,
    pub tombstones: Option<u64>,
    pub hints_pending: u64,
}

/// Statuses and placements: see the module docs of `replication` for why
/// this sits behind a `std::sync::RwLock`.
pub(super) struct ClusterState {
    pub status: BTreeMap<NodeId, NodeStatus>,
    /// Where data belongs now; writes are counted against its replicas.
    pub current: Arc<Placement>,
    /// While data is being moved: the last placement whose owners hold
    /// everything. Reads use it; writes go to its owners too.
    pub previous: Option<Arc<Placement>>,
    pub rebalance: Option<RebalanceProgress>,
}

impl ClusterState {
    /// Where reads of `sensor` go: owners that are guaranteed complete.
    fn authoritative(&self) -> &Arc<Placement> {
        self.previous.as_ref().unwrap_or(&self.current)
    }

    pub fn is_up(&self, node: &NodeId) -> bool {
        self.status.get(node) == Some(&NodeStatus::Up)
    }

    /// Every node that should hold `sensor` now: current and, during a
    /// move, previous owners.
    pub fn holders(&self, sensor: &SensorId) -> Vec<NodeId> {
        let mut holders = self.current.replicas(sensor);
        if let Some(previous) = &self.previous {
            for node in previous.replicas(sensor) {
                if !holders.contains(&node) {
                    holders.push(node);
                }
            }
        }
        holders
    }
}

/// Where one write batch goes.
#[derive(Default)]
struct WritePlan {
    stores: BTreeMap<NodeId, Vec<Record>>,
    hints: BTreeMap<NodeId, Vec<Record>>,
    /// The distinct sets of live real replicas, each of which must reach the quorum.
    voter_sets: BTreeSet<Vec<NodeId>>,
}

pub struct Replicator {
    pub(super) nodes: BTreeMap<NodeId, Arc<dyn StorageNode>>,
    pub(super) state: RwLock<ClusterState>,
    pub(super) gate: tokio::sync::RwLock<()>,
    /// Serializes administrative operations (recover, configure, finishing a
    /// rebalance) so two of them never interleave their steps.
    pub(super) admin: tokio::sync::Mutex<()>,
    pub(super) meta: MetaStore,
    pub(super) clock: Clock,
    pub(super) mover_wakeup: Arc<Notify>,
    closed: AtomicBool,
    /// Point reads served, to pick the ones that repair.
    reads: AtomicU64,
    /// Update and delete read a key, then write it: each holds its key's
    /// stripe from the read to the write, so they are decided against the
    /// same version and an update never brings back a key deleted in
    /// between. (One service coordinates writes; see the crate docs.)
    key_stripes: Vec<tokio::sync::Mutex<()>>,
}

/// Stripes of [`Replicator::key_stripes`].
const KEY_STRIPES: usize = 256;

impl Replicator {
    /// Opens the cluster: the placement persisted by an earlier run wins over
    /// `configured` (SPEC §6), except for the node list, which comes from the
    /// configuration; a changed node list starts a rebalance. `open_node`
    /// opens a storage node by id.
    pub async fn open(
        meta: MetaStore,
        configured: PlacementSpec,
        open_node: impl Fn(&NodeId) -> StorageResult<Arc<dyn StorageNode>>,
    ) -> ReplicationResult<Arc<Self>> {
        let stored: Option<PlacementSpec> = meta.setting(PLACEMENT).await?;
        let mut previous: Option<PlacementSpec> = meta.setting(PREVIOUS_PLACEMENT).await?;
        let current = match stored {
            None => configured,
            Some(stored) if stored.nodes == configured.nodes => stored,
            Some(stored) => {
                tracing::info!(from = ?stored.nodes, to = ?configured.nodes, "storage nodes changed: rebalancing");
                let settings = stored.settings;
                previous = previous.or(Some(stored));
                PlacementSpec {
                    settings,
                    nodes: configured.nodes,
                }
            }
        };
        let current = Arc::new(Placement::from_spec(&current)?);
        let previous = previous
            .map(|p| Placement::from_spec(&p).map(Arc::new))
            .transpose()?
            .filter(|p| !p.same_layout(&current));

        let mut nodes = BTreeMap::new();
        for id in current
            .nodes()
            .iter()
            .chain(previous.iter().flat_map(|p| p.nodes()))
        {
            if !nodes.contains_key(id) {
                nodes.insert(id.clone(), open_node(id)?);
            }
        }
        let down: Vec<NodeId> = meta.setting(DOWN_NODES).await?.unwrap_or_default();
        let status = nodes
            .keys()
            .map(|id| {
                let s = if down.contains(id) {
                    NodeStatus::Down
                } else {
                    NodeStatus::Up
                };
                (id.clone(), s)
            })
            .collect();

        let clock = Clock::new();
        clock.observe(meta.max_version().await?);
        for node in nodes.values() {
            clock.observe(node.stats().await?.max_version);
        }

        meta.put_setting(PLACEMENT, &current.spec()).await?;
        match &previous {
            Some(p) => meta.put_setting(PREVIOUS_PLACEMENT, &p.spec()).await?,
            None => meta.delete_setting(PREVIOUS_PLACEMENT).await?,
        }
        let rebalance = previous
            .as_ref()
            .map(|p| RebalanceProgress::new(p, &current));
        let replicator = Arc::new(Self {
            nodes,
            state: RwLock::new(ClusterState {
                status,
                current,
                previous,
                rebalance,
            }),
            gate: tokio::sync::RwLock::new(()),
            admin: tokio::sync::Mutex::new(()),
            meta,
            clock,
            mover_wakeup: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            reads: AtomicU64::new(1),
            key_stripes: (0..KEY_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        Ok(replicator)
    }

    /// Opens a cluster of SQLite nodes under `data_dir` (one file per node,
    /// plus `cluster.sqlite3` for hints and settings).
    pub async fn open_sqlite(
        data_dir: &std::path::Path,
        configured: PlacementSpec,
        synchronous: crate::storage::sqlite::Synchronous,
    ) -> ReplicationResult<Arc<Self>> {
        let meta = MetaStore::open(data_dir, synchronous)?;
        Self::open(meta, configured, |id| {
            let node = crate::storage::sqlite::SqliteNode::open(id.clone(), data_dir, synchronous)?;
            Ok(Arc::new(node) as Arc<dyn StorageNode>)
        })
        .await
    }

    /// Starts background work: the rebalance mover.
    pub fn start_background(self: &Arc<Self>) {
        super::rebalance::spawn_mover(self);
    }

    pub(super) fn meta_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(super) fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn state_mut(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn node(&self, id: &NodeId) -> ReplicationResult<&Arc<dyn StorageNode>> {
        self.nodes
            .get(id)
            .ok_or_else(|| ReplicationError::UnknownNode(id.to_string()))
    }

    /// Looks a node up by the id a client typed.
    pub fn node_id(&self, text: &str) -> ReplicationResult<NodeId> {
        let id: NodeId = text
            .parse()
            .map_err(|_| ReplicationError::UnknownNode(text.to_string()))?;
        self.node(&id)?;
        Ok(id)
    }

    pub fn placement(&self) -> Arc<Placement> {
        self.state().current.clone()
    }

    /// The nodes that hold (or would hold) `key`, in preference order.
    pub fn replicas_for(&self, key: &Key) -> Vec<NodeId> {
        self.state().current.replicas(&key.sensor)
    }

    pub(super) async fn persist_down_nodes(&self) -> ReplicationResult<()> {
        let down: Vec<NodeId> = self
            .state()
            .status
            .iter()
            .filter(|(_, s)| **s == NodeStatus::Down)
            .map(|(id, _)| id.clone())
            .collect();
        self.meta.put_setting(DOWN_NODES, &down).await?;
        Ok(())
    }

    // ----- writes -------------------------------------------------------

    /// Stores new readings, each with a fresh version.
    pub async fn put(&self, readings: Vec<Reading>) -> ReplicationResult<()> {
        let first = self.clock.next_batch(readings.len() as u64);
        let records = readings
            .into_iter()
            .enumerate()
            .map(|(i, r)| Record {
                key: r.key,
                version: Version(first.0 + i as u64),
                sample: Some(r.sample),
            })
            .collect();
        self.write(records).await
    }

    /// Replaces an existing measurement's value; `false` if there is none.
    /// A unit of `None` keeps the stored unit.
    pub async fn update(
        &self,
        key: &Key,
        value: f64,
        unit: Option<crate::reading::Unit>,
    ) -> ReplicationResult<bool> {
        let _decided = self.stripe(key).lock().await;
        let Some(existing) = self.get(key).await? else {
            return Ok(false);
        };
        let unit = unit.or(existing.unit);
        let record = Record {
            key: key.clone(),
            version: self.clock.next(),
            sample: Some(Sample { value, unit }),
        };
        self.write(vec![record]).await?;
        Ok(true)
    }

    fn stripe(&self, key: &Key) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        &self.key_stripes[(hash as usize) % KEY_STRIPES]
    }

    /// Deletes a measurement (a versioned tombstone); `false` if there is none.
    pub async fn delete(&self, key: &Key) -> ReplicationResult<bool> {
        let _decided = self.stripe(key).lock().await;
        if self.get(key).await?.is_none() {
            return Ok(false);
        }
        let tombstone = Record {
            key: key.clone(),
            version: self.clock.next(),
            sample: None,
        };
        self.write(vec![tombstone]).await?;
        Ok(true)
    }

    /// Writes versioned records to their replicas. Returns once every record
    /// is durable on `write_quorum` of its live replicas (and hinted for the
    /// replicas that are down); fails before writing anything if some record
    /// has too few live replicas.
    pub async fn write(&self, records: Vec<Record>) -> ReplicationResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let _gate = self.gate.read().await;
        let (plan, quorum) = self.plan_write(records)?;

        let stores = plan.stores.into_iter().map(|(id, records)| {
            let node = self.nodes[&id].clone();
            async move {
                let result = node.apply(records.clone()).await;
                (id, records, result)
            }
        });
        let hints = plan
            .hints
            .iter()
            .map(|(id, records)| self.meta.add_hints(id, records.clone()));
        let (stored, hinted) = futures::join!(join_all(stores), join_all(hints));
        hinted.into_iter().collect::<StorageResult<Vec<()>>>()?;

        let mut succeeded = BTreeSet::new();
        for (id, records, result) in stored {
            match result {
                Ok(_) => {
                    succeeded.insert(id);
                }
                Err(error) => self.take_out_after_error(&id, records, error).await?,
            }
        }
        for voters in &plan.voter_sets {
            let available = voters.iter().filter(|v| succeeded.contains(*v)).count();
            if available < quorum {
                return Err(ReplicationError::Unavailable {
                    required: quorum,
                    available,
                });
            }
        }
        Ok(())
    }

    fn plan_write(&self, mut records: Vec<Record>) -> ReplicationResult<(WritePlan, usize)> {
        let state = self.state();
        let quorum = state.current.settings().write_quorum;
        let mut plan = WritePlan::default();
        // In key order each sensor's records are one run, routed once (the
        // route depends only on the sensor and the state, fixed while
        // planning), and every node receives its records in the order it
        // writes them.
        records.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        for run in records.chunk_by(|a, b| a.key.sensor == b.key.sensor) {
            let sensor = &run[0].key.sensor;
            let voters: Vec<NodeId> = state
                .current
                .replicas(sensor)
                .into_iter()
                .filter(|n| state.is_up(n))
                .collect();
            if voters.len() < quorum {
                return Err(ReplicationError::Unavailable {
                    required: quorum,
                    available: voters.len(),
                });
            }
            plan.voter_sets.insert(voters);
            // Previous owners keep receiving writes during a move so they
            // stay complete (the ones that are down through hints, like
            // owners: repair alone could not help them if the nodes that
            // took the write were down by the time they recover).
            for node in state.holders(sensor) {
                let destination = match state.status[&node] {
                    NodeStatus::Down => &mut plan.hints,
                    NodeStatus::Up | NodeStatus::Recovering => &mut plan.stores,
                };
                destination.entry(node).or_default().extend_from_slice(run);
            }
        }
        Ok((plan, quorum))
    }

    /// A node failed to store a write: it is taken out of service (it may now
    /// be missing data, so it must not serve reads until recovered) and the
    /// write is kept as a hint for it.
    async fn take_out_after_error(
        &self,
        id: &NodeId,
        records: Vec<Record>,
        error: StorageError,
    ) -> ReplicationResult<()> {
        tracing::error!(node = %id, %error, "storage node failed a write: taking it out of service until it is recovered");
        self.state_mut().status.insert(id.clone(), NodeStatus::Down);
        self.persist_down_nodes().await?;
        self.meta.add_hints(id, records).await?;
        Ok(())
    }

    // ----- reads --------------------------------------------------------

    /// The live replicas that are complete for `sensor`, in preference order.
    fn readers_for(
        &self,
        sensor: &SensorId,
    ) -> ReplicationResult<Vec<(NodeId, Arc<dyn StorageNode>)>> {
        let state = self.state();
        let readers: Vec<_> = state
            .authoritative()
            .replicas(sensor)
            .into_iter()
            .filter(|n| state.is_up(n))
            .map(|n| {
                let node = self.nodes[&n].clone();
                (n, node)
            })
            .collect();
        if readers.is_empty() {
            return Err(ReplicationError::Unavailable {
                required: 1,
                available: 0,
            });
        }
        Ok(readers)
    }

    /// The measurement stored under `key`, if any, from the first live
    /// replica in preference order (the next one if it fails).
    ///
    /// Any live authoritative replica holds every acknowledged write
    /// (recovery finishes before a node serves reads, and a node that fails
    /// a write is taken out), so one replica answers correctly; replicas can
    /// only disagree about a write that was never acknowledged, cut short by
    /// a crash. One read in [`READ_REPAIR_EVERY`] asks every replica instead
    /// and repairs the stale ones, so such leftovers converge too (recovery
    /// repairs everything it compares).
    pub async fn get(&self, key: &Key) -> ReplicationResult<Option<Sample>> {
        if self
            .reads
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(READ_REPAIR_EVERY)
        {
            return self.get_repairing(key).await;
        }
        let record = self
            .ask_first_live_replica(&key.sensor, |node| async move { node.get(key).await })
            .await?;
        Ok(record.and_then(|r| r.sample))
    }

    /// Asks the live replicas of `sensor` in preference order until one
    /// answers; unavailable if none is up or all fail.
    async fn ask_first_live_replica<'a, T, F, Fut>(
        &self,
        sensor: &SensorId,
        mut ask: F,
    ) -> ReplicationResult<T>
    where
        F: FnMut(Arc<dyn StorageNode>) -> Fut,
        Fut: std::future::Future<Output = StorageResult<T>> + 'a,
    {
        let mut last_error = None;
        for (id, node) in self.readers_for(sensor)? {
            match ask(node).await {
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    tracing::warn!(node = %id, %sensor, %error, "read failed; trying the next replica");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .map(ReplicationError::from)
            .unwrap_or(ReplicationError::Unavailable {
                required: 1,
                available: 0,
            }))
    }

    /// Reads `key` from every live replica, answers the highest version and
    /// repairs replicas that returned an older version or nothing (in the
    /// background).
    pub async fn get_repairing(&self, key: &Key) -> ReplicationResult<Option<Sample>> {
        let readers = self.readers_for(&key.sensor)?;
        let answers = join_all(readers.iter().map(|(_, node)| node.get(key))).await;
        let mut newest: Option<Record> = None;
        let mut last_error = None;
        for answer in &answers {
            match answer {
                Ok(Some(record)) => {
                    newest = Some(match newest {
                        Some(current) => Record::newest(current, record.clone()),
                        None => record.clone(),
                    })
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if answers.iter().all(Result::is_err) {
            tracing::warn!(%key, error = ?last_error, "every replica failed a read");
            return Err(ReplicationError::Unavailable {
                required: 1,
                available: 0,
            });
        }
        if let Some(newest) = &newest {
            for ((id, node), answer) in readers.iter().zip(&answers) {
                let stale = match answer {
                    Ok(Some(r)) => r.version < newest.version,
                    Ok(None) => true,
                    Err(_) => false,
                };
                if stale {
                    tracing::debug!(node = %id, %key, "read repair");
                    let node = node.clone();
                    let record = newest.clone();
                    tokio::spawn(async move {
                        if let Err(error) = node.apply(vec![record]).await {
                            tracing::warn!(%error, "read repair failed");
                        }
                    });
                }
            }
        }
        Ok(newest.and_then(|r| r.sample))
    }

    /// Live records in key order. With a sensor, from its first live replica
    /// (falling back to the next); without, merged from every node.
    pub async fn scan(&self, scan: Scan) -> ReplicationResult<Vec<Record>> {
        match scan.sensor.clone() {
            Some(sensor) => self.scan_sensor(&sensor, scan).await,
            None => self.scan_all(scan).await,
        }
    }

    async fn scan_sensor(&self, sensor: &SensorId, scan: Scan) -> ReplicationResult<Vec<Record>> {
        let scan = Scan {
            tombstones: false,
            ..scan
        };
        self.ask_first_live_replica(sensor, |node| {
            let scan = scan.clone();
            async move { node.scan(scan).await }
        })
        .await
    }

    /// A scan over all sensors: each live node is read page by page and the
    /// pages are merged by key, the highest version winning, counting a copy
    /// only from a node that is authoritative for its sensor.
    async fn scan_all(&self, scan: Scan) -> ReplicationResult<Vec<Record>> {
        let (placement, live) = {
            let state = self.state();
            let placement = state.authoritative().clone();
            for set in placement.replica_sets() {
                if !set.iter().any(|n| state.is_up(n)) {
                    return Err(ReplicationError::Unavailable {
                        required: 1,
                        available: 0,
                    });
                }
            }
            let live: Vec<(NodeId, Arc<dyn StorageNode>)> = self
                .nodes
                .iter()
                .filter(|(id, _)| state.is_up(id))
                .map(|(id, n)| (id.clone(), n.clone()))
                .collect();
            (placement, live)
        };
        let page = scan.limit.saturating_add(1).min(MERGE_PAGE);
        let mut owners: HashMap<SensorId, Vec<NodeId>> = HashMap::new();
        let mut out = Vec::new();
        let mut cursor = scan.after.clone();
        loop {
            let request = Scan {
                after: cursor.clone(),
                limit: page,
                tombstones: true,
                ..scan.clone()
            };
            let pages =
                futures::future::try_join_all(live.iter().map(|(_, n)| n.scan(request.clone())))
                    .await?;
            // Past the end of a full page, that node may hold keys not yet seen.
            let bound = pages
                .iter()
                .filter(|p| p.len() == page)
                .filter_map(|p| p.last().map(|r| r.key.clone()))
                .min();
            let mut merged: BTreeMap<Key, Record> = BTreeMap::new();
            for ((id, _), records) in live.iter().zip(pages) {
                for record in records {
                    if bound.as_ref().is_some_and(|b| record.key > *b) {
                        break;
                    }
                    let sensor_owners = owners
                        .entry(record.key.sensor.clone())
                        .or_insert_with(|| placement.replicas(&record.key.sensor));
                    if !sensor_owners.contains(id) {
                        continue;
                    }
                    match merged.remove(&record.key) {
                        Some(other) => {
                            merged.insert(record.key.clone(), Record::newest(other, record))
                        }
                        None => merged.insert(record.key.clone(), record),
                    };
                }
            }
            for record in merged.into_values().filter(|r| !r.is_tombstone()) {
                out.push(record);
                if out.len() == scan.limit {
                    return Ok(out);
                }
            }
            match bound {
                Some(bound) => cursor = Some(bound),
                None => return Ok(out),
            }
        }
    }

    // ----- status -------------------------------------------------------

    /// Every node's status and pending hints, without counting its keys
    /// (`keys` and `tombstones` are `None`): cheap, for health checks.
    pub fn node_states(&self) -> Vec<NodeReport> {
        self.state()
            .status
            .iter()
            .map(|(id, status)| NodeReport {
                id: id.clone(),
                status: *status,
                keys: None,
                tombstones: None,
                hints_pending: self.meta.hints_pending(id),
            })
            .collect()
    }

    /// [`Self::node_states`] with keys and tombstones counted, which reads
    /// every record of every node.
    pub async fn node_reports(&self) -> Vec<NodeReport> {
        let mut reports = self.node_states();
        let stats = join_all(reports.iter().map(|r| self.nodes[&r.id].stats())).await;
        for (report, stats) in reports.iter_mut().zip(stats) {
            let stats = stats.ok();
            report.keys = stats.map(|s| s.live_keys);
            report.tombstones = stats.map(|s| s.tombstones);
        }
        reports
    }

    pub fn rebalance_progress(&self) -> Option<RebalanceProgress> {
        self.state().rebalance.clone()
    }

    /// Stops background work, lets pending writes finish and closes every
    /// store. The replicator answers nothing afterwards.
    pub async fn close(&self) {
        let _gate = self.gate.write().await;
        super::rebalance::stop_mover(self);
        for (id, node) in &self.nodes {
            if let Err(error) = node.close().await {
                tracing::warn!(node = %id, %error, "closing storage node failed");
            }
        }
        self.meta.close().await;
    }
}
