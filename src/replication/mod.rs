//! Replication: placing readings on storage nodes and keeping the copies
//! right through failures and configuration changes.
//!
//! * [`strategy`] and [`ring`] decide, purely, which nodes hold a sensor
//!   (`full`: every node; `consistent`: a hash ring with virtual nodes).
//! * [`Replicator`] (in `replicator.rs`) fans writes out to a sensor's
//!   replicas and acknowledges once `write_quorum` of them stored it; writes
//!   for nodes that are down become durable hints in [`meta`]. Reads ask the
//!   live replicas, answer the highest version and repair stale copies.
//! * `state.rs`: node statuses (with why a node is down), placements and
//!   rebalance progress, behind the write gate: the one type that decides
//!   who may change them, and in which lock order (see its docs).
//! * `health.rs`: failure detection and automatic recovery, with a backoff
//!   for flapping nodes.
//! * `copy.rs`: copying a sensor between nodes, whole or by differing hour
//!   buckets; used by recovery and rebalancing.
//! * `recovery.rs`: taking a node out (`fail`) and bringing it back
//!   (`recover`: replay its hints, then compare digests with its peers and
//!   copy what differs, so even writes that were never hinted come back).
//! * `rebalance.rs`: a new placement is persisted at once and data moves to
//!   its new owners in the background; until then reads use the old owners,
//!   which stay complete because writes go to old and new owners alike.
//!
//! * [`meta`]: the cluster's own store (hints, settings), apart from every
//!   storage node.
//!
//! Dependencies run one way: `replicator.rs` knows only `state`, `meta` and
//! `strategy`; `recovery`, `rebalance` and `health` add their operations to
//! [`Replicator`] in `impl` blocks of their own, and the first two copy
//! through `copy.rs`.

mod copy;
mod health;
pub mod meta;
mod rebalance;
mod recovery;
mod replicator;
pub mod ring;
mod state;
pub mod strategy;

pub use rebalance::RebalanceStep;
pub use recovery::RecoveryReport;
pub use replicator::{NodeReport, READ_REPAIR_EVERY, Replicator};
pub use state::{DownReason, NodeStatus, RebalancePhase, RebalanceProgress};
pub use strategy::{Placement, PlacementSpec, ReplicationSettings, StrategyKind};

use crate::reading::InvalidInput;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Too few replicas are up: the API answers 503 with both numbers.
    #[error("not enough replicas are up: {required} required, {available} available")]
    Unavailable { required: usize, available: usize },
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// The request conflicts with the node's or cluster's current state (409).
    #[error("{0}")]
    Conflict(String),
    #[error("invalid replication configuration: {0}")]
    InvalidConfig(#[from] InvalidInput),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type ReplicationResult<T> = Result<T, ReplicationError>;
