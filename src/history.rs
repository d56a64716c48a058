//! History aggregation (`/sensor/<id>/history` with `every`, `agg` and
//! `tz`). Pure functions over points in time order.
//!
//! Buckets start at multiples of `every` since the epoch in UTC, or, with a
//! time zone, in that zone's local time ([`Buckets`]): `every=1d` buckets
//! start at local midnight (so a day across a daylight-saving change holds
//! 23 or 25 hours), and `1h` buckets at local hours (each hour of a repeated
//! local hour its own bucket).
//!
//! `energy` integrates the value over time with the trapezoid rule, in
//! unit·hours (W → Wh). A segment between two readings further apart than
//! `max_gap` is not bridged (the meter was silent; guessing would invent
//! energy). Segments that cross a bucket boundary are split at it, with the
//! value interpolated linearly, so each bucket gets exactly its share.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{RoundMode, Timestamp, Unit, ZonedRound};
use serde::Serialize;

use std::ops::ControlFlow;

use crate::reading::{InvalidInput, format_timestamp};
use crate::replication::{ReplicationResult, Replicator};
use crate::storage::Scan;

const HOUR_MS: f64 = 3_600_000.0;
const DAY_MS: i64 = 86_400_000;

/// Where buckets of `every` start.
#[derive(Debug, Clone)]
pub enum Buckets {
    /// At multiples of `every` since the epoch.
    Utc { every_ms: i64 },
    /// At multiples of `every` in `zone`'s local time: whole local days
    /// (from local midnight) when `every` is a whole number of days,
    /// otherwise local hours, minutes or seconds (`every` dividing the next
    /// larger unit).
    Local { every_ms: i64, zone: TimeZone },
}

impl Buckets {
    /// Buckets of `every_ms` in `zone` (UTC when `None`). `every` must be a
    /// whole number of days, or divide a day evenly, to follow a zone.
    pub fn new(every_ms: i64, zone: Option<TimeZone>) -> Result<Self, InvalidInput> {
        let Some(zone) = zone else {
            return Ok(Self::Utc { every_ms });
        };
        if every_ms % DAY_MS != 0 && sub_day_unit(every_ms).is_none() {
            return Err(InvalidInput::new(
                "every",
                "with tz, must be whole days or divide a day evenly (such as 15m, 1h, 6h)",
            ));
        }
        Ok(Self::Local { every_ms, zone })
    }

    /// The start of the bucket holding `ts` (epoch ms).
    pub fn start_of(&self, ts: i64) -> i64 {
        match self {
            Self::Utc { every_ms } => ts.div_euclid(*every_ms) * every_ms,
            Self::Local { every_ms, zone } => {
                local_start_of(ts, *every_ms, zone).unwrap_or(ts.div_euclid(*every_ms) * every_ms)
            }
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next_start(&self, start: i64) -> i64 {
        match self {
            Self::Utc { every_ms } => start + every_ms,
            Self::Local { every_ms, .. } => {
                // A local bucket is within an hour or two of `every` long
                // (daylight saving): look past its nominal end until the
                // bucket changes.
                let mut probe = start + every_ms;
                while self.start_of(probe) <= start {
                    probe += HOUR_MS as i64;
                }
                let mut end = self.start_of(probe);
                while end > start + 1 && self.start_of(end - 1) > start {
                    end = self.start_of(end - 1);
                }
                end
            }
        }
    }

    fn every_ms(&self) -> i64 {
        match self {
            Self::Utc { every_ms } | Self::Local { every_ms, .. } => *every_ms,
        }
    }
}

/// `every` as a unit and an increment that divides the next larger unit
/// (hours of a day, minutes of an hour, seconds of a minute).
fn sub_day_unit(every_ms: i64) -> Option<(Unit, i64)> {
    let (unit, increment, per_next) = if every_ms % 3_600_000 == 0 {
        (Unit::Hour, every_ms / 3_600_000, 24)
    } else if every_ms % 60_000 == 0 {
        (Unit::Minute, every_ms / 60_000, 60)
    } else if every_ms % 1_000 == 0 {
        (Unit::Second, every_ms / 1_000, 60)
    } else {
        return None;
    };
    (per_next % increment == 0).then_some((unit, increment))
}

/// The local bucket start of `ts`: its local day (or run of days) floored
/// from the civil epoch, or its local time truncated to `every`, resolving
/// a repeated local time with the offset `ts` itself has.
fn local_start_of(ts: i64, every_ms: i64, zone: &TimeZone) -> Option<i64> {
    let zoned = Timestamp::from_millisecond(ts).ok()?.to_zoned(zone.clone());
    let start = if every_ms % DAY_MS == 0 {
        let days = every_ms / DAY_MS;
        let epoch = jiff::civil::date(1970, 1, 1);
        let since = (zoned.date() - epoch).get_days() as i64;
        let floored = epoch
            .checked_add(jiff::Span::new().days(since.div_euclid(days) * days))
            .ok()?;
        floored.to_zoned(zone.clone()).ok()?
    } else {
        let (unit, increment) = sub_day_unit(every_ms)?;
        zoned
            .round(
                ZonedRound::new()
                    .smallest(unit)
                    .increment(increment)
                    .mode(RoundMode::Trunc),
            )
            .ok()?
    };
    Some(start.timestamp().as_millisecond())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Mean,
    Min,
    Max,
    Sum,
    Count,
    Last,
    Energy,
}

impl std::str::FromStr for Aggregate {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "mean" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "sum" => Self::Sum,
            "count" => Self::Count,
            "last" => Self::Last,
            "energy" => Self::Energy,
            _ => {
                return Err(InvalidInput::new(
                    "agg",
                    "must be one of mean, min, max, sum, count, last, energy",
                ));
            }
        })
    }
}

