//! A whole body of readings, as both doors receive it: an HTTP request body
//! or an MQTT payload (SPEC §2, §4): one reading object, an array of them,
//! or, on a topic that names the sensor, a bare number.
//!
//! A body is read twice at most. The first read deserializes straight into
//! borrowed fields (`WireReading`) without building a `serde_json::Value`
//! tree: a batch of 5,000 readings then costs a third of the time. Whatever
//! that read cannot take (an error of any kind, a duplicate field, a bare
//! number) is read again as a `Value`, and that read either accepts it or
//! says exactly which field is wrong and why. Both reads end in
//! `Fields::into_reading`, so they apply the same rules; the first only
//! ever accepts what the second would accept, with the same result (a test
//! holds them to that).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::Value;

use super::{
    Fields, InvalidInput, Names, Reading, SensorId, TimestampField, parse_reading, parse_value,
};

/// The readings of a body.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A reading object or a bare number: answered with one key.
    One(Reading),
    /// An array of reading objects: answered with a count and keys.
    Many(Vec<Reading>),
}

/// Why a body holds no readings to store.
#[derive(Debug)]
pub enum BodyError {
    NotUtf8(std::str::Utf8Error),
    NotJson(serde_json::Error),
    /// An array longer than the door allows.
    TooMany {
        max: usize,
    },
    /// A reading is invalid: `index` is its place in an array, `readings`
    /// how many the body held (all of them are refused).
    Invalid {
        index: Option<usize>,
        readings: usize,
        error: InvalidInput,
    },
}

/// Parses a body of readings. `topic_sensor` is the sensor an MQTT topic
/// names (readings may then omit `sensor_id`, and a bare number is a
/// reading); `received_ms` stands in for absent timestamps; an array may hold
/// at most `max` readings.
pub fn parse_body(
    body: &[u8],
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
    max: usize,
) -> Result<Parsed, BodyError> {
    parse_borrowed(body, topic_sensor, received_ms, max)
        .map_or_else(|| parse_explained(body, topic_sensor, received_ms, max), Ok)
}

/// The first read: `None` for anything but a well-formed reading object or
/// array of at most `max` of them with every reading valid.
fn parse_borrowed(
    body: &[u8],
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
    max: usize,
) -> Option<Parsed> {
    match body.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => {
            let wire: WireReading<'_> = serde_json::from_slice(body).ok()?;
            let fields = wire.fields();
            let reading = fields
                .into_reading(topic_sensor, received_ms, &mut Names::default())
                .ok()?;
            Some(Parsed::One(reading))
        }
        b'[' => {
            let wire: Vec<WireReading<'_>> = serde_json::from_slice(body).ok()?;
            if wire.len() > max {
                return None;
            }
            let mut names = Names::default();
            let readings = wire
                .iter()
                .map(|w| {
                    w.fields()
                        .into_reading(topic_sensor, received_ms, &mut names)
                })
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            Some(Parsed::Many(readings))
        }
        _ => None,
    }
}

/// The second read, through a `serde_json::Value`: accepts every form and
/// names the fault of a refused body.
fn parse_explained(
    body: &[u8],
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
    max: usize,
) -> Result<Parsed, BodyError> {
    let text = std::str::from_utf8(body).map_err(BodyError::NotUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(BodyError::NotJson)?;
    let invalid = |index, readings, error| BodyError::Invalid {
        index,
        readings,
        error,
    };
    match (&value, topic_sensor) {
        (Value::Array(items), _) => {
            if items.len() > max {
                return Err(BodyError::TooMany { max });
            }
            let mut names = Names::default();
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    parse_reading(item, topic_sensor, received_ms, &mut names)
                        .map_err(|e| invalid(Some(i), items.len(), e))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Parsed::Many)
        }
        (Value::Number(_), Some(_)) => {
            let bare = Fields {
                sensor_id: None,
                timestamp: TimestampField::Absent,
                value: parse_value("value", &value).map_err(|e| invalid(None, 1, e))?,
                unit: None,
            };
            bare.into_reading(topic_sensor, received_ms, &mut Names::default())
                .map(Parsed::One)
                .map_err(|e| invalid(None, 1, e))
        }
        (Value::Object(_), _) | (_, None) => {
            parse_reading(&value, topic_sensor, received_ms, &mut Names::default())
                .map(Parsed::One)
                .map_err(|e| invalid(None, 1, e))
        }
        (_, Some(_)) => Err(invalid(
            None,
            1,
            InvalidInput::new(
                "payload",
                "must be a reading object, an array of them, or a number",
            ),
        )),
    }
}

/// A reading object as its JSON text has it, strings borrowed from the body
/// where they hold no escapes. Stricter than the rules (no duplicate or
/// unknown fields, `value` a number): what it refuses goes to the second read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReading<'a> {
    /// A `null` id is refused here, as by the second read.
    #[serde(borrow, default, deserialize_with = "present")]
    sensor_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    timestamp: WireTimestamp<'a>,
    value: f64,
    /// A `null` unit is no unit.
    #[serde(borrow, default)]
    unit: Option<Text<'a>>,
}

impl WireReading<'_> {
    fn fields(&self) -> Fields<'_> {
        Fields {
            sensor_id: self.sensor_id.as_ref().map(Text::as_str),
            timestamp: match &self.timestamp {
                WireTimestamp::Absent => TimestampField::Absent,
                WireTimestamp::Text(text) => TimestampField::Text(text.as_str()),
                WireTimestamp::Number(n) => TimestampField::Number(*n),
            },
            value: self.value,
            unit: self.unit.as_ref().map(Text::as_str),
        }
    }
}

/// A JSON string, borrowed unless it had escapes.
struct Text<'a>(Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(text.to_owned())))
    }
}

/// A field that, when given, must be a string (not `null`).
fn present<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Text<'a>>, D::Error> {
    Text::deserialize(deserializer).map(Some)
}

/// A timestamp as JSON gives it: absent or `null`, a string, or a number.
#[derive(Default)]
enum WireTimestamp<'a> {
    #[default]
    Absent,
    Text(Text<'a>),
    Number(f64),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireTimestamp<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TimestampVisitor)
    }
}

struct TimestampVisitor;

impl<'de> Visitor<'de> for TimestampVisitor {
    type Value = WireTimestamp<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a timestamp string or number, or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(WireTimestamp::Absent)
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        TextVisitor
            .visit_borrowed_str(text)
            .map(WireTimestamp::Text)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        TextVisitor.visit_str(text).map(WireTimestamp::Text)
    }

    // The conversions of `serde_json::Number::as_f64`, as the second read
    // makes them.
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(WireTimestamp::Number(n as f64))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(WireTimestamp::Number(n as f64))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(WireTimestamp::Number(n))
    }
}

#[cfg(test)]
mod tests;
