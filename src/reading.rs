//! Readings as they enter the system, and the identifiers that name them.
//!
//! This module owns the one parser of SPEC §2: every door (HTTP today, MQTT
//! later) turns untrusted JSON into a validated [`Reading`] here, so the rules
//! for sensor ids, timestamps, values and units are written exactly once.
//! Everything is pure: no I/O, no clock reads (the time of receipt is passed
//! in by the caller).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// Longest accepted sensor id, in bytes (all accepted characters are ASCII).
pub const MAX_SENSOR_ID_LEN: usize = 128;
/// Longest accepted unit, in characters.
pub const MAX_UNIT_LEN: usize = 16;
/// Largest accepted timestamp: the last millisecond of year 9999.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
/// JSON numbers above this are epoch milliseconds, below it epoch seconds.
const EPOCH_MILLIS_THRESHOLD: f64 = 1e11;

/// Why a piece of input was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    /// The offending field (`sensor_id`, `timestamp`, `value`, `unit`, `key`, …).
    pub field: String,
    /// A human sentence saying what is wrong.
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated sensor id: 1–128 characters of `[A-Za-z0-9._-]`.
///
/// Cheap to clone (a shared string), because every stored record and every
/// replica's copy of a batch carries one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SensorId(Arc<str>);

impl SensorId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SensorId {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_SENSOR_ID_LEN {
            return Err(InvalidInput::new(
                "sensor_id",
                format!("must be 1 to {MAX_SENSOR_ID_LEN} characters long"),
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidInput::new(
                "sensor_id",
                format!("character {bad:?} is not allowed (use letters, digits, '.', '_' or '-')"),
            ));
        }
        Ok(Self(Arc::from(s)))
    }
}

impl fmt::Display for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for SensorId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The identity of a measurement: `<sensor_id>:<epoch milliseconds>`.
///
/// A function of the reading itself, so the same reading delivered twice is
/// stored once. Ordered by sensor, then time: the order of `/measurements`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub sensor: SensorId,
    pub timestamp_ms: i64,
}

impl Key {
    pub fn new(sensor: SensorId, timestamp_ms: i64) -> Self {
        Self {
            sensor,
            timestamp_ms,
        }
    }
}

impl FromStr for Key {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sensor, millis) = s.rsplit_once(':').ok_or_else(|| {
            InvalidInput::new("key", "must look like <sensor_id>:<epoch milliseconds>")
        })?;
        let sensor = sensor
            .parse::<SensorId>()
            .map_err(|e| InvalidInput::new("key", format!("sensor id part: {}", e.reason)))?;
        let timestamp_ms = millis
            .parse::<i64>()
            .ok()
            .filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
            .ok_or_else(|| {
                InvalidInput::new(
                    "key",
                    format!("{millis:?} is not a timestamp in epoch milliseconds"),
                )
            })?;
        Ok(Self::new(sensor, timestamp_ms))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sensor, self.timestamp_ms)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A validated unit label such as `W`, `kWh` or `V`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Unit(Arc<str>);

impl Unit {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Unit {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_UNIT_LEN {
            return Err(InvalidInput::new(
                "unit",
                format!("must be 1 to {MAX_UNIT_LEN} characters long"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "unit",
                "must not contain control characters",
            ));
        }
        Ok(Self(Arc::from(s)))
    }
}

impl fmt::Debug for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// What a measurement says: a finite value and an optional unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub value: f64,
    pub unit: Option<Unit>,
}

/// A validated reading, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub key: Key,
    pub sample: Sample,
}

/// A stored measurement in the shape every API answer uses (SPEC §2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub key: Key,
    pub sensor_id: SensorId,
    #[serde(serialize_with = "serialize_millis")]
    pub timestamp: i64,
    pub value: f64,
    pub unit: Option<Unit>,
}

impl Measurement {
    pub fn new(key: Key, sample: Sample) -> Self {
        Self {
            sensor_id: key.sensor.clone(),
            timestamp: key.timestamp_ms,
            key,
            value: sample.value,
            unit: sample.unit,
        }
    }
}

fn serialize_millis<S: Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_timestamp(*ms))
}

