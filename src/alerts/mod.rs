//! Threshold alerts: the pure [`engine`], and [`AlertService`], which keeps
//! thresholds, open episodes and alert history durable in
//! `<data_dir>/alerts.sqlite3` (apart from every storage node, so alerting
//! does not depend on any one node being up). A restart reloads open
//! episodes, so an alert that was firing stays open and is not fired again.
//!
//! Knows nothing of HTTP or MQTT: callers get the [`engine::Change`]s and
//! publish them where they like.

pub mod engine;
mod store;

use std::collections::HashMap;
use std::path::Path;

use engine::{Alert, AlertKind, AlertState, Change, SensorAlerts, Threshold, Transition};
use store::AlertStore;

use crate::reading::{Reading, SensorId};
use crate::storage::StorageResult;
use crate::storage::sqlite::Synchronous;

/// Filters of `GET /alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    pub sensor_id: Option<SensorId>,
    pub state: Option<AlertState>,
    /// Alerts still firing, or resolved at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    pub limit: usize,
}

struct Inner {
    thresholds: HashMap<SensorId, Threshold>,
    sensors: HashMap<SensorId, SensorAlerts>,
}

pub struct AlertService {
    store: AlertStore,
    /// A `tokio::sync::Mutex` because it is held across the store's commit:
    /// evaluating a batch and persisting its changes is one step, so two
    /// concurrent batches for one sensor can never open two episodes or
    /// persist their changes out of order.
    inner: tokio::sync::Mutex<Inner>,
    /// Every change, for publishers (MQTT). Sent under `inner`, so in order.
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// Changes buffered for a slow subscriber before it starts missing some.
const CHANGE_BUFFER: usize = 10_000;

impl AlertService {
    pub async fn open(data_dir: &Path, synchronous: Synchronous) -> StorageResult<Self> {
        let store = AlertStore::open(data_dir, synchronous)?;
        let thresholds: HashMap<SensorId, Threshold> = store
            .thresholds()
            .await?
            .into_iter()
            .map(|t| (t.sensor_id.clone(), t))
            .collect();
        let mut sensors: HashMap<SensorId, SensorAlerts> = HashMap::new();
        for (sensor, last_ms) in store.progress().await? {
            sensors.entry(sensor).or_default().last_ms = Some(last_ms);
        }
        for alert in store.unresolved().await? {
            let sensor = sensors.entry(alert.sensor_id.clone()).or_default();
            match (alert.state, alert.kind) {
                (AlertState::Pending, _) => sensor.pending = Some(alert),
                (_, AlertKind::Stale) => sensor.stale = Some(alert),
                _ => sensor.open = Some(alert),
            }
        }
        // Silence is measured from the start of this process: what the
        // sensors sent before a restart is not known to the service clock.
        let started = crate::reading::now_ms();
        for sensor in thresholds.keys() {
            sensors
                .entry(sensor.clone())
                .or_default()
                .last_seen_ms
                .get_or_insert(started);
        }
        Ok(Self {
            store,
            inner: tokio::sync::Mutex::new(Inner {
                thresholds,
                sensors,
            }),
            changes: tokio::sync::broadcast::channel(CHANGE_BUFFER).0,
        })
    }

    pub async fn set_threshold(&self, threshold: Threshold) -> StorageResult<Threshold> {
        let mut inner = self.inner.lock().await;
        self.store.put_threshold(threshold.clone()).await?;
        inner
            .sensors
            .entry(threshold.sensor_id.clone())
            .or_default()
            .last_seen_ms
            .get_or_insert_with(crate::reading::now_ms);
        inner
            .thresholds
            .insert(threshold.sensor_id.clone(), threshold.clone());
        Ok(threshold)
    }

