//! Whole-sensor digests kept between recoveries.
//!
//! Recovery compares one digest per sensor of the recovering node with each
//! of its peers'; computing them means reading every row each node holds
//! (≈ 300 ms at 850,000 rows per node here), whatever the outage missed. A
//! node keeps the digests it computed and, from every commit that changed
//! `readings`, the sensors that commit touched: the next request recomputes
//! only those, with a range scan each. The cache lives in memory: the first
//! request after a start reads everything.
//!
//! Why it is never stale: a sensor is marked *after* the commit that changed
//! it, and a refresh takes the marks *before* it starts reading. A change
//! whose mark a refresh took is in what that refresh reads; a change marked
//! later stays marked for the next one. Refreshes run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::reading::SensorId;
use crate::storage::RangeDigest;

#[derive(Default)]
pub(super) struct DigestCache {
    state: Mutex<State>,
    /// Held for a whole refresh, so two cannot interleave.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// `None` until a full computation filled it.
    digests: Option<BTreeMap<SensorId, RangeDigest>>,
    /// Sensors changed since their digest was computed.
    touched: BTreeSet<SensorId>,
}

/// What a refresh must compute.
pub(super) enum Refresh {
    /// Everything: the cache is empty.
    All,
    /// These sensors' digests.
    Sensors(Vec<SensorId>),
}

impl DigestCache {
    /// Marks sensors whose rows a committed transaction changed.
    pub(super) fn touch(&self, sensors: BTreeSet<SensorId>) {
        if !sensors.is_empty() {
            self.state().touched.extend(sensors);
        }
    }

    /// Answers every sensor's digest, in sensor order, computing what is
    /// missing or stale with `compute`.
    pub(super) async fn all<F, Fut>(
        &self,
        compute: F,
    ) -> crate::storage::StorageResult<Vec<RangeDigest>>
    where
        F: FnOnce(Refresh) -> Fut,
        Fut: Future<Output = crate::storage::StorageResult<Vec<RangeDigest>>>,
    {
        let _one_at_a_time = self.refreshing.lock().await;
        let refresh = {
            let mut state = self.state();
            let touched = std::mem::take(&mut state.touched);
            match state.digests.as_mut() {
                // Most sensors changed: one pass over the table beats a
                // range scan per sensor.
                Some(cached) if touched.len() * 2 <= cached.len().max(1) => {
                    // Dropped now: a sensor without rows any more gets no
                    // digest back.
                    for sensor in &touched {
                        cached.remove(sensor);
                    }
                    Refresh::Sensors(touched.into_iter().collect())
                }
                _ => {
                    state.digests = None;
                    Refresh::All
                }
            }
        };
        let computed = match compute(refresh).await {
            Ok(computed) => computed,
            Err(error) => {
                // The marks taken are gone: start from nothing next time.
                self.state().digests = None;
                return Err(error);
            }
        };
        let mut state = self.state();
        let digests = state.digests.get_or_insert_with(BTreeMap::new);
        for digest in computed {
            digests.insert(digest.sensor.clone(), digest);
        }
        Ok(digests.values().cloned().collect())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(sensor: &str, hash: u64) -> RangeDigest {
        RangeDigest {
            sensor: sensor.parse().expect("valid sensor"),
            bucket_start_ms: None,
            count: 1,
            hash,
        }
    }

    fn sensors(names: &[&str]) -> BTreeSet<SensorId> {
        names
            .iter()
            .map(|n| n.parse().expect("valid sensor"))
            .collect()
    }

    #[tokio::test]
    async fn recomputes_only_touched_sensors_and_drops_emptied_ones() {
        let cache = DigestCache::default();
        let first = cache
            .all(|refresh| async move {
                assert!(matches!(refresh, Refresh::All));
                Ok(vec![
                    digest("a", 1),
                    digest("b", 2),
                    digest("c", 3),
                    digest("d", 4),
                ])
            })
            .await
            .expect("first");
        assert_eq!(first.len(), 4);

        cache.touch(sensors(&["c", "d"]));
        let second = cache
            .all(|refresh| async move {
                let Refresh::Sensors(asked) = refresh else {
                    panic!("a full scan on a warm cache");
                };
                assert_eq!(asked, sensors(&["c", "d"]).into_iter().collect::<Vec<_>>());
                // `d` has no rows any more: no digest comes back for it.
                Ok(vec![digest("c", 30)])
            })
            .await
            .expect("second");
        assert_eq!(
            second,
            vec![digest("a", 1), digest("b", 2), digest("c", 30)]
        );
    }

    #[tokio::test]
    async fn most_sensors_touched_is_one_full_scan() {
        let cache = DigestCache::default();
        cache
            .all(|_| async { Ok(vec![digest("a", 1), digest("b", 2), digest("c", 3)]) })
            .await
            .expect("fill");
        cache.touch(sensors(&["a", "b"]));
        let after = cache
            .all(|refresh| async move {
                assert!(matches!(refresh, Refresh::All));
                Ok(vec![digest("a", 10), digest("b", 20)])
            })
            .await
            .expect("full");
        assert_eq!(after, vec![digest("a", 10), digest("b", 20)]);
    }

    #[tokio::test]
    async fn a_failed_refresh_starts_over_from_a_full_scan() {
        let cache = DigestCache::default();
        cache
            .all(|_| async { Ok(vec![digest("a", 1)]) })
            .await
            .expect("fill");
        cache.touch(sensors(&["a"]));
        let failed = cache
            .all(|_| async { Err(crate::storage::StorageError::Closed) })
            .await;
        assert!(failed.is_err());
        cache
            .all(|refresh| async move {
                assert!(matches!(refresh, Refresh::All));
                Ok(vec![digest("a", 2)])
            })
            .await
            .expect("refill");
    }
}
