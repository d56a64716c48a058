//! The one path from a validated reading to stored and alerted, whatever
//! door it came in by (HTTP today; MQTT will use the same [`Ingestor`]).
//!
//! Concurrent ingests are coalesced: each call queues its readings and
//! waits; a few batcher tasks take everything queued, store it as *one*
//! replicated write, evaluate alerts once, then answer every caller. A
//! thousand clients each posting one reading then cost a handful of
//! replicated writes instead of a thousand (each with its hand-offs to every
//! replica's writer thread). If a combined write is refused (a sensor
//! without its write quorum), each caller's readings are retried alone, so
//! one client's unavailable sensor never fails another client's write.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::alerts::AlertService;
use crate::alerts::engine::{Change, Transition};
use crate::reading::{Key, Reading};
use crate::replication::{ReplicationResult, Replicator};

/// Batcher tasks: two keep both cores busy while one waits for a commit.
const BATCHERS: usize = 2;
/// Readings combined into one replicated write at most.
const MAX_COMBINED: usize = 20_000;

struct Pending {
    readings: Vec<Reading>,
    reply: oneshot::Sender<ReplicationResult<()>>,
}

pub struct Ingestor {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Ingestor {
    pub fn new(replicator: Arc<Replicator>, alerts: Arc<AlertService>) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        // A tokio Mutex: a batcher holds it only while draining the queue,
        // which awaits the first arrival.
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..BATCHERS {
            tokio::spawn(batcher(
                receiver.clone(),
                replicator.clone(),
                alerts.clone(),
            ));
        }
        Self { queue }
    }

    /// Stores `readings` on their write quorum, then evaluates alerts.
    /// Answers their keys once stored. An alerting failure is logged and
    /// counted but does not fail the ingest: the readings are stored, and a
    /// client retry would not help.
    pub async fn ingest(&self, readings: Vec<Reading>) -> ReplicationResult<Vec<Key>> {
        let keys: Vec<Key> = readings.iter().map(|r| r.key.clone()).collect();
        let count = readings.len() as u64;
        let (reply, answer) = oneshot::channel();
        let closed =
            || crate::replication::ReplicationError::Storage(crate::storage::StorageError::Closed);
        self.queue
            .send(Pending { readings, reply })
            .map_err(|_| closed())?;
        match answer.await.map_err(|_| closed())? {
            Ok(()) => {
                metrics::counter!("energyguard_readings_accepted_total").increment(count);
                Ok(keys)
            }
            Err(error) => {
                metrics::counter!("energyguard_readings_rejected_total", "reason" => "unavailable")
                    .increment(count);
                Err(error)
            }
        }
    }
}

async fn batcher(
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>,
    replicator: Arc<Replicator>,
    alerts: Arc<AlertService>,
) {
    loop {
        let batch = {
            let mut receiver = queue.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut size = first.readings.len();
            let mut batch = vec![first];
            while size < MAX_COMBINED {
                match receiver.try_recv() {
                    Ok(next) => {
                        size += next.readings.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        store(&replicator, &alerts, batch).await;
    }
}

/// Stores a batch, evaluates alerts on what was stored, then answers every
/// caller: a caller's next request is therefore evaluated after this one.
async fn store(replicator: &Replicator, alerts: &AlertService, batch: Vec<Pending>) {
    let combined_ok = batch.len() > 1 && {
        let combined: Vec<Reading> = batch
            .iter()
            .flat_map(|p| p.readings.iter().cloned())
            .collect();
        replicator.put(combined).await.is_ok()
    };
    let mut accepted = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for pending in batch {
        let result = if combined_ok {
            Ok(())
        } else {
            replicator.put(pending.readings.clone()).await
        };
        if result.is_ok() {
            accepted.extend(pending.readings);
        }
        replies.push((pending.reply, result));
    }
    match alerts.observe(&accepted).await {
        Ok(changes) => record_alert_metrics(&changes),
        Err(error) => {
            metrics::counter!("energyguard_alert_evaluation_errors_total").increment(1);
            tracing::error!(%error, "alert evaluation failed for stored readings");
        }
    }
    for (reply, result) in replies {
        // The caller may have gone away; the readings are stored regardless.
        let _ = reply.send(result);
    }
}

pub fn record_alert_metrics(changes: &[Change]) {
    for change in changes {
        let transition = match change.transition {
            Transition::Fired => "fired",
            Transition::Resolved => "resolved",
            Transition::Updated => continue,
        };
        tracing::info!(alert = %change.alert.id, transition, value = change.alert.value, "alert");
        metrics::counter!("energyguard_alerts_total", "transition" => transition).increment(1);
    }
}
