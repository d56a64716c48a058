//! A whole body of readings, as both doors receive it: an HTTP request body
//! or an MQTT payload: one reading object, an array of them,
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
//!
//! Memory: an array is read one item at a time (`EachItem`), keeping only
//! the readings; both reads stop at the first item they refuse and at item
//! `max + 1`. A hostile body (a million empty objects, an array past the
//! limit) costs a few of its items, never a tree of all of them.

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
        .unwrap_or_else(|| parse_explained(body, topic_sensor, received_ms, max))
}

/// Why [`EachItem`] stopped reading an array early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Item `max + 1` was seen.
    TooMany,
    /// The item's taker refused it.
    Refused,
}

/// Reads a JSON array item by item, handing each to `take` (which answers
/// whether to go on), and stops with a note in `stop` at the first refused
/// item or at item `max + 1`.
struct EachItem<'f, T, F> {
    max: usize,
    take: &'f mut F,
    stop: &'f mut Option<Stop>,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<'f, T, F> EachItem<'f, T, F> {
    fn new(max: usize, take: &'f mut F, stop: &'f mut Option<Stop>) -> Self {
        Self {
            max,
            take,
            stop,
            item: std::marker::PhantomData,
        }
    }

    /// Reads `body`, which must be one array and nothing after it.
    fn read<'de>(self, body: &'de [u8]) -> Result<(), serde_json::Error>
    where
        T: Deserialize<'de>,
        F: FnMut(T) -> bool,
    {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        de::DeserializeSeed::deserialize(self, &mut deserializer)?;
        deserializer.end()
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T) -> bool> de::DeserializeSeed<'de>
    for EachItem<'_, T, F>
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T) -> bool> Visitor<'de> for EachItem<'_, T, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of readings")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut seen = 0;
        while let Some(item) = seq.next_element::<T>()? {
            if seen == self.max {
                *self.stop = Some(Stop::TooMany);
                return Err(de::Error::custom("too many readings"));
            }
            if !(self.take)(item) {
                *self.stop = Some(Stop::Refused);
                return Err(de::Error::custom("a refused reading"));
            }
            seen += 1;
        }
        Ok(())
    }
}

/// The first read: `None` for anything but a well-formed reading object or
/// array of at most `max` of them with every reading valid, or an array
/// past `max`, refused at once.
fn parse_borrowed(
    body: &[u8],
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
    max: usize,
) -> Option<Result<Parsed, BodyError>> {
    match body.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => {
            let wire: WireReading<'_> = serde_json::from_slice(body).ok()?;
            let fields = wire.fields();
            let reading = fields
                .into_reading(topic_sensor, received_ms, &mut Names::default())
                .ok()?;
            Some(Ok(Parsed::One(reading)))
        }
        b'[' => {
            let mut names = Names::default();
            let mut readings = Vec::new();
            let mut take = |wire: WireReading<'_>| match wire.fields().into_reading(
                topic_sensor,
                received_ms,
                &mut names,
            ) {
                Ok(reading) => {
                    readings.push(reading);
                    true
                }
                Err(_) => false,
            };
            let mut stop = None;
            let read = EachItem::new(max, &mut take, &mut stop).read(body);
            match (read, stop) {
                (Ok(()), _) => Some(Ok(Parsed::Many(readings))),
                (Err(_), Some(Stop::TooMany)) => Some(Err(BodyError::TooMany { max })),
                (Err(_), _) => None,
            }
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
    let invalid = |index, readings, error| BodyError::Invalid {
        index,
        readings,
        error,
    };
    if text.trim_start().starts_with('[') {
        return parse_explained_array(text, topic_sensor, received_ms, max);
    }
    let value: Value = serde_json::from_str(text).map_err(BodyError::NotJson)?;
    match (&value, topic_sensor) {
        (Value::Array(_), _) => unreachable!("arrays are read item by item above"),
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

/// The second read of an array: each item as a `Value` in turn, parsed and
/// dropped, up to the first refused one (named by its index).
fn parse_explained_array(
    text: &str,
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
    max: usize,
) -> Result<Parsed, BodyError> {
    let mut names = Names::default();
    let mut readings = Vec::new();
    let mut refused = None;
    let mut take = |item: Value| match parse_reading(&item, topic_sensor, received_ms, &mut names) {
        Ok(reading) => {
            readings.push(reading);
            true
        }
        Err(error) => {
            refused = Some(error);
            false
        }
    };
    let mut stop = None;
    let read = EachItem::new(max, &mut take, &mut stop).read(text.as_bytes());
    let index = readings.len();
    match (read, stop, refused) {
        (_, Some(Stop::TooMany), _) => Err(BodyError::TooMany { max }),
        (_, _, Some(error)) => Err(BodyError::Invalid {
            index: Some(index),
            readings: index + 1,
            error,
        }),
        (Ok(()), ..) => Ok(Parsed::Many(readings)),
        (Err(error), ..) => Err(BodyError::NotJson(error)),
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
