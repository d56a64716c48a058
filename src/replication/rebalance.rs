//! Changing the placement without ever making data unreadable.
//!
//! `configure` validates and persists the new placement at once. If it moves
//! data, the old placement stays as `previous`: writes go to old *and* new
//! owners, reads keep using the old owners (which therefore stay complete),
//! and a background mover copies each sensor from an old owner to its new
//! owners. When every sensor is copied, the old placement is dropped (under
//! the write gate, so no write is in flight) and a cleanup removes copies
//! from nodes that no longer own them.
//!
//! The mover only runs while every node involved is up: a node that is down
//! may hold the only copy of some sensor, and finishing without it would
//! later delete that copy as foreign. Progress is visible through
//! [`Replicator::rebalance_progress`]. A second change during a move keeps
//! the last *complete* placement as `previous`, so chains of changes are safe.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::copy::copy_range;
use super::meta::keys::{CLEANUP_PENDING, PLACEMENT, PREVIOUS_PLACEMENT};
use super::replicator::Replicator;
use super::state::{RebalancePhase, RebalanceProgress};
use super::strategy::{Placement, ReplicationSettings};
use super::{ReplicationError, ReplicationResult};
use crate::reading::SensorId;
use crate::storage::DigestRequest;

/// How often a blocked mover looks again even without being woken.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// What one pass of the mover achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceStep {
    /// Nothing to move or clean up.
    Idle,
    /// Waiting: a node involved is not up, or the placement changed meanwhile.
    Blocked,
    /// A move (or cleanup) completed.
    Finished,
}

impl Replicator {
    /// Changes the replication settings (strategy, replication factor,
    /// virtual nodes, write quorum). Durable at once; data moves in the
    /// background. Answers the new settings.
    pub async fn configure(
        &self,
        settings: ReplicationSettings,
    ) -> ReplicationResult<ReplicationSettings> {
        let _admin = self.admin.lock().await;
        let nodes = self.state().current.nodes().to_vec();
        let new = Arc::new(Placement::new(settings, nodes)?);
        let change = self.cluster.change().await;
        let (current, previous) = {
            let state = change.state();
            (state.current.clone(), state.previous.clone())
        };
        let complete = previous.unwrap_or(current.clone());
        let moving = !complete.same_layout(&new);
        self.next_epoch().await?;
        self.meta.put_setting(PLACEMENT, &new.spec()).await?;
        if moving {
            self.meta
                .put_setting(PREVIOUS_PLACEMENT, &complete.spec())
                .await?;
        } else {
            // Back to the complete layout (or a quorum change only): copies
            // made towards an abandoned layout must be cleaned up.
            if !current.same_layout(&new) {
                self.meta.put_setting(CLEANUP_PENDING, &true).await?;
            }
            self.meta.delete_setting(PREVIOUS_PLACEMENT).await?;
        }
        {
            let mut state = change.state();
            state.rebalance = moving.then(|| RebalanceProgress::new(&complete, &new));
            state.previous = moving.then_some(complete);
            state.current = new;
        }
        if moving {
            tracing::info!(
                event = "rebalance_started",
                ?settings,
                "replication configured: moving readings"
            );
        } else {
            tracing::info!(?settings, "replication configured: nothing to move");
        }
        self.mover_wakeup.notify_one();
        Ok(settings)
    }

    /// Whether no data is waiting to be moved or cleaned up.
    pub async fn is_settled(&self) -> ReplicationResult<bool> {
        Ok(self.state().previous.is_none()
            && !self
                .meta
                .setting::<bool>(CLEANUP_PENDING)
                .await?
                .unwrap_or(false))
    }

