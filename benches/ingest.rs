//! Micro-benchmarks of the per-reading work every door does before storage:
//! parsing untrusted payloads and evaluating alert thresholds. Run with
//! `cargo bench --bench ingest`; medians are in `target/criterion`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use energyguard::alerts::engine::{SensorAlerts, Threshold, evaluate};
use energyguard::mqtt::Topics;
use energyguard::reading::body::parse_body;
use serde_json::{Value, json};

const READINGS: usize = 1_000;
const BATCH: usize = 5_000;
const T0: i64 = 1_751_738_400_000;

/// Guards the one parser of readings as `POST /ingest` meets it: a body of
/// 5,000 reading objects to validated readings, read straight into borrowed
/// fields; and the same body with its last reading invalid, which is read a
/// second time through a `serde_json::Value` to say which field is wrong.
fn parse_http_batches(c: &mut Criterion) {
    let objects: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({"sensor_id": format!("sensor{}", i % 100), "timestamp": "2025-07-05T18:00:00Z",
                   "value": i as f64 * 0.5, "unit": "W"})
        })
        .collect();
    let valid = Value::from(objects.clone()).to_string();
    let mut refused = objects;
    refused[BATCH - 1] = json!({"sensor_id": "sensor1", "value": "high"});
    let refused = Value::from(refused).to_string();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("http_batch_of_5000", |b| {
        b.iter(|| parse_body(valid.as_bytes(), None, T0, BATCH).is_ok())
    });
    group.bench_function("http_batch_of_5000_last_invalid", |b| {
        b.iter(|| parse_body(refused.as_bytes(), None, T0, BATCH).is_err())
    });
    group.finish();
}

/// Guards MQTT payload handling: topic to sensor, bytes to JSON, JSON to
/// readings, for a message of one reading and one of ten.
fn parse_mqtt_messages(c: &mut Criterion) {
    let topics = Topics::new("energyguard");
    let one = br#"{"timestamp": 1751738400, "value": 75.5}"#.to_vec();
    let ten = serde_json::to_vec(
        &(0..10)
            .map(|i| json!({"timestamp": 1_751_738_400 + i, "value": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mqtt_message_1_reading", |b| {
        b.iter(|| topics.parse_message("energyguard/readings/meter1", &one, T0))
    });
    group.throughput(Throughput::Elements(10));
    group.bench_function("mqtt_message_10_readings", |b| {
        b.iter(|| topics.parse_message("energyguard/readings/meter1", &ten, T0))
    });
    group.finish();
}

/// Guards the alert engine's per-reading cost: a threshold with
/// hysteresis and `for`, readings swinging in and out of range so that
/// episodes open, stay pending, fire and resolve.
fn alert_evaluation(c: &mut Criterion) {
    let threshold = Threshold {
        sensor_id: "meter1"
            .parse()
            .unwrap_or_else(|_| unreachable!("valid id")),
        max: Some(70.0),
        min: Some(10.0),
        hysteresis: 1.0,
        for_ms: Some(5_000),
        stale_after_ms: None,
    };
    let values: Vec<f64> = (0..READINGS)
        .map(|i| {
            if (i / 20) % 2 == 0 {
                50.0
            } else {
                75.0 + (i % 7) as f64
            }
        })
        .collect();
    let mut group = c.benchmark_group("alerts");
    group.throughput(Throughput::Elements(READINGS as u64));
    group.bench_function("evaluate_with_hysteresis_and_for", |b| {
        b.iter(|| {
            let mut state = SensorAlerts::default();
            let mut changes = 0;
            for (i, value) in values.iter().enumerate() {
                let at = T0 + i as i64 * 1_000;
                changes += evaluate(&threshold, &mut state, at, *value, at).len();
            }
            changes
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    parse_http_batches,
    parse_mqtt_messages,
    alert_evaluation
);
criterion_main!(benches);
