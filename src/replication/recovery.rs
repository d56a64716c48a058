//! Taking a node out of service and bringing it back exactly right.
//!
//! `recover` first replays the node's hints (cheap: exactly the writes it
//! missed while down), then repairs it by anti-entropy: it compares a digest
//! per sensor with every live peer that also holds the sensor, narrows a
//! mismatch down to hour buckets, and copies those buckets over (records
//! merge by version, so copying too much is harmless and a tombstone beats an
//! older value). That catches what hints cannot: lost hints, a disk replaced
//! by an empty one, writes that failed half-way. Sensors the node no longer
//! owns (the placement changed while it was down) are removed from it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use futures::TryFutureExt;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::copy::{copy_differing_buckets, copy_range};
use super::replicator::Replicator;
use super::state::{DownReason, NodeStatus};
use super::{ReplicationError, ReplicationResult};
use crate::reading::SensorId;
use crate::storage::{DigestRequest, NodeId, RangeDigest, Record, StorageNode, StorageResult};

/// Hints replayed per round trip.
const HINT_BATCH: usize = 10_000;
/// Hint batches being applied to a node at once.
const APPLIES_IN_FLIGHT: usize = 2;

/// What `recover` did: the answer of `POST /recover_node/<id>`.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub id: NodeId,
    pub status: NodeStatus,
    pub hints_replayed: u64,
    /// Records the repair changed on the node (missing, stale or deleted).
    pub repaired: u64,
    /// Records of sensors it no longer owns, removed from it.
    pub removed: u64,
    pub took_ms: u64,
}

impl Replicator {
    /// Takes a node out of service: no reads, no writes; writes meant for it
    /// are kept as hints. Survives restarts until `recover`.
    pub async fn fail(&self, id: &NodeId) -> ReplicationResult<()> {
        self.node(id)?;
        {
            let change = self.cluster.change().await;
            let mut state = change.state();
            if state.reason(id) == Some(DownReason::Admin) {
                return Err(ReplicationError::Conflict(format!(
                    "node {id} is already down"
                )));
            }
            // A node down by itself is kept down by the operator from now on.
            state.set_down(id, DownReason::Admin);
        }
        tracing::warn!(event = "node_down", node = %id, reason = DownReason::Admin.as_str(),
            "node taken out of service");
        self.persist_down_nodes().await
    }

    /// Brings a node back: hints, then repair from peers, then `up`. Also
    /// works on a node that is up, as an explicit repair.
    pub async fn recover(&self, id: &NodeId) -> ReplicationResult<RecoveryReport> {
        self.node(id)?;
        let _admin = self.admin.lock().await;
        {
            let change = self.cluster.change().await;
            change.state().set_recovering(id);
        }
        self.recover_marked(id).await
    }

    /// Recovers a node that went down by itself and answers again; `None`
    /// if it is no longer down, or an operator took it out meanwhile.
    pub(super) async fn recover_automatically(
        &self,
        id: &NodeId,
    ) -> ReplicationResult<Option<RecoveryReport>> {
        let _admin = self.admin.lock().await;
        {
            let change = self.cluster.change().await;
            let mut state = change.state();
            let down_by_itself = state.status(id) == Some(NodeStatus::Down)
                && state.reason(id) != Some(DownReason::Admin);
            if !down_by_itself {
                return Ok(None);
            }
            state.set_recovering(id);
        }
        self.recover_marked(id).await.map(Some)
    }

    /// The recovery of a node already marked recovering; the caller holds
    /// the admin lock. A node that lost its data cannot be refilled without
    /// a live peer: it stays down rather than serve an empty store.
    async fn recover_marked(&self, id: &NodeId) -> ReplicationResult<RecoveryReport> {
        tracing::info!(event = "recovery_started", node = %id, "recovering node");
        let started = Instant::now();
        let outcome = async {
            // The storage that answers now; once refilled, it is the one the
            // node is known by.
            let incarnation = self.node(id)?.probe().await?;
            let lost_data = self
                .known_incarnation(id)
                .await
                .is_some_and(|known| known != incarnation);
            let peers = self.live_peers(id);
            if lost_data && peers.is_empty() {
                return Err(ReplicationError::Unavailable {
                    required: 1,
                    available: 0,
                });
            }
            // The peers' digests do not depend on the hints: they are taken
            // while the hints are replayed.
            let (hints, peer_digests) = futures::future::try_join(
                self.replay_hints(id),
                futures::future::try_join_all(
                    peers
                        .iter()
                        .map(|(_, node)| node.digests(DigestRequest::default())),
                )
                .map_err(ReplicationError::from),
            )
            .await?;
            let hints_took = started.elapsed();
            let (repaired, removed) = self.repair(id, peers, peer_digests).await?;
            self.remember_incarnation(id, &incarnation).await?;
            tracing::info!(node = %id, hints_ms = hints_took.as_millis() as u64,
                repair_ms = (started.elapsed() - hints_took).as_millis() as u64, "recovery phases");
            Ok::<_, ReplicationError>((hints, repaired, removed))
        }
        .await;

        let change = self.cluster.change().await;
        let still_recovering = change.state().status(id) == Some(NodeStatus::Recovering);
        let result = match outcome {
            Ok(_) if !still_recovering => Err(ReplicationError::Conflict(format!(
                "node {id} was failed again while recovering"
            ))),
            Ok((hints_replayed, repaired, removed)) => {
                change.state().set_up(id);
                Ok(RecoveryReport {
                    id: id.clone(),
                    status: NodeStatus::Up,
                    hints_replayed,
                    repaired,
                    removed,
                    took_ms: started.elapsed().as_millis() as u64,
                })
            }
            Err(error) => {
                // An operator's `fail` meanwhile stands.
                if still_recovering {
                    change.state().set_down(id, DownReason::of_recovery(&error));
                }
                tracing::error!(event = "recovery_failed", node = %id, %error,
                    "recovery failed; the node stays down");
                Err(error)
            }
        };
        // A recovery that an operator's `fail` overtook ends in an error too.
        let outcome = if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        metrics::counter!("energyguard_recoveries_total", "node" => id.to_string(), "outcome" => outcome)
            .increment(1);
        self.persist_down_nodes().await?;
        if let Ok(report) = &result {
            tracing::info!(event = "node_up", node = %id, hints = report.hints_replayed, repaired = report.repaired,
                removed = report.removed, took_ms = report.took_ms, "node recovered");
        }
        self.mover_wakeup.notify_one();
        result
    }

