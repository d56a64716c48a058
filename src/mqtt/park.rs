//! Readings parked for lack of write quorum, in `<data_dir>/parked.sqlite3`.
//!
//! An MQTT message is one stream shared by every sensor: if the consumer
//! waited for a sensor whose replicas cannot meet the write quorum, every
//! other sensor would wait behind it. Instead the consumer parks that
//! sensor's readings here (committed with `synchronous = full` before the
//! message is acknowledged) and goes on; the flusher ([`spawn_flusher`]) stores them through
//! the ingestor once the quorum is back, oldest first, and forgets each one
//! only after it is stored.
//!
//! Invariants:
//! * while a sensor has parked readings, every new reading of that sensor is
//!   parked behind them, so its readings reach storage and the alert engine
//!   in the order they arrived, each once (forgetting happens after storing;
//!   a crash in between stores the same keys again, which is idempotent);
//! * only the consumer adds and only the flusher forgets, so a sensor that
//!   is not parked when the consumer looks cannot become parked behind its
//!   back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Transaction, params};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::signalled;
use crate::ingest::{Door, Ingestor};
use crate::reading::{Key, Reading, Sample, SensorId, Unit};
use crate::storage::sqlite::{ReadPool, Synchronous, open_connection};
use crate::storage::worker::{Worker, WriteExecutor};
use crate::storage::{StorageError, StorageResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS parked (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor TEXT    NOT NULL,
    ts     INTEGER NOT NULL,
    value  REAL    NOT NULL,
    unit   TEXT
);
CREATE INDEX IF NOT EXISTS parked_by_sensor ON parked (sensor, seq);
";

/// Parked readings stored per ingest at most while flushing.
const FLUSH_CHUNK: usize = 5_000;
/// How often parked sensors are tried again while any are waiting.
const RETRY_EVERY: Duration = Duration::from_millis(500);

enum ParkWrite {
    Add(Vec<Reading>),
    Forget { sensor: SensorId, up_to: i64 },
}

struct ParkWriter;

impl WriteExecutor for ParkWriter {
    type Op = ParkWrite;
    type Out = u64;

    fn weight(op: &ParkWrite) -> usize {
        match op {
            ParkWrite::Add(readings) => readings.len(),
            ParkWrite::Forget { .. } => 1,
        }
    }

    fn execute(&mut self, tx: &Transaction<'_>, op: &ParkWrite) -> StorageResult<u64> {
        Ok(match op {
            ParkWrite::Add(readings) => {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO parked (sensor, ts, value, unit) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for r in readings {
                    insert.execute(params![
                        r.key.sensor.as_str(),
                        r.key.timestamp_ms,
                        r.sample.value,
                        r.sample.unit.as_ref().map(Unit::as_str),
                    ])?;
                }
                readings.len() as u64
            }
            ParkWrite::Forget { sensor, up_to } => tx.execute(
                "DELETE FROM parked WHERE sensor = ?1 AND seq <= ?2",
                params![sensor.as_str(), up_to],
            )? as u64,
        })
    }
}

/// The durable queue of parked readings, per sensor.
pub struct Park {
    writer: Worker<ParkWriter>,
    readers: Arc<ReadPool>,
    /// Readings parked per sensor (no entry: none). A `std::sync::Mutex`:
    /// held for a map update, never across an await.
    waiting: Mutex<HashMap<SensorId, u64>>,
    /// Signalled when readings are parked, to wake the flusher.
    parked: Notify,
}

impl Park {
    pub fn open(dir: &Path) -> StorageResult<Self> {
        crate::storage::ensure_dir(dir)?;
        let path = dir.join("parked.sqlite3");
        // Parked readings are acknowledged to the broker: always fsync'd.
        let connection = open_connection(&path, Synchronous::Full)?;
        connection.execute_batch(SCHEMA)?;
        let mut waiting = HashMap::new();
        {
            let mut counts =
                connection.prepare("SELECT sensor, count(*) FROM parked GROUP BY sensor")?;
            let mut rows = counts.query([])?;
            while let Some(row) = rows.next()? {
                let sensor: String = row.get(0)?;
                waiting.insert(parse_sensor(&sensor)?, row.get::<_, i64>(1)? as u64);
            }
        }
        let park = Self {
            writer: Worker::spawn("mqtt-park".into(), connection, ParkWriter)?,
            readers: Arc::new(ReadPool::new(path)),
            waiting: Mutex::new(waiting),
            parked: Notify::new(),
        };
        park.publish_gauge();
        Ok(park)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<SensorId, u64>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no sensor has readings parked.
    pub fn is_empty(&self) -> bool {
        self.waiting().is_empty()
    }

    pub fn is_parked(&self, sensor: &SensorId) -> bool {
        self.waiting().contains_key(sensor)
    }

    /// Readings parked in all.
    pub fn total(&self) -> u64 {
        self.waiting().values().sum()
    }

    fn publish_gauge(&self) {
        metrics::gauge!("energyguard_mqtt_parked_readings").set(self.total() as f64);
    }

    /// Durably parks `readings` (of any sensors, in arrival order).
    pub async fn add(&self, readings: Vec<Reading>) -> StorageResult<()> {
        if readings.is_empty() {
            return Ok(());
        }
        let mut per_sensor: HashMap<SensorId, u64> = HashMap::new();
        for r in &readings {
            *per_sensor.entry(r.key.sensor.clone()).or_default() += 1;
        }
        let count = readings.len() as u64;
        self.writer.submit(ParkWrite::Add(readings)).await?;
        {
            let mut waiting = self.waiting();
            for (sensor, added) in per_sensor {
                let entry = waiting.entry(sensor.clone()).or_default();
                if *entry == 0 {
                    tracing::warn!(
                        event = "readings_parked",
                        sensor = %sensor,
                        "parking MQTT readings: this sensor's replicas cannot meet the write quorum; \
                         they are stored once it is back"
                    );
                }
                *entry += added;
            }
        }
        metrics::counter!("energyguard_mqtt_parked_total").increment(count);
        self.publish_gauge();
        self.parked.notify_one();
        Ok(())
    }

    /// Up to `limit` of `sensor`'s parked readings, oldest first, with the
    /// sequence number of the last.
    async fn oldest(
        &self,
        sensor: &SensorId,
        limit: usize,
    ) -> StorageResult<Option<(i64, Vec<Reading>)>> {
        let sensor = sensor.clone();
        self.readers
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, ts, value, unit FROM parked WHERE sensor = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let mut rows = stmt.query(params![sensor.as_str(), limit as i64])?;
                let mut last = None;
                let mut readings = Vec::new();
                while let Some(row) = rows.next()? {
                    last = Some(row.get::<_, i64>(0)?);
                    let unit = match row.get_ref(3)?.as_str_or_null()? {
                        None => None,
                        Some(text) => Some(text.parse::<Unit>().map_err(|e| {
                            StorageError::Corrupt(format!("parked reading's unit: {e}"))
                        })?),
                    };
                    readings.push(Reading {
                        key: Key::new(sensor.clone(), row.get(1)?),
                        sample: Sample {
                            value: row.get(2)?,
                            unit,
                        },
                    });
                }
                Ok(last.map(|last| (last, readings)))
            })
            .await
    }

    /// Forgets `sensor`'s parked readings up to sequence number `up_to`.
    async fn forget(&self, sensor: &SensorId, up_to: i64) -> StorageResult<()> {
        let removed = self
            .writer
            .submit(ParkWrite::Forget {
                sensor: sensor.clone(),
                up_to,
            })
            .await?;
        {
            let mut waiting = self.waiting();
            if let Some(count) = waiting.get_mut(sensor) {
                *count = count.saturating_sub(removed);
                if *count == 0 {
                    waiting.remove(sensor);
                    tracing::info!(event = "parked_flushed", sensor = %sensor,
                        still_parked = waiting.values().sum::<u64>(),
                        "parked MQTT readings of the sensor all stored");
                }
            }
        }
        metrics::counter!("energyguard_mqtt_unparked_total").increment(removed);
        self.publish_gauge();
        Ok(())
    }

    /// Stores as many parked readings as the quorum allows, each sensor's
    /// oldest first; answers how many were stored.
    pub async fn flush(&self, ingestor: &Ingestor) -> u64 {
        let sensors: Vec<SensorId> = self.waiting().keys().cloned().collect();
        let mut stored = 0;
        for sensor in sensors {
            loop {
                let (up_to, readings) = match self.oldest(&sensor, FLUSH_CHUNK).await {
                    Ok(Some(found)) => found,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!(%error, "reading parked MQTT readings failed");
                        return stored;
                    }
                };
                let count = readings.len() as u64;
                if ingestor.try_ingest(readings, Door::Mqtt).await.is_err() {
                    // Still without its quorum: the next round tries again.
                    break;
                }
                if let Err(error) = self.forget(&sensor, up_to).await {
                    tracing::error!(%error, "forgetting stored parked readings failed");
                    return stored;
                }
                stored += count;
            }
        }
        stored
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.clear();
    }
}

fn parse_sensor(text: &str) -> StorageResult<SensorId> {
    text.parse()
        .map_err(|e| StorageError::Corrupt(format!("parked sensor {text:?}: {e}")))
}

/// The flusher: stores parked readings once their quorum is back, trying
/// every `RETRY_EVERY` while any are waiting, until `stop`.
pub fn spawn_flusher(
    park: Arc<Park>,
    ingestor: Arc<Ingestor>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let parked = park.parked.notified();
            if park.is_empty() {
                tokio::select! {
                    () = parked => {}
                    _ = signalled(&mut stop) => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = signalled(&mut stop) => return,
            }
            park.flush(&ingestor).await;
        }
    })
}
