//! A consistent-hash ring with virtual nodes. Pure: no I/O, no state beyond
//! the ring itself.
//!
//! Each node is placed on a 64-bit ring at `virtual_nodes` points, the hash
//! of `"<node>#<i>"`. A key hashes to a point; its preference list is the
//! first `n` *distinct* nodes met walking clockwise from there. Adding a node
//! only takes over the arcs in front of its own points, so about `1/(N+1)` of
//! the keys move, and removing one only hands its arcs to the next nodes.
//!
//! The hash is XXH3-64, a fixed, published function: placement is the same in
//! every process, after every restart and in every build (Rust's default
//! hasher is randomly seeded per process and must never be used here). A
//! golden test pins concrete preference lists so that an accidental change of
//! hash or layout fails CI instead of silently moving data.

use xxhash_rust::xxh3::xxh3_64;

use crate::storage::NodeId;

/// The stable 64-bit hash used for every placement decision.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

#[derive(Debug, Clone)]
pub struct HashRing {
    nodes: Vec<NodeId>,
    /// (point, index into `nodes`), sorted by point then node name.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    pub fn new(nodes: &[NodeId], virtual_nodes: u32) -> Self {
        let mut points = Vec::with_capacity(nodes.len() * virtual_nodes as usize);
        for (index, node) in nodes.iter().enumerate() {
            for v in 0..virtual_nodes {
                points.push((stable_hash(format!("{node}#{v}").as_bytes()), index));
            }
        }
        // Ties between two nodes' points (astronomically rare) are broken by
        // name, so the ring does not depend on the order nodes were listed in.
        points.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| nodes[a.1].cmp(&nodes[b.1])));
        Self {
            nodes: nodes.to_vec(),
            points,
        }
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The first `n` distinct nodes clockwise from `key`'s point.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.walk_from(stable_hash(key), n)
    }

    fn walk_from(&self, point: u64, n: usize) -> Vec<NodeId> {
        let wanted = n.min(self.nodes.len());
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
        if self.points.is_empty() {
            return Vec::new();
        }
        let start = self.points.partition_point(|(p, _)| *p < point);
        for offset in 0..self.points.len() {
            if chosen.len() == wanted {
                break;
            }
            let (_, index) = self.points[(start + offset) % self.points.len()];
            if !chosen.contains(&index) {
                chosen.push(index);
            }
        }
        chosen.into_iter().map(|i| self.nodes[i].clone()).collect()
    }

    /// Every distinct preference list of length `n` the ring can produce:
    /// one per arc. Used to tell whether some keys have every replica down.
    pub fn all_preference_lists(&self, n: usize) -> Vec<Vec<NodeId>> {
        let mut lists: Vec<Vec<NodeId>> = self
            .points
            .iter()
            .map(|(point, _)| self.walk_from(*point, n))
            .collect();
        lists.sort();
        lists.dedup();
        lists
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names
            .iter()
            .map(|n| n.parse().expect("valid node id"))
            .collect()
    }

    fn owners(ring: &HashRing, sensors: &[String]) -> Vec<NodeId> {
        sensors
            .iter()
            .map(|s| ring.preference_list(s.as_bytes(), 1).remove(0))
            .collect()
    }

    /// 10,000 distinct random sensor ids of 3 to 24 characters, derived from
    /// a seed so proptest can generate, report and replay them cheaply.
    fn sensor_ids() -> impl Strategy<Value = Vec<String>> {
        any::<u64>().prop_map(|seed| {
            use rand::{RngExt, SeedableRng};
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut ids = std::collections::BTreeSet::new();
            while ids.len() < 10_000 {
                let len = rng.random_range(3..=24);
                let id: String = (0..len)
                    .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                    .collect();
                ids.insert(id);
            }
            ids.into_iter().collect()
        })
    }

    #[test]
    fn the_hash_is_pinned() {
        // If this fails the placement of every existing installation moves.
        assert_eq!(stable_hash(b"sensor1"), 0x11cc_74a7_d077_be6e);
    }

    #[test]
    fn golden_preference_lists() {
        let ring = HashRing::new(&nodes(&["node1", "node2", "node3"]), 64);
        let got: Vec<String> = ["sensor1", "sensor2", "meter-7", "pv.roof"]
            .iter()
            .map(|s| {
                let list = ring.preference_list(s.as_bytes(), 2);
                list.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [&str; 4] = ["node1,node2", "node2,node1", "node1,node3", "node3,node2"];

    #[test]
    fn lists_hold_distinct_nodes_and_never_more_than_exist() {
        let ring = HashRing::new(&nodes(&["a", "b", "c"]), 8);
        for key in ["x", "y", "z", "w"] {
            let list = ring.preference_list(key.as_bytes(), 5);
            assert_eq!(list.len(), 3);
            let mut unique = list.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 3);
        }
        assert!(HashRing::new(&[], 64).preference_list(b"x", 2).is_empty());
    }

    #[test]
    fn node_order_in_the_config_does_not_matter() {
        let a = HashRing::new(&nodes(&["node1", "node2", "node3"]), 64);
        let b = HashRing::new(&nodes(&["node3", "node1", "node2"]), 64);
        for i in 0..1_000 {
            let key = format!("sensor{i}");
            assert_eq!(
                a.preference_list(key.as_bytes(), 2),
                b.preference_list(key.as_bytes(), 2)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn three_nodes_share_sensors_within_15_percent_of_even(sensors in sensor_ids()) {
            let ring = HashRing::new(&nodes(&["node1", "node2", "node3"]), 64);
            let mut share: BTreeMap<NodeId, usize> = BTreeMap::new();
            for owner in owners(&ring, &sensors) {
                *share.entry(owner).or_default() += 1;
            }
            let even = sensors.len() as f64 / 3.0;
            for (node, count) in share {
                let deviation = (count as f64 - even).abs() / even;
                prop_assert!(deviation <= 0.15, "{node} owns {count}, {:.1} % off even", deviation * 100.0);
            }
        }

        #[test]
        fn adding_a_fourth_node_moves_about_a_quarter(sensors in sensor_ids()) {
            let before = HashRing::new(&nodes(&["node1", "node2", "node3"]), 64);
            let after = HashRing::new(&nodes(&["node1", "node2", "node3", "node4"]), 64);
            let old = owners(&before, &sensors);
            let new = owners(&after, &sensors);
            let moved = old.iter().zip(&new).filter(|(o, n)| o != n).count();
            let fraction = moved as f64 / sensors.len() as f64;
            prop_assert!((0.15..=1.0 / 3.0).contains(&fraction), "moved {:.1} %", fraction * 100.0);
            // Keys only ever move to the new node, never between old ones.
            let fourth: NodeId = "node4".parse().expect("valid");
            prop_assert!(old.iter().zip(&new).all(|(o, n)| o == n || *n == fourth));

            // With two replicas, the copies that must be moved are a quarter too.
            let copies_moved: usize = sensors.iter().map(|s| {
                let b = before.preference_list(s.as_bytes(), 2);
                after.preference_list(s.as_bytes(), 2).iter().filter(|n| !b.contains(n)).count()
            }).sum();
            let copy_fraction = copies_moved as f64 / (2 * sensors.len()) as f64;
            prop_assert!(copy_fraction <= 1.0 / 3.0, "moved {:.1} % of copies", copy_fraction * 100.0);
        }

        #[test]
        fn the_same_inputs_give_the_same_list(
            names in proptest::collection::btree_set("[a-z]{1,8}", 1..6),
            vnodes in 1u32..128,
            key in "[a-zA-Z0-9._-]{1,32}",
            n in 1usize..4,
        ) {
            let node_ids: Vec<NodeId> = names.iter().map(|s| s.parse().expect("valid")).collect();
            let first = HashRing::new(&node_ids, vnodes).preference_list(key.as_bytes(), n);
            let second = HashRing::new(&node_ids, vnodes).preference_list(key.as_bytes(), n);
            prop_assert_eq!(first.len(), n.min(node_ids.len()));
            prop_assert_eq!(first, second);
        }
    }
}
