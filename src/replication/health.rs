//! Failure detection and automatic recovery: nodes found down and brought
//! back without an operator.
//!
//! One task probes every node, all at once, each probe bounded by
//! `failure_timeout`, then pauses `failure_timeout / 3` before the next round:
//! * a node up (or recovering) that has not answered for `failure_timeout`
//!   is marked down, reason `unreachable` (a node process) or `disk` (a
//!   node whose storage fails). A failed write marks a node down at once
//!   (see `Replicator::write`), without waiting for the probes.
//! * a node down for any reason but `admin` that answers again is recovered
//!   (hints, then digest repair, then `up`). `admin` means an operator took
//!   it out; only `recover_node` brings it back.
//! * a node that answers with a new incarnation has lost its data (a wiped
//!   directory, a replaced disk): it is marked down (`disk`) and recovered,
//!   which refills it from its peers (or, with no live peer, keeps it
//!   down). The recovery records the incarnation once it has refilled it.
//!
//! **Flapping.** Automatic recoveries of one node are spaced by a backoff:
//! none before the first, then 1 s, 2 s, 4 s … up to [`MAX_BACKOFF`], doubled
//! each time the node goes down again within [`STABLE_AFTER`] of being
//! recovered or a recovery fails, and forgotten once the node has stayed up
//! for [`STABLE_AFTER`]. A link that flaps every few seconds therefore costs
//! one repair a minute at most, not one per flap.
//!
//! The same task keeps the clock's durable high water (see
//! `Replicator::persist_clock_high_water`).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;

use super::replicator::Replicator;
use super::state::{DownReason, NodeStatus};
use crate::storage::NodeId;

/// The longest wait between automatic recoveries of a flapping node.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A node up this long after a recovery is no longer flapping.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// The first wait of a node found flapping.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Probes run at least this far apart, whatever `failure_timeout` is.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// What the detector remembers of one node between probes.
#[derive(Debug)]
struct Watch {
    /// The last answer to a probe (or the start, before any).
    last_answer: Instant,
    /// When the node last became `up` through a recovery.
    up_since: Option<Instant>,
    /// The wait before the next automatic recovery, once down.
    backoff: Duration,
    /// No automatic recovery before this.
    next_attempt: Instant,
    /// Its status at the previous probe.
    was: NodeStatus,
}

impl Watch {
    fn new(now: Instant, status: NodeStatus) -> Self {
        Self {
            last_answer: now,
            up_since: None,
            backoff: Duration::ZERO,
            next_attempt: now,
            was: status,
        }
    }

    /// The node went down at `now`: a node recovered less than
    /// [`STABLE_AFTER`] ago is flapping, and waits longer for its next
    /// recovery.
    fn went_down(&mut self, now: Instant) {
        let flapping = self
            .up_since
            .is_some_and(|since| now.duration_since(since) < STABLE_AFTER);
        self.backoff = if flapping {
            next_backoff(self.backoff)
        } else {
            Duration::ZERO
        };
        self.up_since = None;
        self.next_attempt = now + self.backoff;
    }

    /// An automatic recovery failed at `now`.
    fn recovery_failed(&mut self, now: Instant) {
        self.backoff = next_backoff(self.backoff);
        self.next_attempt = now + self.backoff;
    }
}

fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        FIRST_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// What the recovery task reports back: the node, and whether it is up.
type Outcomes = Arc<std::sync::Mutex<Vec<(NodeId, bool)>>>;

impl Replicator {
    /// Starts failure detection and automatic recovery: a node silent for
    /// `failure_timeout` is marked down, and one that answers again is
    /// recovered. It stops once the replicator is closed or dropped.
    pub fn start_health(self: &Arc<Self>, failure_timeout: Duration) {
        spawn(self, failure_timeout);
    }
}