/// Parses a duration such as `30s`, `1m`, `15m`, `1h`, `1d` into milliseconds.
pub fn parse_duration(field: &str, text: &str) -> Result<i64, InvalidInput> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(InvalidInput::new(
                field,
                format!("{text:?} is not a duration like 30s, 15m, 1h or 1d"),
            ));
        }
    };
    match number.parse::<i64>() {
        Ok(n) if n > 0 && n <= 366 * 86_400_000 / unit_ms => Ok(n * unit_ms),
        _ => Err(InvalidInput::new(
            field,
            format!("{text:?} must be a positive duration of at most a year"),
        )),
    }
}

/// One bucket of an aggregated history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    #[serde(serialize_with = "as_timestamp")]
    pub timestamp: i64,
    pub value: f64,
    /// Readings in the bucket.
    pub count: u64,
}

/// One bucket's lowest, mean and highest reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub start_ms: i64,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

fn as_timestamp<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*ms))
}

#[derive(Default)]
struct Accumulator {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    energy: f64,
}

/// Readings further apart than this are not bridged by `energy` unless a
/// request says otherwise: the meter was silent, not steady.
pub const DEFAULT_MAX_GAP_MS: i64 = 15 * 60_000;

/// Buckets in one answer at most: more is refused before they are made.
pub const MAX_BUCKETS: usize = 100_000;

/// The shortest and longest `every`.
pub const MIN_EVERY_MS: i64 = 1_000;
pub const MAX_EVERY_MS: i64 = 366 * 86_400_000;

/// An answer would hold more than [`MAX_BUCKETS`] buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyBuckets;

/// Aggregates points (timestamp ms, value) pushed in time order into
/// buckets of `every_ms` aligned to the epoch, holding at most
/// [`MAX_BUCKETS`] of them: a point or a bridged segment that would need
/// more is refused before its buckets are made. Buckets without readings are
/// left out, except that `energy` also reports buckets a bridged segment
/// crossed. Memory: the buckets, whatever the number of points.
pub struct Aggregator {
    buckets_of: Buckets,
    agg: Aggregate,
    max_gap_ms: i64,
    buckets: BTreeMap<i64, Accumulator>,
    previous: Option<(i64, f64)>,
    /// The last bucket looked up, `[start, end)`: points come in time
    /// order, so most fall in it and need no time-zone arithmetic.
    last_bucket: Option<(i64, i64)>,
}

impl Aggregator {
    pub fn new(buckets_of: Buckets, agg: Aggregate, max_gap_ms: i64) -> Self {
        Self {
            buckets_of,
            agg,
            max_gap_ms,
            buckets: BTreeMap::new(),
            previous: None,
            last_bucket: None,
        }
    }

