//! The replicator: writes to a quorum of replicas, reads from live replicas,
//! and owns the cluster's state (node statuses and placements).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::{Instant, SystemTime};

use futures::future::join_all;
use serde::Serialize;
use tokio::sync::Notify;

use super::meta::MetaStore;
use super::meta::keys::{
    CLOCK_HIGH_WATER, DOWN_NODES, EPOCH, INCARNATIONS, PLACEMENT, PREVIOUS_PLACEMENT,
};
use super::state::{
    ClusterState, DownReason, GuardedState, InFlight, NodeStatus, RebalanceProgress,
};
use super::strategy::{Placement, PlacementSpec};
use super::{ReplicationError, ReplicationResult};
use crate::reading::{Key, Reading, Sample, SensorId};
use crate::storage::{
    Incarnation, NodeId, Pages, Record, Scan, StorageError, StorageNode, StorageResult,
};
use crate::version::{Clock, Version};

/// How far ahead of the last issued version the durable high water is
/// kept at least (see [`Replicator::persist_clock_high_water`]).
pub(super) const MIN_CLOCK_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// The nodes persisted as down: a list of ids (admin downs) in builds
/// before reasons existed, a map since.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum PersistedDown {
    Reasons(BTreeMap<NodeId, DownReason>),
    Ids(Vec<NodeId>),
}

impl PersistedDown {
    fn into_reasons(self) -> BTreeMap<NodeId, DownReason> {
        match self {
            Self::Reasons(reasons) => reasons,
            Self::Ids(ids) => ids.into_iter().map(|id| (id, DownReason::Admin)).collect(),
        }
    }
}

/// One point read in this many asks every replica and repairs stale ones.
pub const READ_REPAIR_EVERY: u64 = 16;

/// Largest page fetched from one node while merging a scan over all nodes.
const MERGE_PAGE: usize = 10_000;

/// One node's line in `/nodes_status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: NodeId,
    pub status: NodeStatus,
    /// Why it is down; `None` unless it is.
    pub reason: Option<DownReason>,
    /// Its directory, or the URL of its node process.
    pub address: String,
    /// When it last answered a probe (RFC 3339, UTC); `None` before the
    /// first answer since the service started.
    pub last_seen: Option<String>,
    /// Live measurements stored (`None` if the node could not be asked).
    pub keys: Option<u64>,
    pub tombstones: Option<u64>,
    pub hints_pending: u64,
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
    /// Each node's `energyguard_node_commit_duration_seconds`, made once:
    /// every write records into it.
    commit_times: BTreeMap<NodeId, metrics::Histogram>,
    /// Statuses and placements behind the write gate (see `state.rs`).
    pub(super) cluster: GuardedState,
    /// Serializes administrative operations (recover, configure, finishing a
    /// rebalance) so two of them never interleave their steps. Taken before
    /// the gate, never while holding it.
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
    /// When each node last answered a probe.
    seen: Mutex<BTreeMap<NodeId, SystemTime>>,
    /// The settings epoch, shared with the clients of node processes, which
    /// send it with every call.
    epoch: Arc<AtomicU64>,
    /// The clock's durable high water, as last written.
    clock_high_water: AtomicU64,
    /// The incarnation each node's storage is known by (durable in meta).
    incarnations: tokio::sync::Mutex<BTreeMap<NodeId, Incarnation>>,
}

/// Stripes of [`Replicator::key_stripes`].
const KEY_STRIPES: usize = 256;

impl Replicator {
    /// Opens the cluster: the placement persisted by an earlier run wins over
    /// `configured`, except for the node list, which comes from the
    /// configuration; a changed node list starts a rebalance. `open_node`
    /// opens a storage node by id.
    pub async fn open(
        meta: MetaStore,
        configured: PlacementSpec,
        open_node: impl Fn(&NodeId) -> StorageResult<Arc<dyn StorageNode>>,
    ) -> ReplicationResult<Arc<Self>> {
        let epoch = Arc::new(AtomicU64::new(0));
        Self::open_with_epoch(meta, configured, epoch, open_node).await
    }

