//! Range digests: a compact fingerprint of what a node holds for a sensor
//! (or for one time bucket of a sensor), so replicas can be compared without
//! shipping their data. Pure; both storage implementations feed it rows in
//! key order, so equal contents give equal digests wherever computed.
//!
//! The fingerprint covers each record's timestamp, version and whether it is
//! a tombstone. The value is not needed: versions are unique per write, so
//! equal versions mean equal contents.
//!
//! A whole-sensor digest is folded from the digests of the sensor's UTC day
//! buckets ([`fold_days`]), never from its rows directly: a node can then
//! keep day digests and, after a write, recompute only the days it touched,
//! so comparing replicas costs what changed, not the sensor's whole history.

use xxhash_rust::xxh3::Xxh3;

use crate::reading::SensorId;
use crate::version::Version;

/// Which digests to compute.
#[derive(Debug, Clone, Default)]
pub struct DigestRequest {
    /// Only this sensor (all sensors when `None`).
    pub sensor: Option<SensorId>,
    /// Split each sensor's records into time buckets of this many
    /// milliseconds (one digest per sensor when `None`).
    pub bucket_ms: Option<i64>,
}

/// The fingerprint of one sensor's records, or of one bucket of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDigest {
    pub sensor: SensorId,
    /// Start of the bucket (epoch ms); `None` for a whole-sensor digest.
    pub bucket_start_ms: Option<i64>,
    /// Records in the range, tombstones included.
    pub count: u64,
    pub hash: u64,
}

/// The width of the buckets whole-sensor digests are folded from: a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// The whole-sensor digest of `sensor` from its day digests, given in time
/// order as (day start, count, hash).
pub fn fold_days(
    sensor: &SensorId,
    days: impl IntoIterator<Item = (i64, u64, u64)>,
) -> RangeDigest {
    let mut hasher = Xxh3::new();
    let mut count = 0;
    for (start, day_count, day_hash) in days {
        count += day_count;
        let mut day = [0u8; 24];
        day[..8].copy_from_slice(&start.to_le_bytes());
        day[8..16].copy_from_slice(&day_count.to_le_bytes());
        day[16..].copy_from_slice(&day_hash.to_le_bytes());
        hasher.update(&day);
    }
    RangeDigest {
        sensor: sensor.clone(),
        bucket_start_ms: None,
        count,
        hash: hasher.digest(),
    }
}

/// Accumulates digests from rows given in key order.
pub struct DigestBuilder {
    /// The bucket width rows are hashed in (a day for whole-sensor digests).
    bucket_ms: i64,
    /// Fold each sensor's buckets into one digest at the end.
    whole_sensors: bool,
    current: Option<(RangeDigest, Xxh3)>,
    done: Vec<RangeDigest>,
}

impl DigestBuilder {
    pub fn new(request: &DigestRequest) -> Self {
        let bucket_ms = request.bucket_ms.filter(|b| *b > 0);
        Self {
            bucket_ms: bucket_ms.unwrap_or(DAY_MS),
            whole_sensors: bucket_ms.is_none(),
            current: None,
            done: Vec::new(),
        }
    }

    /// Adds one row; rows must come in key order.
    pub fn push(
        &mut self,
        sensor: &SensorId,
        timestamp_ms: i64,
        version: Version,
        tombstone: bool,
    ) {
        let bucket = Some(timestamp_ms.div_euclid(self.bucket_ms) * self.bucket_ms);
        let same_range = self
            .current
            .as_ref()
            .is_some_and(|(d, _)| d.sensor == *sensor && d.bucket_start_ms == bucket);
        if !same_range {
            self.finish_current();
            let digest = RangeDigest {
                sensor: sensor.clone(),
                bucket_start_ms: bucket,
                count: 0,
                hash: 0,
            };
            self.current = Some((digest, Xxh3::new()));
        }
        if let Some((digest, hasher)) = self.current.as_mut() {
            digest.count += 1;
            // One update per record: the same bytes as timestamp, version
            // and tombstone flag fed one after another.
            let mut record = [0u8; 17];
            record[..8].copy_from_slice(&timestamp_ms.to_le_bytes());
            record[8..16].copy_from_slice(&version.0.to_le_bytes());
            record[16] = u8::from(tombstone);
            hasher.update(&record);
        }
    }

