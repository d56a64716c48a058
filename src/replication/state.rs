//! The cluster's state: each node's status (and why it is down), and the
//! placements data is stored and read by.
//!
//! It lives in one `std::sync::RwLock` in the replicator, held only for a
//! few look-ups and never across an await; changes of status go through
//! `set_up`, `set_recovering` and `set_down`, so a node's reason is present
//! exactly while it is down.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rebalance::RebalanceProgress;
use super::strategy::Placement;
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
