//! Readings as they enter the system, and the identifiers that name them.
//!
//! This module owns the one reading parser: both doors (HTTP and MQTT)
//! turn untrusted JSON into validated [`Reading`]s here ([`body`] reads a
//! whole request body or payload), so the rules for sensor ids, timestamps,
//! values and units are written exactly once.
//! Everything is pure: no I/O, no clock reads (the time of receipt is passed
//! in by the caller).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

pub mod body;

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
/// replica's copy of a batch carries one. The readings of one body share one
/// string, so comparing two ids first compares the pointers: sorting a batch
/// by key then rarely looks at the text.
#[derive(Clone, Eq)]
pub struct SensorId(Arc<str>);

impl std::hash::Hash for SensorId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for SensorId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Ord for SensorId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl PartialOrd for SensorId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

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

/// A stored measurement in the shape every API answer uses: `key`,
/// `sensor_id`, `timestamp` (RFC 3339 UTC, milliseconds), `value`, `unit`.
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
        .ok_or_else(|| not_a_number(field))
}

fn not_a_number(field: &str) -> InvalidInput {
    InvalidInput::new(field, "must be a finite JSON number")
}

/// Parses an optional unit field (`null` counts as absent).
pub fn parse_unit(v: Option<&Value>) -> Result<Option<Unit>, InvalidInput> {
    unit_text(v)?.map(str::parse).transpose()
}

/// The text of an optional unit field, checked to be a string or absent.
fn unit_text(v: Option<&Value>) -> Result<Option<&str>, InvalidInput> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(InvalidInput::new("unit", "must be a string")),
    }
}

/// The fields a reading object may have.
const READING_FIELDS: &[&str] = &["sensor_id", "timestamp", "value", "unit"];

/// A reading's timestamp field, its JSON type checked, not yet its content.
pub(crate) enum TimestampField<'a> {
    /// Absent or `null`: the time of receipt.
    Absent,
    Text(&'a str),
    Number(f64),
}

/// A reading object's fields with their JSON types checked. Both ways into
/// a reading (a `serde_json::Value` tree, or [`body`]'s borrowed form) end
/// here, so the rules for a reading are applied in [`Fields::into_reading`] only.
pub(crate) struct Fields<'a> {
    pub sensor_id: Option<&'a str>,
    pub timestamp: TimestampField<'a>,
    pub value: f64,
    pub unit: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// Validates the fields into a reading. `topic_sensor` is the sensor
    /// named by an MQTT topic: the payload may then omit `sensor_id`, and if
    /// it gives one it must match. `received_ms` stands in for an absent
    /// timestamp.
    pub(crate) fn into_reading(
        self,
        topic_sensor: Option<&SensorId>,
        received_ms: i64,
        names: &mut Names,
    ) -> Result<Reading, InvalidInput> {
        let sensor = match (self.sensor_id, topic_sensor) {
            (Some(text), topic) => {
                let sensor = names.sensor(text)?;
                if let Some(topic) = topic.filter(|t| **t != sensor) {
                    return Err(InvalidInput::new(
                        "sensor_id",
                        format!("{sensor} does not match the topic's sensor {topic}"),
                    ));
                }
                sensor
            }
            (None, Some(topic)) => topic.clone(),
            (None, None) => return Err(InvalidInput::new("sensor_id", "is required")),
        };
        let timestamp_ms = match self.timestamp {
            TimestampField::Absent => received_ms,
            TimestampField::Text(text) => parse_timestamp_str(text)?,
            TimestampField::Number(n) => parse_timestamp_number(n)?,
        };
        if !self.value.is_finite() {
            return Err(not_a_number("value"));
        }
        let unit = self.unit.map(|text| names.unit(text)).transpose()?;
        Ok(Reading {
            key: Key::new(sensor, timestamp_ms),
            sample: Sample {
                value: self.value,
                unit,
            },
        })
    }
}

/// The sensor ids and units already validated while parsing one body: a
/// batch of thousands of readings from a hundred sensors then validates and
/// allocates a hundred ids, and its readings share them. Keys are owned, so
/// a body can be read one item at a time.
#[derive(Default)]
pub(crate) struct Names {
    sensors: HashMap<Box<str>, SensorId>,
    units: HashMap<Box<str>, Unit>,
}

impl Names {
    fn sensor(&mut self, text: &str) -> Result<SensorId, InvalidInput> {
        Self::intern(&mut self.sensors, text)
    }

    fn unit(&mut self, text: &str) -> Result<Unit, InvalidInput> {
        Self::intern(&mut self.units, text)
    }

    fn intern<T>(known: &mut HashMap<Box<str>, T>, text: &str) -> Result<T, InvalidInput>
    where
        T: FromStr<Err = InvalidInput> + Clone,
    {
        if let Some(name) = known.get(text) {
            return Ok(name.clone());
        }
        let name: T = text.parse()?;
        known.insert(text.into(), name.clone());
        Ok(name)
    }
}

/// Parses one JSON reading object: `sensor_id`, `timestamp`, `value`,
/// `unit`, nothing else.
///
/// `topic_sensor` is the sensor named by an MQTT topic: the payload may then
/// omit `sensor_id`, and if it gives one it must match. `received_ms` is the
/// time of receipt, used when the reading has no timestamp. `names` holds
/// the sensor ids and units of the body parsed so far.
pub(crate) fn parse_reading(
    value: &Value,
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
    names: &mut Names,
) -> Result<Reading, InvalidInput> {
    let object = value
        .as_object()
        .ok_or_else(|| InvalidInput::new("reading", "must be a JSON object"))?;
    reject_unknown_fields(object, READING_FIELDS)?;
    let sensor_id = match object.get("sensor_id") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(InvalidInput::new("sensor_id", "must be a string")),
    };
    let timestamp = match object.get("timestamp") {
        None | Some(Value::Null) => TimestampField::Absent,
        Some(Value::String(s)) => TimestampField::Text(s),
        Some(Value::Number(n)) => TimestampField::Number(n.as_f64().unwrap_or(f64::NAN)),
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
    let unit = unit_text(object.get("unit"))?;
    Fields {
        sensor_id,
        timestamp,
        value,
        unit,
    }
    .into_reading(topic_sensor, received_ms, names)
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
mod tests;