    pub fn finish(mut self) -> Vec<RangeDigest> {
        self.finish_current();
        if !self.whole_sensors {
            return self.done;
        }
        let mut whole = Vec::new();
        for sensor_days in self.done.chunk_by(|a, b| a.sensor == b.sensor) {
            let days = sensor_days
                .iter()
                .map(|d| (d.bucket_start_ms.unwrap_or_default(), d.count, d.hash));
            whole.push(fold_days(&sensor_days[0].sensor, days));
        }
        whole
    }

    fn finish_current(&mut self) {
        if let Some((mut digest, hasher)) = self.current.take() {
            digest.hash = hasher.digest();
            self.done.push(digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Row = (String, i64, u64, bool);

    fn digest(rows: &[Row], bucket_ms: Option<i64>) -> Vec<RangeDigest> {
        let mut sorted = rows.to_vec();
        sorted.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut builder = DigestBuilder::new(&DigestRequest {
            sensor: None,
            bucket_ms,
        });
        for (sensor, ts, version, tombstone) in &sorted {
            let sensor: SensorId = sensor.parse().expect("valid sensor");
            builder.push(&sensor, *ts, Version(*version), *tombstone);
        }
        builder.finish()
    }

    fn rows() -> impl Strategy<Value = Vec<Row>> {
        proptest::collection::btree_map(
            ("[ab]", -DAY_MS..3 * DAY_MS),
            (1u64..1_000, any::<bool>()),
            0..60,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|((s, ts), (v, t))| (s, ts, v, t))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn equal_contents_give_equal_digests(rows in rows(), bucket in prop::option::of(1i64..5_000)) {
            let mut reversed = rows.clone();
            reversed.reverse();
            prop_assert_eq!(digest(&rows, bucket), digest(&reversed, bucket));
        }

        #[test]
        fn any_change_to_a_record_changes_its_digest(
            rows in rows().prop_filter("non-empty", |r| !r.is_empty()),
            pick in any::<prop::sample::Index>(),
            change in 0..3u8,
        ) {
            let mut changed = rows.clone();
            let i = pick.index(changed.len());
            match change {
                0 => changed[i].2 += 1_000,
                1 => changed[i].3 = !changed[i].3,
                _ => { changed.remove(i); }
            }
            let sensor = &rows[i].0;
            let before: Vec<_> = digest(&rows, None).into_iter().filter(|d| d.sensor.as_str() == sensor).collect();
            let after: Vec<_> = digest(&changed, None).into_iter().filter(|d| d.sensor.as_str() == sensor).collect();
            prop_assert_ne!(before, after);
        }

        #[test]
        fn a_whole_sensor_digest_is_its_days_folded(rows in rows()) {
            let days = digest(&rows, Some(DAY_MS));
            let folded: Vec<_> = days
                .chunk_by(|a, b| a.sensor == b.sensor)
                .map(|d| fold_days(&d[0].sensor, d.iter().map(|d| (d.bucket_start_ms.unwrap_or_default(), d.count, d.hash))))
                .collect();
            prop_assert_eq!(digest(&rows, None), folded);
        }

        #[test]
        fn bucket_digests_partition_the_sensor(rows in rows(), bucket in 1i64..5_000) {
            let whole = digest(&rows, None);
            let buckets = digest(&rows, Some(bucket));
            for d in &whole {
                let total: u64 = buckets.iter().filter(|b| b.sensor == d.sensor).map(|b| b.count).sum();
                prop_assert_eq!(total, d.count);
            }
            for b in &buckets {
                let start = b.bucket_start_ms.expect("bucketed");
                prop_assert_eq!(start.rem_euclid(bucket), 0);
            }
        }
    }
}
