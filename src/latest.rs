//! The newest reading of every sensor, in memory: what the console lists
//! (last value, unit, time) without reading storage on every page view.
//!
//! Fed by the ingestor with every stored batch, and seeded at start by
//! [`LatestReadings::spawn_seed`], which walks storage sensor by sensor.
//!
//! Invariants:
//! * an entry only moves forward in time: a reading older than the one held
//!   (a late arrival, the seeding scan racing live ingest) never replaces it;
//! * deleting the reading held makes [`LatestReadings::refresh`] look the
//!   sensor up again in storage, so a deleted value is not shown;
//! * at most [`MAX_SENSORS`] sensors are held: beyond that new sensors are
//!   counted as untracked, so a flood of sensor ids cannot grow memory
//!   without bound.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::reading::{Key, Reading, SensorId, Unit, now_ms};
use crate::replication::{ReplicationResult, Replicator};
use crate::storage::{Record, Scan};

/// Sensors held at most.
pub const MAX_SENSORS: usize = 1_000_000;

/// Records read per storage call while looking a sensor up.
const PAGE: usize = 10_000;

/// How far back a sensor's newest reading is looked for, nearest first: a
/// lookup reads at most one window's readings beyond the newest.
const WINDOWS_MS: [i64; 4] = [3_600_000, 86_400_000, 31 * 86_400_000, 366 * 86_400_000];

/// A sensor's newest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub timestamp_ms: i64,
    pub value: f64,
    pub unit: Option<Unit>,
}

/// One page of the sensor list.
#[derive(Debug, Default)]
pub struct SensorPage {
    pub sensors: Vec<(SensorId, Latest)>,
    /// More sensors match after the last one on this page.
    pub more: bool,
}

#[derive(Default)]
pub struct LatestReadings {
    sensors: RwLock<BTreeMap<SensorId, Latest>>,
    /// The seeding walk over storage has finished.
    seeded: AtomicBool,
    /// Sensors seen but not held, because [`MAX_SENSORS`] were already.
    untracked: AtomicU64,
}

