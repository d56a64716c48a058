//! Day digests kept between recoveries.
//!
//! Recovery compares one digest per sensor of the recovering node with each
//! of its peers'. A whole-sensor digest is folded from the sensor's day
//! digests (see [`crate::storage::digest`]), so a node keeps every sensor's
//! day digests and, from every commit that changed `readings`, the days that
//! commit touched: the next request recomputes only those days, with a range
//! scan each, and folds the sensors they belong to again. A recovery then
//! costs the node what changed since the last one, not its whole history.
//! The cache lives in memory: the first request after a start reads
//! everything.
//!
//! Why it is never stale: a day is marked *after* the commit that changed
//! it, and a refresh takes the marks *before* it starts reading. A change
//! whose mark a refresh took is in what that refresh reads; a change marked
//! later stays marked for the next one. Refreshes run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::reading::SensorId;
use crate::storage::digest::{DAY_MS, fold_days};
use crate::storage::{RangeDigest, Record};

#[derive(Default)]
pub(super) struct DigestCache {
    state: Mutex<State>,
    /// Held for a whole refresh, so two cannot interleave.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// `None` until a full computation filled it.
    sensors: Option<BTreeMap<SensorId, SensorDigests>>,
    touched: Touched,
}

/// One sensor's day digests and their fold.
struct SensorDigests {
    /// (day start, count, hash), in day order; only days with rows.
    days: Vec<(i64, u64, u64)>,
    whole: RangeDigest,
}

/// What commits changed since the last refresh.
#[derive(Default)]
pub(super) struct Touched {
    /// (sensor, day start) of changed rows.
    days: BTreeSet<(SensorId, i64)>,
    /// Sensors changed on every day (removed whole).
    sensors: BTreeSet<SensorId>,
}

impl Touched {
    /// Marks the days of key-ordered `records`.
    pub(super) fn records(&mut self, records: &[&Record]) {
        let mut days: Vec<(&SensorId, i64)> = records
            .iter()
            .map(|r| (&r.key.sensor, day_of(r.key.timestamp_ms)))
            .collect();
        days.dedup();
        self.days
            .extend(days.into_iter().map(|(s, day)| (s.clone(), day)));
    }

    /// Marks every day of `sensors`.
    pub(super) fn sensors<'a>(&mut self, sensors: impl IntoIterator<Item = &'a SensorId>) {
        self.sensors.extend(sensors.into_iter().cloned());
    }

    fn is_empty(&self) -> bool {
        self.days.is_empty() && self.sensors.is_empty()
    }

    fn append(&mut self, other: &mut Touched) {
        self.days.append(&mut other.days);
        self.sensors.append(&mut other.sensors);
    }
}

fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY_MS) * DAY_MS
}

/// What a refresh must compute: day digests (`bucket_start_ms` set).
pub(super) enum Refresh {
    /// Every sensor's days: the cache is empty, or most of it changed.
    All,
    /// These sensors' days, all of them.
    Sensors(Vec<SensorId>),
    /// These days of these sensors.
    Days(Vec<(SensorId, i64)>),
}

impl DigestCache {
    /// Marks what a committed transaction changed.
    pub(super) fn touch(&self, mut touched: Touched) {
        if !touched.is_empty() {
            self.state().touched.append(&mut touched);
        }
    }

    /// Answers every sensor's whole digest, in sensor order, computing the
    /// day digests that are missing or stale with `compute` (one call per
    /// kind of refresh needed).
    pub(super) async fn all<F, Fut>(
        &self,
        compute: F,
    ) -> crate::storage::StorageResult<Vec<RangeDigest>>
    where
        F: Fn(Refresh) -> Fut,
        Fut: Future<Output = crate::storage::StorageResult<Vec<RangeDigest>>>,
    {
        let _one_at_a_time = self.refreshing.lock().await;
        let (touched, full) = {
            let mut state = self.state();
            let touched = std::mem::take(&mut state.touched);
            let full = match &state.sensors {
                None => true,
                // Most days changed: one pass over the table beats a range
                // scan per day.
                Some(cached) => {
                    let days: usize = cached.values().map(|s| s.days.len()).sum();
                    touched.days.len() * 2 > days.max(1)
                        || touched.sensors.len() * 2 > cached.len().max(1)
                }
            };
            (touched, full)
        };
        let refreshed = if full {
            compute(Refresh::All).await.map(|days| (days, None))
        } else {
            self.compute_touched(&compute, touched)
                .await
                .map(|(days, touched)| (days, Some(touched)))
        };
        let mut state = self.state();
        match refreshed {
            Ok((days, None)) => {
                state.sensors = Some(by_sensor(days));
            }
            Ok((days, Some(touched))) => {
                let cached = state.sensors.get_or_insert_with(BTreeMap::new);
                merge(cached, touched, days);
            }
            Err(error) => {
                // The marks taken are gone: start from nothing next time.
                state.sensors = None;
                return Err(error);
            }
        }
        Ok(state
            .sensors
            .iter()
            .flat_map(|s| s.values().map(|d| d.whole.clone()))
            .collect())
    }