    fn start_of(&mut self, ts: i64) -> i64 {
        if let Some((start, end)) = self.last_bucket
            && (start..end).contains(&ts)
        {
            return start;
        }
        let start = self.buckets_of.start_of(ts);
        self.last_bucket = Some((start, self.buckets_of.next_start(start)));
        start
    }

    /// Whether `more` new buckets still fit.
    fn room_for(&self, more: usize) -> Result<(), TooManyBuckets> {
        if self.buckets.len().saturating_add(more) > MAX_BUCKETS {
            Err(TooManyBuckets)
        } else {
            Ok(())
        }
    }

    pub fn push(&mut self, ts: i64, value: f64) -> Result<(), TooManyBuckets> {
        let start = self.start_of(ts);
        if !self.buckets.contains_key(&start) {
            self.room_for(1)?;
        }
        let b = self.buckets.entry(start).or_insert_with(|| Accumulator {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Accumulator::default()
        });
        b.count += 1;
        b.sum += value;
        b.min = b.min.min(value);
        b.max = b.max.max(value);
        b.last = value;
        if self.agg == Aggregate::Energy
            && let Some((t0, v0)) = self.previous
        {
            self.bridge((t0, v0), (ts, value))?;
        }
        self.previous = Some((ts, value));
        Ok(())
    }

    /// Shares the trapezoid between two readings among the buckets it
    /// crosses.
    fn bridge(&mut self, (t0, v0): (i64, f64), (t1, v1): (i64, f64)) -> Result<(), TooManyBuckets> {
        if t1 <= t0 || t1 - t0 > self.max_gap_ms {
            return Ok(());
        }
        // At most one more than the nominal count: local buckets can be
        // shorter than `every` by a daylight-saving shift.
        let every_ms = self.buckets_of.every_ms();
        let crossed = ((self.start_of(t1) - self.start_of(t0)) / every_ms) as usize + 1;
        self.room_for(crossed)?;
        let value_at = |t: i64| v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64;
        let mut from = t0;
        while from < t1 {
            let start = self.start_of(from);
            let end = self
                .last_bucket
                .map_or_else(|| self.buckets_of.next_start(start), |(_, end)| end);
            let to = end.min(t1);
            let area = (value_at(from) + value_at(to)) / 2.0 * (to - from) as f64 / HOUR_MS;
            self.buckets.entry(start).or_default().energy += area;
            from = to;
        }
        Ok(())
    }

    /// Every bucket with readings as its lowest, mean and highest value:
    /// what a chart draws.
    pub fn finish_spread(self) -> Vec<Spread> {
        self.buckets
            .into_iter()
            .filter(|(_, b)| b.count > 0)
            .map(|(start_ms, b)| Spread {
                start_ms,
                min: b.min,
                mean: b.sum / b.count as f64,
                max: b.max,
            })
            .collect()
    }

    pub fn finish(self) -> Vec<Bucket> {
        let agg = self.agg;
        self.buckets
            .into_iter()
            .map(|(timestamp, b)| Bucket {
                timestamp,
                count: b.count,
                value: match agg {
                    Aggregate::Mean => b.sum / b.count as f64,
                    Aggregate::Min => b.min,
                    Aggregate::Max => b.max,
                    Aggregate::Sum => b.sum,
                    Aggregate::Count => b.count as f64,
                    Aggregate::Last => b.last,
                    Aggregate::Energy => b.energy,
                },
            })
            .collect()
    }
}

/// Pushes every live reading `range` admits into `aggregator`, read from
/// `replicator` a page of [`MAX_BUCKETS`] records at a time; stops at the
/// first point that would need a bucket past the cap.
pub async fn aggregate_range(
    replicator: &Replicator,
    range: Scan,
    aggregator: &mut Aggregator,
) -> ReplicationResult<Result<(), TooManyBuckets>> {
    let range = Scan {
        limit: usize::MAX,
        ..range
    };
    let refused = replicator
        .scan_pages(range, MAX_BUCKETS, |page| {
            for record in page {
                if let Some(sample) = record.sample
                    && let Err(too_many) = aggregator.push(record.key.timestamp_ms, sample.value)
                {
                    return ControlFlow::Break(too_many);
                }
            }
            ControlFlow::Continue(())
        })
        .await?;
    Ok(refused.map_or(Ok(()), Err))
}

