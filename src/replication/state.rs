//! The cluster's state: each node's status (and why it is down), the
//! placements data is stored and read by, and rebalance progress; and the
//! two locks in front of it, whose order [`GuardedState`] keeps.
//!
//! * `state` (a `std::sync::RwLock`) is held only for a few look-ups, never
//!   across an await.
//! * the *gate* (a `tokio::sync::RwLock<()>`) is held shared by every write
//!   from "look at statuses" to "stored and hinted" ([`InFlight`]), and
//!   exclusively by status and placement changes ([`Change`]), so a change
//!   never lands in the middle of a write: a recovering node cannot miss a
//!   hint written by a write that saw it down, and a rebalance never misses
//!   a write made under the old placement.
//!
//! The only ways to change statuses and placements are [`Change::state`]
//! (gate exclusive, then state) and [`InFlight::take_down`] (a write's own
//! failed node, gate shared): the gate is always taken before the state,
//! and nothing changes them without it. Rebalance progress is counters
//! only, changed without the gate. Administrative operations take the
//! replicator's `admin` mutex before either.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::strategy::{Placement, ReplicationSettings};
use crate::reading::SensorId;
use crate::storage::{NodeId, StorageError};

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

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Recovering => "recovering",
        }
    }
}

/// Why a node is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownReason {
    /// An operator took it out (`fail_node`); only `recover_node` brings it
    /// back.
    Admin,
    /// It did not answer (a node process stopped, a network cut).
    Unreachable,
    /// Its storage failed, or came back empty.
    Disk,
}

impl DownReason {
    /// Every reason, for gauges that show each one.
    pub const ALL: [Self; 3] = [Self::Admin, Self::Unreachable, Self::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Unreachable => "unreachable",
            Self::Disk => "disk",
        }
    }

    /// The reason a node whose recovery failed with `error` is down.
    pub fn of_recovery(error: &super::ReplicationError) -> Self {
        match error {
            super::ReplicationError::Storage(storage) => Self::of(storage),
            _ => Self::Unreachable,
        }
    }

    /// The reason a node that failed with `error` is down.
    pub fn of(error: &StorageError) -> Self {
        if error.is_unreachable() {
            Self::Unreachable
        } else {
            Self::Disk
        }
    }
}

/// Statuses and placements.
pub(super) struct ClusterState {
    status: BTreeMap<NodeId, NodeStatus>,
    /// Present exactly for the nodes that are down.
    reasons: BTreeMap<NodeId, DownReason>,
    /// Where data belongs now; writes are counted against its replicas.
    pub current: Arc<Placement>,
    /// While data is being moved: the last placement whose owners hold
    /// everything. Reads use it; writes go to its owners too.
    pub previous: Option<Arc<Placement>>,
    pub rebalance: Option<RebalanceProgress>,
}

impl ClusterState {
    /// Every node of `nodes` up, but those in `down`.
    pub fn new(
        nodes: impl IntoIterator<Item = NodeId>,
        down: &BTreeMap<NodeId, DownReason>,
        current: Arc<Placement>,
        previous: Option<Arc<Placement>>,
        rebalance: Option<RebalanceProgress>,
    ) -> Self {
        let mut state = Self {
            status: BTreeMap::new(),
            reasons: BTreeMap::new(),
            current,
            previous,
            rebalance,
        };
        for id in nodes {
            match down.get(&id) {
                Some(reason) => state.set_down(&id, *reason),
                None => state.set_up(&id),
            }
        }
        state
    }

    /// Where reads of `sensor` go: owners that are guaranteed complete.
    pub fn authoritative(&self) -> &Arc<Placement> {
        self.previous.as_ref().unwrap_or(&self.current)
    }

    pub fn status(&self, node: &NodeId) -> Option<NodeStatus> {
        self.status.get(node).copied()
    }

    pub fn reason(&self, node: &NodeId) -> Option<DownReason> {
        self.reasons.get(node).copied()
    }