    /// Applies and forgets the node's hints, skipping records for sensors it
    /// no longer holds (their owners have them). Batches are read in order
    /// and applied in tasks of their own, [`APPLIES_IN_FLIGHT`] at a time,
    /// so the node's writer always has the next batch waiting; a batch's
    /// hints are forgotten once it and every batch before it are applied.
    /// Applying out of order is harmless: records merge by version.
    async fn replay_hints(&self, id: &NodeId) -> ReplicationResult<u64> {
        let node = self.node(id)?.clone();
        let mut replayed = 0;
        let mut read_up_to = 0;
        let mut applying = VecDeque::new();
        let replayed_total = metrics::counter!("energyguard_recovery_hints_replayed_total", "node" => id.to_string());
        loop {
            let batch = self.meta.hints(id, read_up_to, HINT_BATCH).await?;
            let Some(last) = batch.last().map(|h| h.seq) else {
                break;
            };
            read_up_to = last;
            let records: Vec<Record> = {
                let state = self.state();
                batch
                    .into_iter()
                    .map(|h| h.record)
                    .filter(|r| state.holders(&r.key.sensor).contains(id))
                    .collect()
            };
            replayed += records.len() as u64;
            let (node, counted) = (node.clone(), records.len() as u64);
            let replayed_total = replayed_total.clone();
            applying.push_back((
                last,
                tokio::spawn(async move {
                    let applied = node.apply(records).await;
                    if applied.is_ok() {
                        replayed_total.increment(counted);
                    }
                    applied
                }),
            ));
            if applying.len() >= APPLIES_IN_FLIGHT {
                self.forget_oldest_applied(id, &mut applying).await?;
            }
        }
        while !applying.is_empty() {
            self.forget_oldest_applied(id, &mut applying).await?;
        }
        Ok(replayed)
    }

    /// Waits for the oldest batch in `applying` and forgets its hints (and
    /// those of every batch before it, applied already).
    async fn forget_oldest_applied(
        &self,
        id: &NodeId,
        applying: &mut VecDeque<(i64, JoinHandle<StorageResult<u64>>)>,
    ) -> ReplicationResult<()> {
        let Some((last, task)) = applying.pop_front() else {
            return Ok(());
        };
        match task.await {
            Ok(applied) => applied?,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        };
        self.meta.remove_hints(id, last).await?;
        Ok(())
    }

    /// The peers a recovering node is repaired from: every other node up.
    fn live_peers(&self, id: &NodeId) -> Vec<(NodeId, Arc<dyn StorageNode>)> {
        let state = self.state();
        self.nodes
            .iter()
            .filter(|(peer, _)| *peer != id && state.is_up(peer))
            .map(|(peer, node)| (peer.clone(), node.clone()))
            .collect()
    }

    /// Anti-entropy against `peers`, whose whole-sensor digests are given.
    /// Answers (records changed on the node, records removed from it).
    async fn repair(
        &self,
        id: &NodeId,
        peers: Vec<(NodeId, Arc<dyn StorageNode>)>,
        peer_digests: Vec<Vec<RangeDigest>>,
    ) -> ReplicationResult<(u64, u64)> {
        let target = self.node(id)?.clone();
        let mine = by_sensor(target.digests(DigestRequest::default()).await?);
        let theirs: Vec<_> = peers
            .iter()
            .zip(peer_digests)
            .map(|((peer, node), digests)| (peer, node, by_sensor(digests)))
            .collect();
        let sensors: BTreeSet<&SensorId> = mine
            .keys()
            .chain(theirs.iter().flat_map(|(_, _, d)| d.keys()))
            .collect();

        let mut repaired = 0;
        let repaired_total = metrics::counter!("energyguard_recovery_records_repaired_total", "node" => id.to_string());
        let mut foreign = Vec::new();
        for sensor in sensors {
            let holders = self.state().holders(sensor);
            if !holders.contains(id) {
                if mine.contains_key(sensor) {
                    foreign.push(sensor.clone());
                }
                continue;
            }
            let mut target_has_sensor = mine.contains_key(sensor);
            for (peer, node, digests) in &theirs {
                let Some(digest) = digests.get(sensor) else {
                    continue;
                };
                let in_sync = mine
                    .get(sensor)
                    .is_some_and(|m| m.count == digest.count && m.hash == digest.hash);
                if !holders.contains(peer) || in_sync {
                    continue;
                }
                let copied = if target_has_sensor {
                    copy_differing_buckets(node.as_ref(), target.as_ref(), sensor).await?
                } else {
                    copy_range(node.as_ref(), target.as_ref(), sensor, None, None).await?
                };
                repaired_total.increment(copied);
                repaired += copied;
                target_has_sensor = true;
            }
        }
        let removed = target.remove_sensors(foreign).await?;
        Ok((repaired, removed))
    }
}

fn by_sensor(digests: Vec<RangeDigest>) -> HashMap<SensorId, RangeDigest> {
    digests.into_iter().map(|d| (d.sensor.clone(), d)).collect()
}