    /// [`Self::open`], keeping the settings epoch in `epoch`, a cell the
    /// clients of node processes already hold (they send it with every call).
    pub async fn open_with_epoch(
        meta: MetaStore,
        configured: PlacementSpec,
        epoch: Arc<AtomicU64>,
        open_node: impl Fn(&NodeId) -> StorageResult<Arc<dyn StorageNode>>,
    ) -> ReplicationResult<Arc<Self>> {
        let stored: Option<PlacementSpec> = meta.setting(PLACEMENT).await?;
        let mut previous: Option<PlacementSpec> = meta.setting(PREVIOUS_PLACEMENT).await?;
        let changed = stored.as_ref().is_some_and(|s| s.nodes != configured.nodes);
        let current = match stored {
            None => configured,
            Some(stored) if stored.nodes == configured.nodes => stored,
            Some(stored) => {
                tracing::info!(event = "rebalance_started", from = ?stored.nodes, to = ?configured.nodes,
                    "storage nodes changed: rebalancing");
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

        let stored_epoch: u64 = meta.setting(EPOCH).await?.unwrap_or(1);
        let new_epoch = if changed {
            stored_epoch + 1
        } else {
            stored_epoch
        };
        meta.put_setting(EPOCH, &new_epoch).await?;
        epoch.store(new_epoch, Ordering::Release);

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
        let incarnations: BTreeMap<NodeId, Incarnation> =
            meta.setting(INCARNATIONS).await?.unwrap_or_default();
        let mut down: BTreeMap<NodeId, DownReason> = meta
            .setting::<PersistedDown>(DOWN_NODES)
            .await?
            .map(PersistedDown::into_reasons)
            .unwrap_or_default();

        // Versions must stay above every version issued before: those on
        // the nodes it reaches, in its hints, and its own durable high water
        // (which covers the nodes it cannot reach now).
        let clock = Clock::new();
        clock.observe(meta.max_version().await?);
        clock.observe(Version(meta.setting(CLOCK_HIGH_WATER).await?.unwrap_or(0)));
        for (id, node) in &nodes {
            match node.stats().await {
                Ok(stats) => clock.observe(stats.max_version),
                Err(error) => {
                    let reason = DownReason::of(&error);
                    tracing::warn!(node = %id, address = %node.address(), %error,
                        reason = reason.as_str(), "storage node not available at start: down until it answers");
                    down.entry(id.clone()).or_insert(reason);
                }
            }
        }

        meta.put_setting(PLACEMENT, &current.spec()).await?;
        match &previous {
            Some(p) => meta.put_setting(PREVIOUS_PLACEMENT, &p.spec()).await?,
            None => meta.delete_setting(PREVIOUS_PLACEMENT).await?,
        }
        meta.put_setting(DOWN_NODES, &down).await?;
        let rebalance = previous
            .as_ref()
            .map(|p| RebalanceProgress::new(p, &current));
        let state = ClusterState::new(nodes.keys().cloned(), &down, current, previous, rebalance);
        let commit_times = nodes
            .keys()
            .map(|id| {
                let histogram = metrics::histogram!(
                    "energyguard_node_commit_duration_seconds",
                    "node" => id.to_string()
                );
                (id.clone(), histogram)
            })
            .collect();
        let replicator = Arc::new(Self {
            nodes,
            commit_times,
            cluster: GuardedState::new(state),
            admin: tokio::sync::Mutex::new(()),
            meta,
            clock,
            mover_wakeup: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            reads: AtomicU64::new(1),
            key_stripes: (0..KEY_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            seen: Mutex::new(BTreeMap::new()),
            epoch,
            clock_high_water: AtomicU64::new(0),
            incarnations: tokio::sync::Mutex::new(incarnations),
        });
        replicator.persist_clock_high_water(MIN_CLOCK_LEASE).await?;
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
        self.spawn_mover();
    }

    /// The settings epoch: it grows with every change of where writes go
    /// (a new placement, the end of a rebalance), and node processes refuse
    /// a call whose epoch is older than one they have seen.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Moves to the next settings epoch, durably, before a new placement is
    /// used.
    pub(super) async fn next_epoch(&self) -> ReplicationResult<()> {
        let next = self.epoch() + 1;
        self.meta.put_setting(EPOCH, &next).await?;
        self.epoch.store(next, Ordering::Release);
        Ok(())
    }

    /// Keeps a durable version `lease` above the last one issued, so a
    /// restart never issues a version below one already issued, even when
    /// the node that holds it is unreachable then (versions follow the wall
    /// clock, so within `lease` of real time the clock cannot pass it).
    /// Written at open and whenever less than half the lease is left; the
    /// health task checks every round, and its lease is three rounds at the
    /// longest, so the lease never runs out between two checks.
    pub(super) async fn persist_clock_high_water(
        &self,
        lease: std::time::Duration,
    ) -> StorageResult<()> {
        let ahead = |d: std::time::Duration| (d.as_millis() as u64) << crate::version::LOGICAL_BITS;
        let last = self.clock.last().0;
        let persisted = self.clock_high_water.load(Ordering::Acquire);
        if last + ahead(lease / 2) <= persisted {
            return Ok(());
        }
        let high_water = last + ahead(lease);
        self.meta.put_setting(CLOCK_HIGH_WATER, &high_water).await?;
        self.clock_high_water.store(high_water, Ordering::Release);
        Ok(())
    }

    /// Every node with its handle.
    pub(super) fn node_handles(&self) -> Vec<(NodeId, Arc<dyn StorageNode>)> {
        self.nodes
            .iter()
            .map(|(id, node)| (id.clone(), node.clone()))
            .collect()
    }

    /// A node's status and, when down, why.
    pub fn status_of(&self, id: &NodeId) -> (NodeStatus, Option<DownReason>) {
        let state = self.state();
        (
            state.status(id).unwrap_or(NodeStatus::Down),
            state.reason(id),
        )
    }

    /// Takes a node out after it failed, unless it is down already: writes
    /// meant for it become hints from now on.
    pub(super) async fn mark_down(&self, id: &NodeId, reason: DownReason) {
        {
            let change = self.cluster.change().await;
            let mut state = change.state();
            if state.status(id) == Some(NodeStatus::Down) {
                return;
            }
            state.set_down(id, reason);
        }
        if let Err(error) = self.persist_down_nodes().await {
            tracing::error!(node = %id, %error, "could not record the node as down");
        }
    }

    /// A node answered a probe at `when`.
    pub(super) fn saw(&self, id: &NodeId, when: SystemTime) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), when);
    }