    pub fn is_up(&self, node: &NodeId) -> bool {
        self.status(node) == Some(NodeStatus::Up)
    }

    /// Every node with its status, in id order.
    pub fn statuses(&self) -> impl Iterator<Item = (&NodeId, NodeStatus)> {
        self.status.iter().map(|(id, s)| (id, *s))
    }

    /// The nodes down, with why: what survives a restart.
    pub fn down(&self) -> BTreeMap<NodeId, DownReason> {
        self.reasons.clone()
    }

    pub fn set_up(&mut self, node: &NodeId) {
        self.status.insert(node.clone(), NodeStatus::Up);
        self.reasons.remove(node);
    }

    pub fn set_recovering(&mut self, node: &NodeId) {
        self.status.insert(node.clone(), NodeStatus::Recovering);
        self.reasons.remove(node);
    }

    pub fn set_down(&mut self, node: &NodeId, reason: DownReason) {
        self.status.insert(node.clone(), NodeStatus::Down);
        self.reasons.insert(node.clone(), reason);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebalancePhase {
    /// Copying sensors to their new owners.
    Moving,
    /// Some node involved is not up; the move resumes when it is recovered.
    WaitingForNodes,
    /// Removing copies from nodes that no longer own them.
    CleaningUp,
}

#[derive(Debug, Clone, Serialize)]
pub struct RebalanceProgress {
    pub from: ReplicationSettings,
    pub to: ReplicationSettings,
    pub phase: RebalancePhase,
    pub sensors_total: u64,
    pub sensors_moved: u64,
    pub records_copied: u64,
}

impl RebalanceProgress {
    pub(super) fn new(from: &Placement, to: &Placement) -> Self {
        Self {
            from: from.settings(),
            to: to.settings(),
            phase: RebalancePhase::Moving,
            sensors_total: 0,
            sensors_moved: 0,
            records_copied: 0,
        }
    }
}

/// [`ClusterState`] behind the gate: see the module docs for the order.
pub(super) struct GuardedState {
    gate: tokio::sync::RwLock<()>,
    state: RwLock<ClusterState>,
}

impl GuardedState {
    pub fn new(state: ClusterState) -> Self {
        Self {
            gate: tokio::sync::RwLock::new(()),
            state: RwLock::new(state),
        }
    }

    /// For look-ups; never held across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held by a write from planning until it is stored and hinted.
    pub async fn write_in_flight(&self) -> InFlight<'_> {
        InFlight {
            _gate: self.gate.read().await,
            state: &self.state,
        }
    }

    /// Waits until no write is in flight and keeps new ones out: the only
    /// way to change statuses and placements.
    pub async fn change(&self) -> Change<'_> {
        Change {
            _gate: self.gate.write().await,
            state: &self.state,
        }
    }

    /// Updates the rebalance progress (counters and phase, which no write
    /// depends on: no gate needed).
    pub fn progress(&self, update: impl FnOnce(&mut Option<RebalanceProgress>)) {
        update(&mut self.write().rebalance);
    }

    fn write(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write in flight (the gate held shared).
pub(super) struct InFlight<'a> {
    _gate: tokio::sync::RwLockReadGuard<'a, ()>,
    state: &'a RwLock<ClusterState>,
}

impl InFlight<'_> {
    /// A node failed this write: it goes down at once, so the writes that
    /// follow hint it. A recovery cannot start before this write has hinted
    /// it too, since it needs the gate exclusively.
    pub fn take_down(&self, id: &NodeId, reason: DownReason) {
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_down(id, reason);
    }
}

/// No write in flight and none starting (the gate held exclusively).
pub(super) struct Change<'a> {
    _gate: tokio::sync::RwLockWriteGuard<'a, ()>,
    state: &'a RwLock<ClusterState>,
}

impl Change<'_> {
    /// The state, to change; never held across an await.
    pub fn state(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}