/// [`Aggregator`] over points given at once, in time order.
pub fn aggregate(
    points: &[(i64, f64)],
    buckets_of: Buckets,
    agg: Aggregate,
    max_gap_ms: i64,
) -> Result<Vec<Bucket>, TooManyBuckets> {
    let mut aggregator = Aggregator::new(buckets_of, agg, max_gap_ms);
    for &(ts, value) in points {
        aggregator.push(ts, value)?;
    }
    Ok(aggregator.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn utc(every_ms: i64) -> Buckets {
        Buckets::Utc { every_ms }
    }

    fn zone(name: &str) -> Option<TimeZone> {
        Some(TimeZone::get(name).expect("a known zone"))
    }

    fn ms(rfc3339: &str) -> i64 {
        rfc3339
            .parse::<Timestamp>()
            .expect("a timestamp")
            .as_millisecond()
    }

    /// Starts of the buckets, in order, that hourly points from `from` for
    /// `hours` hours fall into.
    fn starts(buckets: &Buckets, from: &str, hours: i64) -> Vec<i64> {
        let points: Vec<(i64, f64)> = (0..hours).map(|h| (ms(from) + h * HOUR, 1.0)).collect();
        aggregate(&points, buckets.clone(), Aggregate::Count, HOUR)
            .expect("within the cap")
            .iter()
            .map(|b| b.timestamp)
            .collect()
    }

    #[test]
    fn daily_buckets_start_at_local_midnight_across_daylight_saving() {
        let rome = Buckets::new(DAY_MS, zone("Europe/Rome")).expect("days");
        // 2025-03-30 has 23 hours in Rome, 2025-10-26 has 25.
        assert_eq!(
            starts(&rome, "2025-03-29T12:00:00Z", 48),
            vec![
                ms("2025-03-28T23:00:00Z"),
                ms("2025-03-29T23:00:00Z"),
                ms("2025-03-30T22:00:00Z")
            ]
        );
        assert_eq!(
            starts(&rome, "2025-10-26T00:00:00Z", 25),
            vec![ms("2025-10-25T22:00:00Z"), ms("2025-10-26T23:00:00Z")]
        );
        let counts = aggregate(
            &(0..49)
                .map(|h| (ms("2025-10-25T22:00:00Z") + h * HOUR, 1.0))
                .collect::<Vec<_>>(),
            rome,
            Aggregate::Count,
            HOUR,
        )
        .expect("within the cap");
        assert_eq!(counts[0].count, 25, "the day the clocks go back");
        // In UTC the same points fall at UTC midnights.
        assert_eq!(
            starts(&utc(DAY_MS), "2025-03-29T12:00:00Z", 24),
            vec![ms("2025-03-29T00:00:00Z"), ms("2025-03-30T00:00:00Z")]
        );
    }

    #[test]
    fn hourly_buckets_follow_local_hours_and_keep_a_repeated_hour_apart() {
        // India is 5:30 ahead: local hours start at :30 UTC.
        let kolkata = Buckets::new(HOUR, zone("Asia/Kolkata")).expect("hours");
        assert_eq!(
            starts(&kolkata, "2025-01-01T00:00:00Z", 2),
            vec![ms("2024-12-31T23:30:00Z"), ms("2025-01-01T00:30:00Z")]
        );
        // Rome's 02:00-03:00 happens twice on 2025-10-26: two buckets.
        let rome = Buckets::new(HOUR, zone("Europe/Rome")).expect("hours");
        assert_eq!(
            starts(&rome, "2025-10-25T23:00:00Z", 4),
            (0..4)
                .map(|h| ms("2025-10-25T23:00:00Z") + h * HOUR)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn energy_splits_at_local_midnight() {
        // 100 W from 20:00 to 04:00 UTC; Rome's midnight is 23:00 UTC.
        let rome = Buckets::new(DAY_MS, zone("Europe/Rome")).expect("days");
        let points = [
            (ms("2025-01-01T20:00:00Z"), 100.0),
            (ms("2025-01-02T04:00:00Z"), 100.0),
        ];
        let energy: Vec<f64> = aggregate(&points, rome, Aggregate::Energy, 12 * HOUR)
            .expect("within the cap")
            .iter()
            .map(|b| b.value)
            .collect();
        assert_eq!(energy, vec![300.0, 500.0]);
    }

    #[test]
    fn zoned_every_must_fit_local_units() {
        for every in [7 * MIN, 90 * MIN, 5 * HOUR, 1_500] {
            assert!(Buckets::new(every, zone("Europe/Rome")).is_err(), "{every}");
        }
        for every in [MIN, 15 * MIN, HOUR, 6 * HOUR, DAY_MS, 7 * DAY_MS] {
            assert!(Buckets::new(every, zone("Europe/Rome")).is_ok(), "{every}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("every", "15m"), Ok(15 * MIN));
        assert_eq!(parse_duration("every", "1d"), Ok(1_440 * MIN));
        assert_eq!(parse_duration("every", "30s"), Ok(30_000));
        for bad in ["", "m", "0m", "-1m", "1w", "1.5h", "99999999999d"] {
            assert!(parse_duration("every", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statistics_per_bucket() {
        let points = [(0, 1.0), (MIN / 2, 3.0), (MIN, 10.0), (3 * MIN, 4.0)];
        let values = |agg| {
            aggregate(&points, utc(MIN), agg, 15 * MIN)
                .expect("within the cap")
                .iter()
                .map(|b| (b.timestamp, b.value, b.count))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            values(Aggregate::Mean),
            vec![(0, 2.0, 2), (MIN, 10.0, 1), (3 * MIN, 4.0, 1)]
        );
        assert_eq!(values(Aggregate::Min)[0].1, 1.0);
        assert_eq!(values(Aggregate::Max)[0].1, 3.0);
        assert_eq!(values(Aggregate::Sum)[0].1, 4.0);
        assert_eq!(values(Aggregate::Count)[0].1, 2.0);
        assert_eq!(values(Aggregate::Last)[0].1, 3.0);
    }

    #[test]
    fn energy_is_the_trapezoid_integral_in_unit_hours() {
        // A steady 1,000 W for two hours, sampled every 30 minutes: 1 kWh per hour.
        let points: Vec<(i64, f64)> = (0..=4).map(|i| (i * 30 * MIN, 1_000.0)).collect();
        let buckets =
            aggregate(&points, utc(60 * MIN), Aggregate::Energy, 60 * MIN).expect("within the cap");
        let energy: Vec<f64> = buckets.iter().map(|b| b.value).collect();
        assert_eq!(energy, vec![1_000.0, 1_000.0, 0.0]);
        // A ramp 0 → 100 W over one hour is 50 Wh, split at the half hour
        // into 12.5 Wh and 37.5 Wh.
        let ramp = aggregate(
            &[(0, 0.0), (60 * MIN, 100.0)],
            utc(30 * MIN),
            Aggregate::Energy,
            60 * MIN,
        )
        .expect("within the cap");
        assert_eq!(
            ramp.iter().map(|b| b.value).collect::<Vec<_>>(),
            vec![12.5, 37.5, 0.0]
        );
    }

    #[test]
    fn energy_does_not_bridge_long_gaps() {
        let points = [(0, 100.0), (15 * MIN, 100.0), (120 * MIN, 100.0)];
        let total: f64 = aggregate(&points, utc(60 * MIN), Aggregate::Energy, 15 * MIN)
            .expect("within the cap")
            .iter()
            .map(|b| b.value)
            .sum();
        assert_eq!(total, 25.0, "only the first quarter hour counts");
    }

    #[test]
    fn more_buckets_than_the_cap_are_refused_before_they_are_made() {
        // Two readings a day apart, bridged by the second: 86,400 buckets
        // fit, a million do not.
        let day = 86_400_000;
        let points = [(0, 1.0), (day, 1.0)];
        let fits = aggregate(&points, utc(1_000), Aggregate::Energy, 2 * day).expect("fits");
        assert_eq!(fits.len(), 86_401);
        let eleven_days = [(0, 1.0), (11 * day, 1.0)];
        assert_eq!(
            aggregate(&eleven_days, utc(1_000), Aggregate::Energy, 12 * day),
            Err(TooManyBuckets)
        );
        // Without energy, each reading's own bucket counts.
        let many: Vec<(i64, f64)> = (0..=MAX_BUCKETS as i64).map(|i| (i * 1_000, 1.0)).collect();
        assert_eq!(
            aggregate(&many, utc(1_000), Aggregate::Mean, MIN),
            Err(TooManyBuckets)
        );
        assert!(aggregate(&many[1..], utc(1_000), Aggregate::Mean, MIN).is_ok());
    }
}
