//! Storage types to and from their wire form. What arrives is validated
//! like any input: a sensor id, a unit and a key must parse.

use super::proto;
use crate::reading::{InvalidInput, Key, Sample, SensorId, Unit};
use crate::storage::{DigestRequest, NodeStats, RangeDigest, Record, Scan};
use crate::version::Version;

pub(super) fn record_to_wire(record: &Record) -> proto::Record {
    proto::Record {
        sensor: record.key.sensor.as_str().to_string(),
        timestamp_ms: record.key.timestamp_ms,
        version: record.version.0,
        value: record.sample.as_ref().map(|s| s.value),
        unit: record
            .sample
            .as_ref()
            .and_then(|s| s.unit.as_ref())
            .map(|u| u.as_str().to_string()),
    }
}

/// Parses records, sharing one [`SensorId`] across a run of the same
/// sensor (pages arrive in key order).
pub(super) fn records_from_wire(records: Vec<proto::Record>) -> Result<Vec<Record>, InvalidInput> {
    let mut last: Option<SensorId> = None;
    records
        .into_iter()
        .map(|wire| {
            let sensor = match &last {
                Some(sensor) if sensor.as_str() == wire.sensor => sensor.clone(),
                _ => {
                    let sensor: SensorId = wire.sensor.parse()?;
                    last = Some(sensor.clone());
                    sensor
                }
            };
            let unit = wire.unit.map(|u| u.parse::<Unit>()).transpose()?;
            if wire.value.is_none() && unit.is_some() {
                return Err(InvalidInput::new("record", "a tombstone has no unit"));
            }
            if wire.value.is_some_and(|v| !v.is_finite()) {
                return Err(InvalidInput::new("value", "must be a finite number"));
            }
            Ok(Record {
                key: Key::new(sensor, wire.timestamp_ms),
                version: Version(wire.version),
                sample: wire.value.map(|value| Sample { value, unit }),
            })
        })
        .collect()
}

pub(super) fn key_to_wire(key: &Key) -> proto::Key {
    proto::Key {
        sensor: key.sensor.as_str().to_string(),
        timestamp_ms: key.timestamp_ms,
    }
}

pub(super) fn key_from_wire(key: proto::Key) -> Result<Key, InvalidInput> {
    Ok(Key::new(key.sensor.parse()?, key.timestamp_ms))
}

fn sensor_from_wire(sensor: Option<String>) -> Result<Option<SensorId>, InvalidInput> {
    sensor.map(|s| s.parse()).transpose()
}

pub(super) fn scan_to_wire(scan: &Scan) -> proto::ScanRequest {
    proto::ScanRequest {
        sensor: scan.sensor.as_ref().map(|s| s.as_str().to_string()),
        from_ms: scan.from_ms,
        to_ms: scan.to_ms,
        after: scan.after.as_ref().map(key_to_wire),
        limit: scan.limit as u64,
        tombstones: scan.tombstones,
    }
}

/// A scan as a node serves it: at most [`super::WIRE_PAGE`] records.
pub(super) fn scan_from_wire(scan: proto::ScanRequest) -> Result<Scan, InvalidInput> {
    Ok(Scan {
        sensor: sensor_from_wire(scan.sensor)?,
        from_ms: scan.from_ms,
        to_ms: scan.to_ms,
        after: scan.after.map(key_from_wire).transpose()?,
        limit: (scan.limit.min(super::WIRE_PAGE as u64)) as usize,
        tombstones: scan.tombstones,
    })
}

pub(super) fn digest_request_to_wire(request: &DigestRequest) -> proto::DigestsRequest {
    proto::DigestsRequest {
        sensor: request.sensor.as_ref().map(|s| s.as_str().to_string()),
        bucket_ms: request.bucket_ms,
    }
}

pub(super) fn digest_request_from_wire(
    request: proto::DigestsRequest,
) -> Result<DigestRequest, InvalidInput> {
    if request.bucket_ms.is_some_and(|b| b <= 0) {
        return Err(InvalidInput::new("bucket_ms", "must be positive"));
    }
    Ok(DigestRequest {
        sensor: sensor_from_wire(request.sensor)?,
        bucket_ms: request.bucket_ms,
    })
}

pub(super) fn digest_to_wire(digest: &RangeDigest) -> proto::RangeDigest {
    proto::RangeDigest {
        sensor: digest.sensor.as_str().to_string(),
        bucket_start_ms: digest.bucket_start_ms,
        count: digest.count,
        hash: digest.hash,
    }
}

pub(super) fn digest_from_wire(digest: proto::RangeDigest) -> Result<RangeDigest, InvalidInput> {
    Ok(RangeDigest {
        sensor: digest.sensor.parse()?,
        bucket_start_ms: digest.bucket_start_ms,
        count: digest.count,
        hash: digest.hash,
    })
}

pub(super) fn stats_to_wire(stats: &NodeStats) -> proto::StatsReply {
    proto::StatsReply {
        live_keys: stats.live_keys,
        tombstones: stats.tombstones,
        max_version: stats.max_version.0,
    }
}

pub(super) fn stats_from_wire(stats: proto::StatsReply) -> NodeStats {
    NodeStats {
        live_keys: stats.live_keys,
        tombstones: stats.tombstones,
        max_version: Version(stats.max_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sensor: &str, ts: i64, value: Option<f64>, unit: Option<&str>) -> Record {
        Record {
            key: Key::new(sensor.parse().expect("sensor"), ts),
            version: Version(7),
            sample: value.map(|value| Sample {
                value,
                unit: unit.map(|u| u.parse().expect("unit")),
            }),
        }
    }

    #[test]
    fn records_survive_the_wire_values_units_and_tombstones_alike() {
        let records = vec![
            record("s1", 1, Some(1.5), Some("kWh")),
            record("s1", 2, Some(-0.0), None),
            record("s2", 3, None, None),
        ];
        let wire: Vec<_> = records.iter().map(record_to_wire).collect();
        assert_eq!(records_from_wire(wire).expect("valid records"), records);
    }

    #[test]
    fn invalid_records_are_refused_naming_the_field() {
        let mut wire = record_to_wire(&record("s1", 1, Some(1.0), None));
        wire.sensor = "bad sensor/".into();
        let error = records_from_wire(vec![wire]).expect_err("a bad sensor id");
        assert_eq!(error.field, "sensor_id");
        let mut tombstone = record_to_wire(&record("s1", 1, None, None));
        tombstone.unit = Some("W".into());
        assert!(records_from_wire(vec![tombstone]).is_err());
        let mut infinite = record_to_wire(&record("s1", 1, Some(1.0), None));
        infinite.value = Some(f64::INFINITY);
        assert_eq!(
            records_from_wire(vec![infinite])
                .expect_err("infinity")
                .field,
            "value"
        );
    }

    #[test]
    fn a_scan_asks_for_at_most_a_wire_page() {
        let scan = Scan {
            limit: usize::MAX,
            ..Scan::default()
        };
        let served = scan_from_wire(scan_to_wire(&scan)).expect("valid scan");
        assert_eq!(served.limit, super::super::WIRE_PAGE);
    }
}
