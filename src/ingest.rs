//! The one path from a validated reading to stored and alerted, whatever
//! door it came in by (HTTP today; MQTT uses the same [`Ingestor`]).

use std::sync::Arc;

use crate::alerts::AlertService;
use crate::alerts::engine::{Change, Transition};
use crate::reading::{Key, Reading};
use crate::replication::{ReplicationResult, Replicator};

pub struct Ingestor {
    replicator: Arc<Replicator>,
    alerts: Arc<AlertService>,
}

impl Ingestor {
    pub fn new(replicator: Arc<Replicator>, alerts: Arc<AlertService>) -> Self {
        Self { replicator, alerts }
    }

    /// Stores `readings` on their write quorum, then evaluates alerts.
    /// Answers their keys once stored. An alerting failure is logged and
    /// counted but does not fail the ingest: the readings are stored, and a
    /// client retry would not help.
    pub async fn ingest(&self, readings: Vec<Reading>) -> ReplicationResult<Vec<Key>> {
        let keys: Vec<Key> = readings.iter().map(|r| r.key.clone()).collect();
        let count = readings.len() as u64;
        let batch = readings.clone();
        if let Err(error) = self.replicator.put(batch).await {
            metrics::counter!("energyguard_readings_rejected_total", "reason" => "unavailable")
                .increment(count);
            return Err(error);
        }
        metrics::counter!("energyguard_readings_accepted_total").increment(count);
        match self.alerts.observe(&readings).await {
            Ok(changes) => record_alert_metrics(&changes),
            Err(error) => {
                metrics::counter!("energyguard_alert_evaluation_errors_total").increment(1);
                tracing::error!(%error, "alert evaluation failed for stored readings");
            }
        }
        Ok(keys)
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