fn spawn(replicator: &Arc<Replicator>, failure_timeout: Duration) {
    let weak: Weak<Replicator> = Arc::downgrade(replicator);
    let interval = (failure_timeout / 3).max(MIN_PROBE_INTERVAL);
    // A round takes at most a probe's deadline plus the interval: the lease
    // is three of those, so half of it outlasts any round.
    let clock_lease = (3 * (failure_timeout + interval)).max(super::replicator::MIN_CLOCK_LEASE);
    tokio::spawn(async move {
        let mut watches: BTreeMap<NodeId, Watch> = BTreeMap::new();
        let recovering: Arc<std::sync::Mutex<Option<NodeId>>> = Arc::default();
        let outcomes: Outcomes = Arc::default();
        loop {
            {
                let Some(replicator) = weak.upgrade() else {
                    return;
                };
                if replicator.meta_closed() {
                    return;
                }
                let round = Round {
                    replicator: &replicator,
                    failure_timeout,
                    recovering: &recovering,
                    outcomes: &outcomes,
                };
                round.run(&mut watches).await;
                if let Err(error) = replicator.persist_clock_high_water(clock_lease).await {
                    tracing::warn!(%error, "could not record the clock's high water");
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// One round of the detector: what it needs besides the watches.
struct Round<'a> {
    replicator: &'a Arc<Replicator>,
    failure_timeout: Duration,
    /// The node being recovered automatically, if any: one at a time.
    recovering: &'a Arc<std::sync::Mutex<Option<NodeId>>>,
    outcomes: &'a Outcomes,
}

impl Round<'_> {
    /// Probes every node, then acts on what changed.
    async fn run(&self, watches: &mut BTreeMap<NodeId, Watch>) {
        let replicator = self.replicator;
        let failure_timeout = self.failure_timeout;
        let nodes = replicator.node_handles();
        // Local nodes have no deadline of their own; node processes' probes
        // have the same one.
        let probes = join_all(nodes.iter().map(|(_, node)| async move {
            match tokio::time::timeout(failure_timeout, node.probe()).await {
                Ok(answer) => answer,
                Err(_) => Err(crate::storage::StorageError::Unreachable(format!(
                    "no answer to a probe within {failure_timeout:?}"
                ))),
            }
        }))
        .await;
        let now = Instant::now();
        let finished: Vec<(NodeId, bool)> =
            std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, up) in finished {
            let watch = watches
                .entry(id)
                .or_insert_with(|| Watch::new(now, NodeStatus::Down));
            if up {
                watch.up_since = Some(now);
            } else {
                watch.recovery_failed(now);
            }
        }
        for ((id, node), probe) in nodes.iter().zip(probes) {
            let (status, reason) = replicator.status_of(id);
            let watch = watches
                .entry(id.clone())
                .or_insert_with(|| Watch::new(now, status));
            if status == NodeStatus::Down && watch.was == NodeStatus::Up {
                watch.went_down(now);
            }
            if watch
                .up_since
                .is_some_and(|since| now.duration_since(since) >= STABLE_AFTER)
            {
                watch.backoff = Duration::ZERO;
            }
            watch.was = status;
            match probe {
                Ok(incarnation) => {
                    watch.last_answer = now;
                    replicator.saw(id, SystemTime::now());
                    let known = replicator.known_incarnation(id).await;
                    // A recovery in progress records the new incarnation
                    // once it has refilled the node.
                    if status == NodeStatus::Up
                        && known.as_ref().is_some_and(|known| *known != incarnation)
                    {
                        tracing::warn!(event = "node_down", node = %id, address = %node.address(),
                            reason = DownReason::Disk.as_str(),
                            "node answers with new, empty storage: its data is gone; refilling it");
                        replicator.mark_down(id, DownReason::Disk).await;
                        watch.went_down(now);
                        watch.was = NodeStatus::Down;
                    }
                    if known.is_none()
                        && status == NodeStatus::Up
                        && let Err(error) = replicator.remember_incarnation(id, &incarnation).await
                    {
                        tracing::warn!(node = %id, %error, "could not record the node's incarnation");
                    }
                    let down_by_itself = replicator.status_of(id).0 == NodeStatus::Down
                        && reason != Some(DownReason::Admin);
                    if down_by_itself && now >= watch.next_attempt {
                        self.start_recovery(id, watch, now);
                    }
                }
                Err(error) => {
                    let silent_for = now.duration_since(watch.last_answer);
                    if status != NodeStatus::Down && silent_for >= failure_timeout {
                        let reason = DownReason::of(&error);
                        tracing::warn!(event = "node_down", node = %id, address = %node.address(), %error,
                            reason = reason.as_str(), "node stopped answering: marking it down");
                        replicator.mark_down(id, reason).await;
                        watch.went_down(now);
                        watch.was = NodeStatus::Down;
                    }
                }
            }
        }
    }

    /// Recovers `id` in a task of its own, one node at a time, unless a
    /// recovery is already running; the task reports how it ended.
    fn start_recovery(&self, id: &NodeId, watch: &mut Watch, now: Instant) {
        {
            let mut running = self.recovering.lock().unwrap_or_else(|p| p.into_inner());
            if running.is_some() {
                return;
            }
            *running = Some(id.clone());
        }
        // Not again before the backoff, even if this one ends at once.
        watch.next_attempt = now + watch.backoff.max(FIRST_BACKOFF);
        let (replicator, id) = (self.replicator.clone(), id.clone());
        let (recovering, outcomes) = (self.recovering.clone(), self.outcomes.clone());
        tokio::spawn(async move {
            tracing::info!(node = %id, "node answers again: recovering it automatically");
            let up = match replicator.recover_automatically(&id).await {
                Ok(report) => report.is_some(),
                Err(error) => {
                    tracing::warn!(node = %id, %error, "automatic recovery failed; will retry");
                    false
                }
            };
            outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id, up));
            *recovering.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_flaps_waits_longer_each_time_and_a_stable_one_not_at_all() {
        let start = Instant::now();
        let mut watch = Watch::new(start, NodeStatus::Up);
        watch.went_down(start);
        assert_eq!(
            watch.backoff,
            Duration::ZERO,
            "a first failure recovers at once"
        );
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..8 {
            // Recovered, then down again ten seconds later: flapping.
            watch.up_since = Some(now);
            now += Duration::from_secs(10);
            watch.went_down(now);
            waits.push(watch.backoff.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        watch.up_since = Some(now);
        now += STABLE_AFTER + Duration::from_secs(1);
        watch.went_down(now);
        assert_eq!(
            watch.backoff,
            Duration::ZERO,
            "a minute up forgets the flapping"
        );
    }

    #[test]
    fn a_failed_recovery_waits_before_the_next() {
        let start = Instant::now();
        let mut watch = Watch::new(start, NodeStatus::Down);
        watch.recovery_failed(start);
        assert_eq!(watch.next_attempt, start + FIRST_BACKOFF);
        watch.recovery_failed(start);
        assert_eq!(watch.next_attempt, start + 2 * FIRST_BACKOFF);
    }
}