/// The current time in epoch milliseconds (the time of receipt of a reading).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-07-05T18:00:00.000Z`.
pub fn format_timestamp(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Parses a timestamp given as a string (RFC 3339, or naive ISO 8601 taken as
/// UTC) into epoch milliseconds.
pub fn parse_timestamp_str(s: &str) -> Result<i64, InvalidInput> {
    let ms = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.timestamp_millis()
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        t.and_utc().timestamp_millis()
    } else {
        return Err(InvalidInput::new(
            "timestamp",
            format!(
                "{s:?} is neither RFC 3339 (2025-07-05T18:00:00Z) nor ISO 8601 (2025-07-05T18:00:00)"
            ),
        ));
    };
    check_timestamp_range(ms)
}

/// Parses a JSON number of epoch seconds (or milliseconds above 1e11).
pub fn parse_timestamp_number(n: f64) -> Result<i64, InvalidInput> {
    if !n.is_finite() {
        return Err(InvalidInput::new("timestamp", "must be a finite number"));
    }
    let ms = if n.abs() > EPOCH_MILLIS_THRESHOLD {
        n.round()
    } else {
        (n * 1000.0).round()
    };
    // The cast saturates; the range check below rejects what saturated.
    check_timestamp_range(ms as i64)
}

fn check_timestamp_range(ms: i64) -> Result<i64, InvalidInput> {
    if (0..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(InvalidInput::new(
            "timestamp",
            "must lie between 1970-01-01 and 9999-12-31",
        ))
    }
}

/// Parses a finite JSON number, naming `field` when it is not one.
pub fn parse_value(field: &str, v: &Value) -> Result<f64, InvalidInput> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| InvalidInput::new(field, "must be a finite JSON number"))
}

/// Parses an optional unit field (`null` counts as absent).
pub fn parse_unit(v: Option<&Value>) -> Result<Option<Unit>, InvalidInput> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some),
        Some(_) => Err(InvalidInput::new("unit", "must be a string")),
    }
}

/// Parses one JSON reading object (SPEC §2).
///
/// `topic_sensor` is the sensor named by an MQTT topic: the payload may then
/// omit `sensor_id`, and if it gives one it must match. `received_ms` is the
/// time of receipt, used when the reading has no timestamp.
pub fn parse_reading(
    value: &Value,
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
) -> Result<Reading, InvalidInput> {
    let object = value
        .as_object()
        .ok_or_else(|| InvalidInput::new("reading", "must be a JSON object"))?;
    reject_unknown_fields(object, &["sensor_id", "timestamp", "value", "unit"])?;

    let sensor = match (object.get("sensor_id"), topic_sensor) {
        (Some(Value::String(s)), topic) => {
            let sensor: SensorId = s.parse()?;
            if let Some(topic) = topic.filter(|t| **t != sensor) {
                return Err(InvalidInput::new(
                    "sensor_id",
                    format!("{sensor} does not match the topic's sensor {topic}"),
                ));
            }
            sensor
        }
        (Some(_), _) => return Err(InvalidInput::new("sensor_id", "must be a string")),
        (None, Some(topic)) => topic.clone(),
        (None, None) => return Err(InvalidInput::new("sensor_id", "is required")),
    };
    let timestamp_ms = match object.get("timestamp") {
        None | Some(Value::Null) => received_ms,
        Some(Value::String(s)) => parse_timestamp_str(s)?,
        Some(Value::Number(n)) => parse_timestamp_number(n.as_f64().unwrap_or(f64::NAN))?,
        Some(_) => {
            return Err(InvalidInput::new(
                "timestamp",
                "must be an RFC 3339 string or a number of epoch seconds",
            ));
        }
    };
    let value = match object.get("value") {
        Some(v) => parse_value("value", v)?,
        None => return Err(InvalidInput::new("value", "is required")),
    };
    let unit = parse_unit(object.get("unit"))?;
    Ok(Reading {
        key: Key::new(sensor, timestamp_ms),
        sample: Sample { value, unit },
    })
}