    /// Removes a sensor's threshold and resolves its open episode at `now_ms`.
    /// Answers `None` if the sensor had no threshold.
    pub async fn remove_threshold(
        &self,
        sensor: &SensorId,
        now_ms: i64,
    ) -> StorageResult<Option<Vec<Change>>> {
        let mut inner = self.inner.lock().await;
        if !inner.thresholds.contains_key(sensor) {
            return Ok(None);
        }
        let open: Vec<Alert> = match inner.sensors.get_mut(sensor) {
            Some(state) => {
                state.pending = None;
                [state.open.take(), state.stale.take()]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            None => Vec::new(),
        };
        let changes: Vec<Change> = open
            .into_iter()
            .map(|alert| Change {
                transition: Transition::Resolved,
                alert: engine::resolve(alert, now_ms),
            })
            .collect();
        self.store
            .remove_threshold(sensor.clone(), alerts_of(&changes))
            .await?;
        inner.thresholds.remove(sensor);
        self.announce(&changes);
        Ok(Some(changes))
    }

    pub async fn thresholds(&self) -> Vec<Threshold> {
        let mut all: Vec<Threshold> = self
            .inner
            .lock()
            .await
            .thresholds
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
        all
    }

    /// Evaluates stored readings, in timestamp order per sensor, and persists
    /// what changed. Answers the changes (fired, updated, resolved).
    pub async fn observe(&self, readings: &[Reading]) -> StorageResult<Vec<Change>> {
        let mut inner = self.inner.lock().await;
        if inner.thresholds.is_empty() {
            return Ok(Vec::new());
        }
        let mut relevant: Vec<&Reading> = readings
            .iter()
            .filter(|r| inner.thresholds.contains_key(&r.key.sensor))
            .collect();
        if relevant.is_empty() {
            return Ok(Vec::new());
        }
        relevant.sort_by(|a, b| a.key.cmp(&b.key));
        let Inner {
            thresholds,
            sensors,
        } = &mut *inner;
        let mut changes = Vec::new();
        let mut progress: HashMap<SensorId, i64> = HashMap::new();
        let received = crate::reading::now_ms();
        // Pending excursions (waiting for `for`) as they were before this
        // batch, to persist what changed: they must survive a restart too.
        let mut pending_before: HashMap<SensorId, Option<String>> = HashMap::new();
        for reading in relevant {
            let threshold = &thresholds[&reading.key.sensor];
            let state = sensors.entry(reading.key.sensor.clone()).or_default();
            pending_before
                .entry(reading.key.sensor.clone())
                .or_insert_with(|| state.pending.as_ref().map(|p| p.id.clone()));
            changes.extend(engine::evaluate(
                threshold,
                state,
                reading.key.timestamp_ms,
                reading.sample.value,
                received,
            ));
            if let Some(last) = state.last_ms {
                progress.insert(reading.key.sensor.clone(), last);
            }
        }
        let mut alerts = alerts_of(&changes);
        let mut dropped = Vec::new();
        for (sensor, before) in pending_before {
            let now = sensors.get(&sensor).and_then(|s| s.pending.clone());
            if let Some(before) = before.filter(|id| now.as_ref().is_none_or(|p| p.id != *id)) {
                // Ended as a short spike, or fired (then the row is no longer
                // pending and stays).
                dropped.push(before);
            }
            alerts.extend(now);
        }
        self.store
            .record(alerts, progress.into_iter().collect(), dropped)
            .await?;
        self.announce(&changes);
        Ok(changes)
    }

    /// Raises `stale` for sensors silent longer than their `stale_after`, by
    /// the service's clock at `now_ms`. Called periodically.
    pub async fn tick(&self, now_ms: i64) -> StorageResult<Vec<Change>> {
        let mut inner = self.inner.lock().await;
        let Inner {
            thresholds,
            sensors,
        } = &mut *inner;
        let mut changes = Vec::new();
        for threshold in thresholds.values().filter(|t| t.stale_after_ms.is_some()) {
            let state = sensors.entry(threshold.sensor_id.clone()).or_default();
            changes.extend(engine::tick(threshold, state, now_ms));
        }
        if !changes.is_empty() {
            self.store
                .record(alerts_of(&changes), Vec::new(), Vec::new())
                .await?;
            self.announce(&changes);
        }
        Ok(changes)
    }

    /// Subscribes to every future change (fired, updated, resolved).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn announce(&self, changes: &[Change]) {
        for change in changes {
            // No subscriber is fine: nobody publishes alerts then.
            let _ = self.changes.send(change.clone());
        }
    }

    pub async fn alerts(&self, query: AlertQuery) -> StorageResult<Vec<Alert>> {
        self.store.alerts(query).await
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// The final snapshot of each alert a list of changes touched.
fn alerts_of(changes: &[Change]) -> Vec<Alert> {
    let mut latest: Vec<Alert> = Vec::new();
    for change in changes {
        match latest.iter_mut().find(|a| a.id == change.alert.id) {
            Some(slot) => *slot = change.alert.clone(),
            None => latest.push(change.alert.clone()),
        }
    }
    latest
}
