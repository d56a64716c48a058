//! Placement: which nodes hold a sensor's readings, in preference order.
//! Pure functions of the configuration and the node list.
//!
//! **The placement key is the sensor id**, not the reading key. One sensor's
//! whole history then lives on one replica set, so a history query or an
//! aggregate reads one node sequentially (a primary-key range in SQLite)
//! instead of gathering points from every node, and repair compares one
//! digest per sensor. The cost: one very busy sensor cannot be spread over
//! more nodes than its replica set. An energy installation has many sensors
//! of similar rates, so that balance is right here.

use serde::{Deserialize, Serialize};

use super::ring::{HashRing, stable_hash};
use crate::reading::{InvalidInput, SensorId};
use crate::storage::NodeId;

/// The most virtual nodes per node accepted (the ring costs memory and
/// build time proportional to nodes × virtual nodes).
pub const MAX_VIRTUAL_NODES: u32 = 4_096;

/// How sensors are placed on nodes: every node holds every sensor
/// (`full`), or each sensor is on `replication_factor` nodes of a hash ring
/// (`consistent`). The same names in the configuration, the API and the
/// CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    Full,
    Consistent,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Consistent => "consistent",
        }
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = InvalidInput;

    fn from_str(name: &str) -> Result<Self, InvalidInput> {
        match name {
            "full" => Ok(Self::Full),
            "consistent" => Ok(Self::Consistent),
            _ => Err(InvalidInput::new(
                "strategy",
                "must be \"full\" or \"consistent\"",
            )),
        }
    }
}

/// The replication settings an operator chooses (`[replication]`
/// without the node list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSettings {
    pub strategy: StrategyKind,
    /// Copies of each sensor's data under `consistent`; ignored by `full`,
    /// which keeps one copy on every node.
    pub replication_factor: usize,
    pub virtual_nodes: u32,
    /// Replicas that must store a write before it is acknowledged.
    pub write_quorum: usize,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::Consistent,
            replication_factor: 2,
            virtual_nodes: 64,
            write_quorum: 1,
        }
    }
}

/// Every node keeps every sensor.
///
/// Trade-offs: reads never leave a node and survive all but one node being
/// down; every write costs one copy per node, so write throughput and disk
/// use do not grow with the cluster. The preference order is rotated per
/// sensor so reads spread over all nodes.
#[derive(Debug, Clone)]
pub struct FullCopy {
    nodes: Vec<NodeId>,
}

impl FullCopy {
    fn replicas(&self, sensor: &SensorId) -> Vec<NodeId> {
        let n = self.nodes.len();
        if n == 0 {
            return Vec::new();
        }
        let start = (stable_hash(sensor.as_str().as_bytes()) % n as u64) as usize;
        (0..n)
            .map(|i| self.nodes[(start + i) % n].clone())
            .collect()
    }
}

/// Each sensor on `replication_factor` nodes chosen by a hash ring.
///
/// Trade-offs: writes cost `replication_factor` copies whatever the cluster
/// size, so capacity grows with nodes; a sensor survives up to
/// `replication_factor − 1` of its replicas being down; adding a node moves
/// only about `1/(N+1)` of the data.
#[derive(Debug, Clone)]
pub struct Sharded {
    ring: HashRing,
    replication_factor: usize,
}

#[derive(Debug, Clone)]
enum Layout {
    Full(FullCopy),
    Consistent(Sharded),
}

/// A validated configuration over a node list: answers "where does this
/// sensor live?".
#[derive(Debug, Clone)]
pub struct Placement {
    settings: ReplicationSettings,
    nodes: Vec<NodeId>,
    layout: Layout,
}

/// What is persisted to rebuild a [`Placement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    #[serde(flatten)]
    pub settings: ReplicationSettings,
    pub nodes: Vec<NodeId>,
}

impl Placement {
    /// Validates `settings` against `nodes` and builds the placement.
    pub fn new(settings: ReplicationSettings, nodes: Vec<NodeId>) -> Result<Self, InvalidInput> {
        if nodes.is_empty() {
            return Err(InvalidInput::new(
                "nodes",
                "at least one storage node is required",
            ));
        }
        let mut unique = nodes.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != nodes.len() {
            return Err(InvalidInput::new("nodes", "node ids must be unique"));
        }
        let layout = match settings.strategy {
            StrategyKind::Full => Layout::Full(FullCopy {
                nodes: nodes.clone(),
            }),
            StrategyKind::Consistent => {
                if settings.replication_factor == 0 || settings.replication_factor > nodes.len() {
                    return Err(InvalidInput::new(
                        "replication_factor",
                        format!(
                            "must be between 1 and the number of nodes ({})",
                            nodes.len()
                        ),
                    ));
                }
                if settings.virtual_nodes == 0 || settings.virtual_nodes > MAX_VIRTUAL_NODES {
                    return Err(InvalidInput::new(
                        "virtual_nodes",
                        format!("must be between 1 and {MAX_VIRTUAL_NODES}"),
                    ));
                }
                Layout::Consistent(Sharded {
                    ring: HashRing::new(&nodes, settings.virtual_nodes),
                    replication_factor: settings.replication_factor,
                })
            }
        };
        let placement = Self {
            settings,
            nodes,
            layout,
        };
        let copies = placement.copies();
        if settings.write_quorum == 0 || settings.write_quorum > copies {
            return Err(InvalidInput::new(
                "write_quorum",
                format!("must be between 1 and the number of copies of each reading ({copies})"),
            ));
        }
        Ok(placement)
    }