/// Refuses any field not in `allowed`: a typo must not vanish silently.
pub fn reject_unknown_fields(
    object: &Map<String, Value>,
    allowed: &[&str],
) -> Result<(), InvalidInput> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(InvalidInput::new(
            unknown.clone(),
            format!("unknown field (expected one of: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_751_738_400_000;

    fn sensor(s: &str) -> SensorId {
        s.parse().expect("valid sensor id")
    }

    #[test]
    fn sensor_ids_follow_the_spec() {
        assert!("sensor-1.a_B".parse::<SensorId>().is_ok());
        assert!("x".repeat(128).parse::<SensorId>().is_ok());
        for bad in ["", "a b", "a/b", "a:b", "é", &"x".repeat(129)] {
            let err = bad.parse::<SensorId>().expect_err(bad);
            assert_eq!(err.field, "sensor_id");
        }
    }

    #[test]
    fn keys_round_trip_through_their_text_form() {
        let key: Key = "sensor1:1751738400000".parse().expect("valid key");
        assert_eq!(key.sensor.as_str(), "sensor1");
        assert_eq!(key.timestamp_ms, NOW);
        assert_eq!(key.to_string(), "sensor1:1751738400000");
        for bad in [
            "sensor1",
            "sensor1:",
            "sensor1:abc",
            ":5",
            "a b:5",
            "s:-1",
            "s:99999999999999999999",
        ] {
            assert!(bad.parse::<Key>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn timestamps_in_every_accepted_form() {
        let cases = [
            (json!("2025-07-05T18:00:00Z"), NOW),
            (json!("2025-07-05T20:00:00+02:00"), NOW),
            (json!("2025-07-05T18:00:00"), NOW),
            (json!("2025-07-05T18:00:00.250Z"), NOW + 250),
            (json!(1_751_738_400), NOW),
            (json!(1_751_738_400.5), NOW + 500),
            (json!(1_751_738_400_000_i64), NOW),
        ];
        for (ts, expected) in cases {
            let r = parse_reading(
                &json!({"sensor_id": "s", "timestamp": ts, "value": 1}),
                None,
                0,
            )
            .expect("valid reading");
            assert_eq!(r.key.timestamp_ms, expected, "timestamp {ts}");
        }
    }

    #[test]
    fn missing_timestamp_means_time_of_receipt() {
        let r = parse_reading(&json!({"sensor_id": "s", "value": 2.5}), None, NOW).expect("valid");
        assert_eq!(r.key, Key::new(sensor("s"), NOW));
        assert_eq!(r.sample.value, 2.5);
        assert_eq!(r.sample.unit, None);
    }

    #[test]
    fn invalid_readings_name_the_field() {
        let cases = [
            (json!([1]), "reading"),
            (json!({"value": 1}), "sensor_id"),
            (json!({"sensor_id": 5, "value": 1}), "sensor_id"),
            (json!({"sensor_id": "s"}), "value"),
            (json!({"sensor_id": "s", "value": "1"}), "value"),
            (json!({"sensor_id": "s", "value": null}), "value"),
            (
                json!({"sensor_id": "s", "value": 1, "timestamp": "yesterday"}),
                "timestamp",
            ),
            (
                json!({"sensor_id": "s", "value": 1, "timestamp": true}),
                "timestamp",
            ),
            (
                json!({"sensor_id": "s", "value": 1, "timestamp": -5}),
                "timestamp",
            ),
            (
                json!({"sensor_id": "s", "value": 1, "unit": "much-too-long-unit"}),
                "unit",
            ),
            (json!({"sensor_id": "s", "value": 1, "unit": 3}), "unit"),
            (json!({"sensor_id": "s", "value": 1, "vaule": 2}), "vaule"),
        ];
        for (input, field) in cases {
            let err = parse_reading(&input, None, NOW).expect_err(&input.to_string());
            assert_eq!(err.field, field, "input {input}");
        }
    }

    #[test]
    fn topic_sensor_fills_in_and_must_match() {
        let topic = sensor("meter7");
        let r = parse_reading(&json!({"value": 1}), Some(&topic), NOW).expect("valid");
        assert_eq!(r.key.sensor, topic);
        let err = parse_reading(
            &json!({"sensor_id": "other", "value": 1}),
            Some(&topic),
            NOW,
        )
        .expect_err("mismatch");
        assert_eq!(err.field, "sensor_id");
    }

    #[test]
    fn measurements_serialize_in_the_spec_shape() {
        let m = Measurement::new(
            Key::new(sensor("sensor1"), NOW),
            Sample {
                value: 75.5,
                unit: Some("W".parse().expect("unit")),
            },
        );
        assert_eq!(
            serde_json::to_value(&m).expect("serializes"),
            json!({"key": "sensor1:1751738400000", "sensor_id": "sensor1",
                   "timestamp": "2025-07-05T18:00:00.000Z", "value": 75.5, "unit": "W"})
        );
    }
}
