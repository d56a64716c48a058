//! The reading parser: what it accepts, and the field it names when it refuses.

use super::*;
use serde_json::json;

const NOW: i64 = 1_751_738_400_000;

/// One reading object, parsed as the only one of its body.
fn parse_reading(
    value: &Value,
    topic_sensor: Option<&SensorId>,
    received_ms: i64,
) -> Result<Reading, InvalidInput> {
    super::parse_reading(value, topic_sensor, received_ms, &mut Names::default())
}

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

#[test]
fn sensor_ids_compare_by_text_whether_shared_or_not() {
    use std::hash::BuildHasher;
    let (a, b, shared) = (sensor("m1"), sensor("m1"), sensor("m2"));
    let copy = shared.clone();
    assert_eq!(a, b, "two parses of one id");
    assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
    assert_eq!(shared.cmp(&copy), std::cmp::Ordering::Equal);
    assert!(a < shared && shared > b);
    let hasher = std::collections::hash_map::RandomState::new();
    assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
}