impl LatestReadings {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<SensorId, Latest>> {
        self.sensors.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<SensorId, Latest>> {
        self.sensors.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes stored readings into account.
    pub fn record(&self, readings: &[Reading]) {
        let mut sensors = self.write();
        for reading in readings {
            let latest = Latest {
                timestamp_ms: reading.key.timestamp_ms,
                value: reading.sample.value,
                unit: reading.sample.unit.clone(),
            };
            self.offer(&mut sensors, &reading.key.sensor, latest);
        }
    }

    /// Keeps `latest` for `sensor` unless a newer reading is held.
    fn offer(&self, sensors: &mut BTreeMap<SensorId, Latest>, sensor: &SensorId, latest: Latest) {
        if let Some(held) = sensors.get_mut(sensor) {
            if held.timestamp_ms <= latest.timestamp_ms {
                *held = latest;
            }
        } else if sensors.len() < MAX_SENSORS {
            sensors.insert(sensor.clone(), latest);
        } else {
            self.untracked.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, sensor: &SensorId) -> Option<Latest> {
        self.read().get(sensor).cloned()
    }

    /// Sensors held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Sensors seen but not held, because the list was full.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// How many sensors held satisfy `test`.
    pub fn count(&self, test: impl Fn(&SensorId, &Latest) -> bool) -> usize {
        self.read()
            .iter()
            .filter(|(id, latest)| test(id, latest))
            .count()
    }

    /// Whether the walk over storage at start has finished: until then the
    /// list may miss sensors that have not sent a reading since.
    pub fn is_seeded(&self) -> bool {
        self.seeded.load(Ordering::Acquire)
    }

    /// Up to `limit` sensors whose id contains `search` (ignoring case), in
    /// id order, after `after`.
    pub fn page(&self, search: &str, after: Option<&SensorId>, limit: usize) -> SensorPage {
        let search = search.to_lowercase();
        let sensors = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = sensors
            .range::<SensorId, _>((start, Bound::Unbounded))
            .filter(|(id, _)| search.is_empty() || id.as_str().to_lowercase().contains(&search));
        let page: Vec<(SensorId, Latest)> = matching
            .by_ref()
            .take(limit)
            .map(|(id, latest)| (id.clone(), latest.clone()))
            .collect();
        SensorPage {
            sensors: page,
            more: matching.next().is_some(),
        }
    }

    /// Looks `sensor` up in storage again, after its newest reading may have
    /// been deleted.
    pub async fn refresh(
        &self,
        replicator: &Replicator,
        sensor: &SensorId,
    ) -> ReplicationResult<()> {
        let found = newest_in_storage(replicator, sensor).await?;
        let mut sensors = self.write();
        match found {
            Some(latest) => {
                sensors.insert(sensor.clone(), latest);
            }
            None => {
                sensors.remove(sensor);
            }
        }
        Ok(())
    }

    /// Walks storage once, sensor by sensor, adding each one's newest
    /// reading. Retries after a failure (a node down at start) until done.
    pub fn spawn_seed(self: Arc<Self>, replicator: Arc<Replicator>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut after: Option<SensorId> = None;
            loop {
                match self.seed_from(&replicator, after.clone()).await {
                    Ok(()) => break,
                    Err((reached, error)) => {
                        tracing::warn!(%error, "listing sensors for the console; retrying");
                        after = reached;
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                }
            }
            self.seeded.store(true, Ordering::Release);
            tracing::info!(sensors = self.len(), "console sensor list ready");
        })
    }

    /// Seeds every sensor after `after`; on failure answers the last sensor
    /// done, to resume from.
    async fn seed_from(
        &self,
        replicator: &Replicator,
        mut after: Option<SensorId>,
    ) -> Result<(), (Option<SensorId>, crate::replication::ReplicationError)> {
        loop {
            let next = next_sensor(replicator, after.as_ref())
                .await
                .map_err(|e| (after.clone(), e))?;
            let Some(sensor) = next else {
                return Ok(());
            };
            if let Some(latest) = newest_in_storage(replicator, &sensor)
                .await
                .map_err(|e| (after.clone(), e))?
            {
                self.offer(&mut self.write(), &sensor, latest);
            }
            after = Some(sensor);
        }
    }
}

/// The first sensor after `after` with a live reading: one key seek.
async fn next_sensor(
    replicator: &Replicator,
    after: Option<&SensorId>,
) -> ReplicationResult<Option<SensorId>> {
    let scan = Scan {
        after: after.map(|sensor| Key {
            sensor: sensor.clone(),
            timestamp_ms: i64::MAX,
        }),
        limit: 1,
        ..Scan::default()
    };
    Ok(replicator.scan(scan).await?.pop().map(|r| r.key.sensor))
}

/// `sensor`'s newest live reading in storage, looked for in widening windows
/// back from now (readings stamped in the future included).
async fn newest_in_storage(
    replicator: &Replicator,
    sensor: &SensorId,
) -> ReplicationResult<Option<Latest>> {
    let now = now_ms();
    let mut before: Option<i64> = None;
    for from in WINDOWS_MS
        .map(|back| Some(now - back))
        .into_iter()
        .chain([None])
    {
        let window = Scan {
            sensor: Some(sensor.clone()),
            from_ms: from,
            to_ms: before,
            limit: usize::MAX,
            ..Scan::default()
        };
        let mut last: Option<Record> = None;
        replicator
            .scan_pages(window, PAGE, |page| {
                last = page.into_iter().next_back().or(last.take());
                ControlFlow::<()>::Continue(())
            })
            .await?;
        if let Some(sample) = last.and_then(|r| r.sample.map(|s| (r.key.timestamp_ms, s))) {
            let (timestamp_ms, sample) = sample;
            return Ok(Some(Latest {
                timestamp_ms,
                value: sample.value,
                unit: sample.unit,
            }));
        }
        before = from;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Sample;

    fn reading(sensor: &str, timestamp_ms: i64, value: f64) -> Reading {
        Reading {
            key: Key {
                sensor: sensor.parse().expect("a sensor id"),
                timestamp_ms,
            },
            sample: Sample { value, unit: None },
        }
    }

    #[test]
    fn an_older_reading_never_replaces_a_newer_one() {
        let latest = LatestReadings::default();
        latest.record(&[reading("a", 20, 2.0), reading("a", 10, 1.0)]);
        latest.record(&[reading("a", 15, 1.5)]);
        let a = latest.get(&"a".parse().expect("id")).expect("held");
        assert_eq!((a.timestamp_ms, a.value), (20, 2.0));
        latest.record(&[reading("a", 30, 3.0)]);
        assert_eq!(
            latest.get(&"a".parse().expect("id")).map(|l| l.value),
            Some(3.0)
        );
    }

    #[test]
    fn pages_follow_the_search_and_the_cursor() {
        let latest = LatestReadings::default();
        let readings: Vec<Reading> = ["meter-1", "Meter-2", "pv-1", "meter-3"]
            .iter()
            .map(|s| reading(s, 1, 1.0))
            .collect();
        latest.record(&readings);
        let ids = |page: &SensorPage| -> Vec<String> {
            page.sensors.iter().map(|(id, _)| id.to_string()).collect()
        };
        let first = latest.page("METER", None, 2);
        assert_eq!(ids(&first), ["Meter-2", "meter-1"]);
        assert!(first.more);
        let after = first.sensors.last().map(|(id, _)| id.clone());
        let second = latest.page("meter", after.as_ref(), 2);
        assert_eq!(ids(&second), ["meter-3"]);
        assert!(!second.more);
        assert_eq!(latest.page("", None, 10).sensors.len(), 4);
    }
}