    pub fn from_spec(spec: &PlacementSpec) -> Result<Self, InvalidInput> {
        Self::new(spec.settings, spec.nodes.clone())
    }

    pub fn spec(&self) -> PlacementSpec {
        PlacementSpec {
            settings: self.settings,
            nodes: self.nodes.clone(),
        }
    }

    pub fn settings(&self) -> ReplicationSettings {
        self.settings
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// How many copies of each reading this placement keeps.
    pub fn copies(&self) -> usize {
        match &self.layout {
            Layout::Full(f) => f.nodes.len(),
            Layout::Consistent(s) => s.replication_factor,
        }
    }

    /// The nodes holding `sensor`, in preference order.
    pub fn replicas(&self, sensor: &SensorId) -> Vec<NodeId> {
        match &self.layout {
            Layout::Full(f) => f.replicas(sensor),
            Layout::Consistent(s) => s
                .ring
                .preference_list(sensor.as_str().as_bytes(), s.replication_factor),
        }
    }

    /// Every distinct replica set, to tell whether a scan over all sensors
    /// can be complete with some nodes down.
    pub fn replica_sets(&self) -> Vec<Vec<NodeId>> {
        match &self.layout {
            Layout::Full(f) => vec![f.nodes.clone()],
            Layout::Consistent(s) => s.ring.all_preference_lists(s.replication_factor),
        }
    }

    /// Whether moving from `self` to `other` changes where any data lives
    /// (a change of write quorum alone does not).
    pub fn same_layout(&self, other: &Placement) -> bool {
        let strip = |s: ReplicationSettings| match s.strategy {
            StrategyKind::Full => (s.strategy, 0, 0),
            StrategyKind::Consistent => (s.strategy, s.replication_factor, s.virtual_nodes),
        };
        strip(self.settings) == strip(other.settings) && self.nodes == other.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (1..=n)
            .map(|i| format!("node{i}").parse().expect("valid"))
            .collect()
    }

    fn settings(strategy: StrategyKind, rf: usize, w: usize) -> ReplicationSettings {
        ReplicationSettings {
            strategy,
            replication_factor: rf,
            virtual_nodes: 64,
            write_quorum: w,
        }
    }

    #[test]
    fn full_places_every_sensor_everywhere_in_a_rotating_order() {
        let p = Placement::new(settings(StrategyKind::Full, 1, 1), nodes(3)).expect("valid");
        let mut first_choices = std::collections::BTreeSet::new();
        for i in 0..100 {
            let sensor: SensorId = format!("s{i}").parse().expect("valid");
            let mut replicas = p.replicas(&sensor);
            first_choices.insert(replicas[0].clone());
            replicas.sort();
            assert_eq!(replicas, nodes(3));
        }
        assert_eq!(first_choices.len(), 3, "reads spread over every node");
        assert_eq!(p.copies(), 3);
    }

    #[test]
    fn consistent_places_each_sensor_on_rf_nodes() {
        let p = Placement::new(settings(StrategyKind::Consistent, 2, 2), nodes(3)).expect("valid");
        let sensor: SensorId = "sensor1".parse().expect("valid");
        assert_eq!(p.replicas(&sensor).len(), 2);
        assert_eq!(p.copies(), 2);
        assert!(p.replica_sets().iter().all(|set| set.len() == 2));
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases = [
            (
                settings(StrategyKind::Consistent, 4, 1),
                nodes(3),
                "replication_factor",
            ),
            (
                settings(StrategyKind::Consistent, 0, 1),
                nodes(3),
                "replication_factor",
            ),
            (
                settings(StrategyKind::Consistent, 2, 3),
                nodes(3),
                "write_quorum",
            ),
            (settings(StrategyKind::Full, 1, 4), nodes(3), "write_quorum"),
            (settings(StrategyKind::Full, 1, 0), nodes(3), "write_quorum"),
            (settings(StrategyKind::Full, 1, 1), vec![], "nodes"),
            (
                settings(StrategyKind::Full, 1, 1),
                [nodes(2), nodes(1)].concat(),
                "nodes",
            ),
            (
                ReplicationSettings {
                    virtual_nodes: 0,
                    ..settings(StrategyKind::Consistent, 2, 1)
                },
                nodes(3),
                "virtual_nodes",
            ),
        ];
        for (s, n, field) in cases {
            let err = Placement::new(s, n).expect_err("invalid");
            assert_eq!(err.field, field);
        }
    }

    #[test]
    fn a_quorum_change_alone_moves_no_data() {
        let a = Placement::new(settings(StrategyKind::Consistent, 2, 1), nodes(3)).expect("valid");
        let b = Placement::new(settings(StrategyKind::Consistent, 2, 2), nodes(3)).expect("valid");
        let c = Placement::new(settings(StrategyKind::Consistent, 3, 2), nodes(3)).expect("valid");
        let full1 = Placement::new(settings(StrategyKind::Full, 1, 1), nodes(3)).expect("valid");
        let full2 = Placement::new(settings(StrategyKind::Full, 2, 2), nodes(3)).expect("valid");
        assert!(a.same_layout(&b));
        assert!(!a.same_layout(&c));
        assert!(
            full1.same_layout(&full2),
            "full ignores the replication factor"
        );
    }
}