    /// Computes the touched sensors' and days' digests; answers them with
    /// what was touched, for [`merge`].
    async fn compute_touched<F, Fut>(
        &self,
        compute: &F,
        touched: Touched,
    ) -> crate::storage::StorageResult<(Vec<RangeDigest>, Touched)>
    where
        F: Fn(Refresh) -> Fut,
        Fut: Future<Output = crate::storage::StorageResult<Vec<RangeDigest>>>,
    {
        let mut days = Vec::new();
        if !touched.sensors.is_empty() {
            days.extend(
                compute(Refresh::Sensors(touched.sensors.iter().cloned().collect())).await?,
            );
        }
        let only_days: Vec<(SensorId, i64)> = touched
            .days
            .iter()
            .filter(|(sensor, _)| !touched.sensors.contains(sensor))
            .cloned()
            .collect();
        if !only_days.is_empty() {
            days.extend(compute(Refresh::Days(only_days)).await?);
        }
        Ok((days, touched))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Groups day digests by sensor and folds each sensor's.
fn by_sensor(days: Vec<RangeDigest>) -> BTreeMap<SensorId, SensorDigests> {
    let mut grouped: BTreeMap<SensorId, Vec<(i64, u64, u64)>> = BTreeMap::new();
    for d in days {
        grouped.entry(d.sensor).or_default().push((
            d.bucket_start_ms.unwrap_or_default(),
            d.count,
            d.hash,
        ));
    }
    grouped
        .into_iter()
        .map(|(sensor, mut days)| {
            days.sort_unstable_by_key(|d| d.0);
            let whole = fold_days(&sensor, days.iter().copied());
            (sensor, SensorDigests { days, whole })
        })
        .collect()
}

/// Replaces the touched sensors and days in `cached` by their recomputed
/// `days` (a touched day without rows any more is dropped, and so is a
/// sensor left without days), then folds the sensors changed again.
fn merge(cached: &mut BTreeMap<SensorId, SensorDigests>, touched: Touched, days: Vec<RangeDigest>) {
    let mut fresh = by_sensor(days);
    let mut changed: BTreeSet<SensorId> = touched.sensors.clone();
    for sensor in &touched.sensors {
        cached.remove(sensor);
    }
    for (sensor, day) in touched.days {
        if touched.sensors.contains(&sensor) {
            continue;
        }
        if let Some(entry) = cached.get_mut(&sensor) {
            entry.days.retain(|d| d.0 != day);
        }
        changed.insert(sensor);
    }
    for sensor in changed {
        let mut days = cached.remove(&sensor).map(|e| e.days).unwrap_or_default();
        if let Some(recomputed) = fresh.remove(&sensor) {
            days.extend(recomputed.days);
            days.sort_unstable_by_key(|d| d.0);
        }
        if !days.is_empty() {
            let whole = fold_days(&sensor, days.iter().copied());
            cached.insert(sensor, SensorDigests { days, whole });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DigestRequest;
    use crate::storage::digest::DigestBuilder;
    use crate::version::Version;

    /// Rows (sensor, timestamp, version): the contents of a toy node.
    type Rows = BTreeMap<(SensorId, i64), u64>;

    fn sensor(name: &str) -> SensorId {
        name.parse().expect("valid sensor")
    }

    /// What a node computes for `refresh` over `rows`.
    fn compute(rows: &Rows, refresh: &Refresh) -> Vec<RangeDigest> {
        let mut builder = DigestBuilder::new(&DigestRequest {
            sensor: None,
            bucket_ms: Some(DAY_MS),
        });
        for ((s, ts), version) in rows {
            let wanted = match refresh {
                Refresh::All => true,
                Refresh::Sensors(sensors) => sensors.contains(s),
                Refresh::Days(days) => days.contains(&(s.clone(), day_of(*ts))),
            };
            if wanted {
                builder.push(s, *ts, Version(*version), false);
            }
        }
        builder.finish()
    }

    /// The whole-sensor digests computed from nothing.
    fn from_scratch(rows: &Rows) -> Vec<RangeDigest> {
        let mut builder = DigestBuilder::new(&DigestRequest::default());
        for ((s, ts), version) in rows {
            builder.push(s, *ts, Version(*version), false);
        }
        builder.finish()
    }

    /// Refreshes `cache` over `rows`, recording the kinds of refresh asked.
    async fn refresh(cache: &DigestCache, rows: &Rows) -> (Vec<RangeDigest>, Vec<&'static str>) {
        let asked = Mutex::new(Vec::new());
        let digests = cache
            .all(|refresh| {
                let kind = match &refresh {
                    Refresh::All => "all",
                    Refresh::Sensors(_) => "sensors",
                    Refresh::Days(_) => "days",
                };
                asked.lock().expect("lock").push(kind);
                let days = compute(rows, &refresh);
                async move { Ok(days) }
            })
            .await
            .expect("refresh");
        (digests, asked.into_inner().expect("lock"))
    }

    fn write(rows: &mut Rows, touched: &mut Touched, s: &str, ts: i64, version: u64) {
        rows.insert((sensor(s), ts), version);
        touched.days.insert((sensor(s), day_of(ts)));
    }

    #[tokio::test]
    async fn recomputes_only_touched_days_and_equals_a_full_computation() {
        let cache = DigestCache::default();
        let mut rows = Rows::new();
        let mut ignored = Touched::default();
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            for day in 0..10 {
                write(&mut rows, &mut ignored, s, day * DAY_MS + i as i64, 1);
            }
        }
        let (first, asked) = refresh(&cache, &rows).await;
        assert_eq!(asked, ["all"]);
        assert_eq!(first, from_scratch(&rows));

        // A new day for `a`, a changed day for `b`, `c` removed whole.
        let mut touched = Touched::default();
        write(&mut rows, &mut touched, "a", 10 * DAY_MS, 2);
        write(&mut rows, &mut touched, "b", 3 * DAY_MS + 7, 3);
        rows.retain(|(s, _), _| s.as_str() != "c");
        touched.sensors([&sensor("c")]);
        cache.touch(touched);
        let (second, asked) = refresh(&cache, &rows).await;
        assert_eq!(asked, ["sensors", "days"]);
        assert_eq!(second, from_scratch(&rows));
        assert_eq!(second.len(), 3, "a sensor without rows has no digest");
    }

    #[tokio::test]
    async fn a_day_emptied_is_dropped_from_its_sensor() {
        let cache = DigestCache::default();
        let mut rows = Rows::new();
        let mut ignored = Touched::default();
        for day in 0..6 {
            write(&mut rows, &mut ignored, "a", day * DAY_MS, 1);
            write(&mut rows, &mut ignored, "b", day * DAY_MS, 1);
        }
        refresh(&cache, &rows).await;
        rows.remove(&(sensor("a"), 2 * DAY_MS));
        let mut touched = Touched::default();
        touched.days.insert((sensor("a"), 2 * DAY_MS));
        cache.touch(touched);
        let (after, asked) = refresh(&cache, &rows).await;
        assert_eq!(asked, ["days"]);
        assert_eq!(after, from_scratch(&rows));
    }

    #[tokio::test]
    async fn most_days_touched_is_one_full_scan() {
        let cache = DigestCache::default();
        let mut rows = Rows::new();
        let mut touched = Touched::default();
        write(&mut rows, &mut touched, "a", 0, 1);
        write(&mut rows, &mut touched, "b", 0, 1);
        refresh(&cache, &rows).await;
        let mut touched = Touched::default();
        write(&mut rows, &mut touched, "a", DAY_MS, 2);
        write(&mut rows, &mut touched, "b", DAY_MS, 2);
        cache.touch(touched);
        let (after, asked) = refresh(&cache, &rows).await;
        assert_eq!(asked, ["all"]);
        assert_eq!(after, from_scratch(&rows));
    }

    #[tokio::test]
    async fn a_failed_refresh_starts_over_from_a_full_scan() {
        let cache = DigestCache::default();
        let mut rows = Rows::new();
        let mut touched = Touched::default();
        write(&mut rows, &mut touched, "a", 0, 1);
        refresh(&cache, &rows).await;
        let mut touched = Touched::default();
        write(&mut rows, &mut touched, "a", 5, 2);
        cache.touch(touched);
        let failed = cache
            .all(|_| async { Err(crate::storage::StorageError::Closed) })
            .await;
        assert!(failed.is_err());
        let (after, asked) = refresh(&cache, &rows).await;
        assert_eq!(asked, ["all"]);
        assert_eq!(after, from_scratch(&rows));
    }
}