    /// One pass of the mover: copy every sensor to its new owners, then
    /// switch to the new placement and clean up. The background task started
    /// by [`Replicator::start_background`] calls this; tests call it directly
    /// to make rebalancing deterministic.
    pub async fn rebalance_step(&self) -> ReplicationResult<RebalanceStep> {
        let (previous, current) = {
            let state = self.state();
            (state.previous.clone(), state.current.clone())
        };
        let Some(previous) = previous else {
            if self
                .meta
                .setting::<bool>(CLEANUP_PENDING)
                .await?
                .unwrap_or(false)
            {
                self.clean_up(&current).await?;
                return Ok(RebalanceStep::Finished);
            }
            return Ok(RebalanceStep::Idle);
        };
        if !self.all_up(&previous, &current) {
            self.set_phase(RebalancePhase::WaitingForNodes);
            return Ok(RebalanceStep::Blocked);
        }
        self.set_phase(RebalancePhase::Moving);

        let mut sensors = BTreeSet::new();
        for id in previous.nodes() {
            for digest in self.node(id)?.digests(DigestRequest::default()).await? {
                sensors.insert(digest.sensor);
            }
        }
        self.update_progress(|p| {
            p.sensors_total = sensors.len() as u64;
            p.sensors_moved = 0;
        });
        for sensor in &sensors {
            if !self.all_up(&previous, &current) {
                self.set_phase(RebalancePhase::WaitingForNodes);
                return Ok(RebalanceStep::Blocked);
            }
            let copied = self.move_sensor(&previous, &current, sensor).await?;
            self.update_progress(|p| {
                p.sensors_moved += 1;
                p.records_copied += copied;
            });
        }

        {
            let _admin = self.admin.lock().await;
            let change = self.cluster.change().await;
            let unchanged = {
                let state = change.state();
                state
                    .previous
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p, &previous))
                    && Arc::ptr_eq(&state.current, &current)
            };
            if !unchanged || !self.all_up(&previous, &current) {
                // Reconfigured or a node failed meanwhile: go round again.
                return Ok(RebalanceStep::Blocked);
            }
            self.meta.put_setting(CLEANUP_PENDING, &true).await?;
            self.meta.delete_setting(PREVIOUS_PLACEMENT).await?;
            // Writes stop going to the old owners: a write sent to one
            // before, arriving after its clean-up, must be refused.
            self.next_epoch().await?;
            let mut state = change.state();
            state.previous = None;
            if let Some(p) = state.rebalance.as_mut() {
                p.phase = RebalancePhase::CleaningUp;
            }
        }
        self.clean_up(&current).await?;
        Ok(RebalanceStep::Finished)
    }

    /// Copies `sensor` from its first old owner to each new owner that was
    /// not an old owner. Answers records changed.
    async fn move_sensor(
        &self,
        previous: &Placement,
        current: &Placement,
        sensor: &SensorId,
    ) -> ReplicationResult<u64> {
        let old_owners = previous.replicas(sensor);
        let Some(source) = old_owners.first() else {
            return Ok(0);
        };
        let source = self.node(source)?.clone();
        let mut copied = 0;
        for target in current
            .replicas(sensor)
            .iter()
            .filter(|n| !old_owners.contains(n))
        {
            copied += copy_range(
                source.as_ref(),
                self.node(target)?.as_ref(),
                sensor,
                None,
                None,
            )
            .await?;
        }
        Ok(copied)
    }

    /// Removes from every live node the sensors it does not own under
    /// `placement`. Nodes that are down clean themselves when recovered.
    async fn clean_up(&self, placement: &Placement) -> ReplicationResult<()> {
        for (id, node) in &self.nodes {
            if !self.state().is_up(id) {
                continue;
            }
            let foreign: Vec<SensorId> = node
                .digests(DigestRequest::default())
                .await?
                .into_iter()
                .map(|d| d.sensor)
                .filter(|s| !placement.replicas(s).contains(id))
                .collect();
            let removed = node.remove_sensors(foreign).await?;
            if removed > 0 {
                tracing::info!(node = %id, removed, "removed records the node no longer owns");
            }
        }
        self.meta.delete_setting(CLEANUP_PENDING).await?;
        let finished = self.rebalance_progress();
        self.cluster.progress(|progress| *progress = None);
        let figure = |f: fn(&RebalanceProgress) -> u64| finished.as_ref().map_or(0, f);
        tracing::info!(
            event = "rebalance_finished",
            sensors_moved = figure(|p| p.sensors_moved),
            records_copied = figure(|p| p.records_copied),
            "rebalance complete"
        );
        Ok(())
    }

    fn all_up(&self, previous: &Placement, current: &Placement) -> bool {
        let state = self.state();
        previous
            .nodes()
            .iter()
            .chain(current.nodes())
            .all(|n| state.is_up(n))
    }

    fn set_phase(&self, phase: RebalancePhase) {
        self.update_progress(|p| p.phase = phase);
    }

    fn update_progress(&self, update: impl FnOnce(&mut RebalanceProgress)) {
        self.cluster.progress(|progress| {
            if let Some(progress) = progress.as_mut() {
                update(progress);
            }
        });
    }
}

impl Replicator {
    /// Runs the mover in the background. It holds only a weak reference,
    /// so dropping the last `Arc<Replicator>` ends it; `stop_mover` ends it
    /// too.
    pub(super) fn spawn_mover(self: &Arc<Self>) {
        spawn_mover_task(self);
    }

    pub(super) fn stop_mover(&self) {
        self.mark_closed();
        self.mover_wakeup.notify_one();
    }
}

fn spawn_mover_task(replicator: &Arc<Replicator>) {
    let weak: Weak<Replicator> = Arc::downgrade(replicator);
    let wakeup = replicator.mover_wakeup.clone();
    tokio::spawn(async move {
        loop {
            let woken = wakeup.notified();
            let pass = {
                let Some(replicator) = weak.upgrade() else {
                    return;
                };
                if replicator.meta_closed() {
                    return;
                }
                replicator.rebalance_step().await
            };
            let wait = match pass {
                Ok(RebalanceStep::Idle) => None,
                Ok(RebalanceStep::Finished) => Some(Duration::ZERO),
                Ok(RebalanceStep::Blocked) => Some(RETRY_INTERVAL),
                Err(ReplicationError::Storage(crate::storage::StorageError::Closed)) => return,
                Err(error) => {
                    tracing::error!(%error, "rebalance pass failed; retrying");
                    Some(RETRY_INTERVAL)
                }
            };
            match wait {
                None => woken.await,
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, woken).await;
                }
            }
        }
    });
}