    /// The incarnation `id` was last known by, if any.
    pub(super) async fn known_incarnation(&self, id: &NodeId) -> Option<Incarnation> {
        self.incarnations.lock().await.get(id).cloned()
    }

    /// Records the incarnation a node is known by: after its first answer,
    /// or once a recovery has refilled a new one. One lock keeps the map and
    /// its durable copy in step.
    pub(super) async fn remember_incarnation(
        &self,
        id: &NodeId,
        incarnation: &Incarnation,
    ) -> StorageResult<()> {
        let mut known = self.incarnations.lock().await;
        if known.get(id) == Some(incarnation) {
            return Ok(());
        }
        let mut updated = known.clone();
        updated.insert(id.clone(), incarnation.clone());
        self.meta.put_setting(INCARNATIONS, &updated).await?;
        *known = updated;
        Ok(())
    }

    pub(super) fn meta_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The cluster state, for look-ups.
    pub(super) fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.cluster.read()
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
        let down = self.state().down();
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
        let in_flight = self.cluster.write_in_flight().await;
        let (plan, quorum) = self.plan_write(records)?;

        let stores = plan.stores.into_iter().map(|(id, records)| {
            let node = self.nodes[&id].clone();
            let commit_time = self.commit_times[&id].clone();
            async move {
                let started = Instant::now();
                let result = node.apply(records.clone()).await;
                commit_time.record(started.elapsed());
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
                Err(error) => {
                    self.take_out_after_error(&in_flight, &id, records, error)
                        .await?
                }
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
                let destination = match state.status(&node) {
                    Some(NodeStatus::Up | NodeStatus::Recovering) => &mut plan.stores,
                    Some(NodeStatus::Down) | None => &mut plan.hints,
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
        in_flight: &InFlight<'_>,
        id: &NodeId,
        records: Vec<Record>,
        error: StorageError,
    ) -> ReplicationResult<()> {
        let reason = DownReason::of(&error);
        tracing::error!(event = "node_down", node = %id, %error, reason = reason.as_str(),
            "storage node failed a write: taking it out of service until it is recovered");
        in_flight.take_down(id, reason);
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

    /// Every live record `scan` admits (`scan.limit` in all), in key order,
    /// read `page_size` at a time (a page in memory at once) and handed to
    /// `visit` a page at a time, until the scan ends or `visit` breaks with
    /// a value, which is answered.
    pub async fn scan_pages<B>(
        &self,
        scan: Scan,
        page_size: usize,
        mut visit: impl FnMut(Vec<Record>) -> ControlFlow<B>,
    ) -> ReplicationResult<Option<B>> {
        let mut pages = Pages::new(scan, page_size);
        while let Some(request) = pages.request() {
            let page = self.scan(request).await?;
            pages.advance(&page);
            if let ControlFlow::Break(value) = visit(page) {
                return Ok(Some(value));
            }
        }
        Ok(None)
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
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let state = self.state();
        state
            .statuses()
            .map(|(id, status)| NodeReport {
                id: id.clone(),
                status,
                reason: state.reason(id),
                address: self.nodes[id].address(),
                last_seen: seen.get(id).map(|when| {
                    chrono::DateTime::<chrono::Utc>::from(*when)
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                }),
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
        let _no_writes = self.cluster.change().await;
        self.stop_mover();
        for (id, node) in &self.nodes {
            if let Err(error) = node.close().await {
                tracing::warn!(node = %id, %error, "closing storage node failed");
            }
        }
        self.meta.close().await;
    }
}
