//! MQTT ingestion end to end: the real binary with its embedded broker on a
//! free port, and an ordinary MQTT client (rumqttc) as sensor and observer.

use crate::common;

use std::time::Duration;

use common::mqtt_client::connect;
use common::service::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const T0: i64 = 1_751_738_400_000;

async fn wait_for_count(s: &Service, path: &str, count: usize) -> Value {
    for _ in 0..400 {
        let (status, body) = s.get(path).await;
        if status == StatusCode::OK && body.as_array().map(Vec::len) == Some(count) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never had {count} items: {:?}", s.get(path).await);
}

#[tokio::test]
async fn every_payload_form_lands_in_history_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    meter
        .publish(
            "energyguard/readings/m1",
            json!({"timestamp": T0 / 1000, "value": 1.5, "unit": "W"}).to_string(),
        )
        .await;
    meter
        .publish(
            "energyguard/readings/m1",
            json!([{"timestamp": (T0 + 1_000) / 1000, "value": 2}, {"sensor_id": "m1", "timestamp": (T0 + 2_000) / 1000, "value": 3}]).to_string(),
        )
        .await;
    meter.publish("energyguard/readings/m1", "4.25").await;
    // The same reading again, as a redelivery would bring it.
    meter
        .publish(
            "energyguard/readings/m1",
            json!({"timestamp": T0 / 1000, "value": 1.5, "unit": "W"}).to_string(),
        )
        .await;

    let history = wait_for_count(&s, "/sensor/m1/history", 4).await;
    let values: Vec<f64> = history
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["value"].as_f64().expect("value"))
        .collect();
    assert_eq!(&values[..3], &[1.5, 2.0, 3.0]);
    assert_eq!(
        values[3], 4.25,
        "a bare number is stored at the time of receipt"
    );
    assert_eq!(history[0]["unit"], "W");
}

#[tokio::test]
async fn bad_payloads_go_to_the_dead_letter_topic_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let mut watcher = connect(s.mqtt_port, "watcher", &["energyguard/deadletter"]).await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("energyguard/readings/m1", b"{not json".to_vec(), "not JSON"),
        ("energyguard/readings/m1", vec![0xff, 0xfe, 0x31], "UTF-8"),
        (
            "energyguard/readings/m1",
            br#"{"value": "high"}"#.to_vec(),
            "value",
        ),
        (
            "energyguard/readings/m1",
            br#"{"sensor_id": "m2", "value": 1}"#.to_vec(),
            "does not match",
        ),
        ("energyguard/readings/bad%id", b"1".to_vec(), "sensor_id"),
    ];
    for (topic, payload, _) in &cases {
        meter.publish(topic, payload.clone()).await;
    }
    for (topic, _, needle) in &cases {
        let letter: Value =
            serde_json::from_slice(&watcher.next().await.payload).expect("JSON dead letter");
        assert_eq!(letter["topic"], *topic);
        let error = letter["error"].as_str().expect("error text");
        assert!(error.contains(needle), "{topic}: {error}");
        assert!(letter.get("payload").is_some());
    }
    assert_eq!(s.get("/measurements").await.1, json!([]), "nothing stored");
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("energyguard_mqtt_dead_letters_total 5"),
        "{metrics}"
    );
    let (_, health) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health["mqtt"]["connected"], true);
}

#[tokio::test]
async fn alerts_are_published_retained_when_they_fire_and_resolve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    s.post(
        "/set_threshold",
        json!({"sensor_id": "m1", "max": 70, "hysteresis": 1}),
    )
    .await;
    let mut early = connect(s.mqtt_port, "early", &["energyguard/alerts/+"]).await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    meter
        .publish(
            "energyguard/readings/m1",
            json!({"timestamp": T0 / 1000, "value": 75}).to_string(),
        )
        .await;
    let live: Value = serde_json::from_slice(&early.next().await.payload).expect("JSON alert");
    assert_eq!(live["state"], "firing");

    // A subscriber that arrives later still gets the current state: retained.
    let mut late = connect(s.mqtt_port, "late", &["energyguard/alerts/+"]).await;
    let fired = late.next().await;
    assert!(fired.retain, "alerts are retained");
    assert_eq!(fired.topic, "energyguard/alerts/m1");
    let alert: Value = serde_json::from_slice(&fired.payload).expect("JSON alert");
    assert_eq!(
        (alert["state"].clone(), alert["value"].clone()),
        (json!("firing"), json!(75.0))
    );

    meter
        .publish(
            "energyguard/readings/m1",
            json!({"timestamp": T0 / 1000 + 1, "value": 60}).to_string(),
        )
        .await;
    let resolved: Value = serde_json::from_slice(&late.next().await.payload).expect("JSON alert");
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["id"], alert["id"], "the same episode");
}

/// A sensor's readings, batched many to a transaction, still reach the alert
/// engine in order: a reading evaluated after a later one would be skipped
/// as late, and episodes lost or merged.
#[tokio::test]
async fn a_fast_stream_is_evaluated_in_order() {
    const BLOCKS: i64 = 150;
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    s.post(
        "/set_threshold",
        json!({"sensor_id": "ord", "max": 100, "hysteresis": 1}),
    )
    .await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    // Blocks of ten readings alternately above and below the limit: one
    // episode per pair of blocks.
    for i in 0..BLOCKS * 10 {
        let value = if (i / 10) % 2 == 0 { 150 } else { 50 };
        meter
            .publish(
                "energyguard/readings/ord",
                format!(
                    r#"{{"timestamp":{},"value":{value}}}"#,
                    (T0 + i) as f64 / 1000.0
                ),
            )
            .await;
    }
    wait_for_count(&s, "/sensor/ord/history", (BLOCKS * 10) as usize).await;
    let (status, alerts) = s.get("/alerts?sensor_id=ord&limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    let alerts = alerts.as_array().expect("a list");
    assert_eq!(alerts.len() as i64, BLOCKS / 2, "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| a["state"] == "resolved" && a["readings"] == 10)
    );
}

#[tokio::test]
async fn readings_wait_while_the_quorum_is_unmet_and_arrive_after_recovery() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    s.post(
        "/configure_replication",
        json!({"strategy": "full", "write_quorum": 3}),
    )
    .await;
    s.admin(Method::POST, "/fail_node/node2").await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    for i in 0..10 {
        meter
            .publish(
                "energyguard/readings/w1",
                json!({"timestamp": (T0 + i * 1_000) / 1000, "value": i}).to_string(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.get("/sensor/w1/history").await.0,
        StatusCode::NOT_FOUND,
        "not stored while the quorum is unmet"
    );
    let (status, _) = s.admin(Method::POST, "/recover_node/node2").await;
    assert_eq!(status, StatusCode::OK);
    wait_for_count(&s, "/sensor/w1/history", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200k_qos1_readings_is_stored_completely() {
    const BURST: i64 = 200_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let meter = connect(s.mqtt_port, "burst", &[]).await;
    let started = std::time::Instant::now();
    for i in 0..BURST {
        meter.publish_reading(&format!("b{}", i % 100), T0, i).await;
    }
    let published = started.elapsed();
    let mut stored = 0;
    for _ in 0..1_200 {
        // Two copies of every reading (consistent, RF 2).
        stored = s.copies().await / 2;
        if stored == BURST as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "published {BURST} in {published:?}; stored after {:?}",
        started.elapsed()
    );
    assert_eq!(stored, BURST as u64, "every acknowledged reading is stored");
}

/// A QoS 1 publisher that records which readings the broker acknowledged:
/// readings `0..` to sensors `s0..s19`, as fast as the broker takes them,
/// until the connection ends.
async fn publish_until_disconnected(port: u16) -> Vec<i64> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut options = MqttOptions::new("steady", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        for i in 0.. {
            let payload = format!(
                r#"{{"timestamp":{},"value":{i}}}"#,
                (T0 + i) as f64 / 1000.0
            );
            let topic = format!("energyguard/readings/s{}", i % 20);
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut in_flight = std::collections::HashMap::new();
    let mut sent = 0;
    let mut acknowledged = Vec::new();
    while let Ok(event) = eventloop.poll().await {
        match event {
            Event::Outgoing(Outgoing::Publish(packet_id)) => {
                in_flight.insert(packet_id, sent);
                sent += 1;
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                acknowledged.extend(in_flight.remove(&ack.pkid));
            }
            _ => {}
        }
    }
    acknowledged
}

/// Starts [`publish_until_disconnected`] and waits (up to 12 s) until
/// `count` of its readings are stored.
async fn stream_until_stored(s: &Service, count: u64) -> tokio::task::JoinHandle<Vec<i64>> {
    let publisher = tokio::spawn(publish_until_disconnected(s.mqtt_port));
    for _ in 0..600 {
        if s.copies().await / 2 >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher
}

/// The readings of `sensors` (`s0..`) stored, by value.
async fn stored_values(s: &Service, sensors: usize) -> std::collections::HashSet<i64> {
    let mut stored = std::collections::HashSet::new();
    for sensor in 0..sensors {
        let (_, history) = s
            .get(&format!("/sensor/s{sensor}/history?limit=100000"))
            .await;
        for point in history.as_array().expect("history") {
            stored.insert(point["value"].as_f64().expect("value") as i64);
        }
    }
    stored
}

/// What a hard kill can lose with the embedded broker: readings it
/// acknowledged and EnergyGuard had not stored. The front door keeps those
/// under half the broker's window (8 MiB with `broker_memory_mb = 16`), so
/// that is the bound; the figure itself is printed for docs/mqtt.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_at_most_the_backlog_bound() {
    const BOUND_BYTES: usize = 8 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in_with_mqtt(dir.path(), "broker_memory_mb = 16");
    s.wait_subscribed().await;
    let publisher = stream_until_stored(&s, 20_000).await;
    s.kill();
    let acknowledged = publisher.await.expect("publisher");
    let s = Service::start_in(dir.path(), "");
    let stored = stored_values(&s, 20).await;
    let lost: Vec<i64> = acknowledged
        .iter()
        .copied()
        .filter(|i| !stored.contains(i))
        .collect();
    // A reading's message: topic, payload and rumqttd's 4 bytes.
    let lost_bytes = lost.len() * (4 + "energyguard/readings/s00".len() + 40);
    eprintln!(
        "SIGKILL after {} acknowledged readings: {} lost (about {} KiB)",
        acknowledged.len(),
        lost.len(),
        lost_bytes / 1024
    );
    assert!(acknowledged.len() >= 20_000, "{} acked", acknowledged.len());
    assert!(
        lost_bytes <= BOUND_BYTES,
        "{} readings lost, more than the backlog bound",
        lost.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_stores_every_reading_the_embedded_broker_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let publisher = stream_until_stored(&s, 3_000).await;
    let (status, log) = tokio::task::spawn_blocking(move || s.terminate_with_log())
        .await
        .expect("terminate");
    assert!(status.success(), "{status:?}: {log:#?}");
    assert!(
        log.iter().any(|line| line.contains("MQTT drained")),
        "{log:#?}"
    );
    let acknowledged = publisher.await.expect("publisher");
    assert!(acknowledged.len() >= 3_000, "{} acked", acknowledged.len());

    let s = Service::start_in(dir.path(), "");
    let stored = stored_values(&s, 20).await;
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|i| !stored.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged readings missing, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_readings_are_stored_once_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    common::mqtt_scenarios::retained_readings_are_stored_once(
        || Service::start_in(dir.path(), ""),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_without_its_quorum_is_parked_and_never_holds_back_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    common::mqtt_scenarios::a_sensor_without_quorum_never_holds_back_another(
        || Service::start_in(dir.path(), ""),
        false,
    )
    .await;
}

#[tokio::test]
async fn no_client_may_take_energyguards_own_client_id() {
    use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let options = MqttOptions::new("energyguard", "127.0.0.1", s.mqtt_port);
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    let refused = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => break ack.code,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => break code,
            Err(error) => panic!("expected a refusing CONNACK, got {error}"),
        }
    };
    assert_eq!(refused, ConnectReturnCode::NotAuthorized);
    // The service's own consumer is still there.
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    meter.publish_reading("after", T0, 1).await;
    wait_for_count(&s, "/sensor/after/history", 1).await;
}

/// A reading of a parked sensor that arrives once the quorum is back, but
/// before the parked ones are stored, waits behind them: the alert engine
/// sees the sensor's readings in order (150 fires, then 50 resolves; the
/// other way round, the older 150 would be late and raise nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_sensors_later_readings_wait_behind_its_parked_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let (blocked, _) = common::mqtt_scenarios::fail_node2_under_quorum_2(&s).await;
    s.post(
        "/set_threshold",
        json!({"sensor_id": blocked, "max": 100, "hysteresis": 0}),
    )
    .await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    let topic = format!("energyguard/readings/{blocked}");
    meter
        .publish(
            &topic,
            json!({"timestamp": T0 / 1000, "value": 150}).to_string(),
        )
        .await;
    common::wait_until(Duration::from_secs(5), || async {
        let (_, health) = s.call(Method::GET, "/healthz", None, None).await;
        health["mqtt"]["parked"] == 1
    })
    .await;
    let (status, _) = s.admin(Method::POST, "/recover_node/node2").await;
    assert_eq!(status, StatusCode::OK);
    meter
        .publish(
            &topic,
            json!({"timestamp": T0 / 1000 + 1, "value": 50}).to_string(),
        )
        .await;
    wait_for_count(&s, &format!("/sensor/{blocked}/history"), 2).await;
    let alerts = wait_for_count(&s, &format!("/alerts?sensor_id={blocked}"), 1).await;
    common::wait_until(Duration::from_secs(5), || async {
        let (_, alerts) = s.get(&format!("/alerts?sensor_id={blocked}")).await;
        alerts[0]["state"] == "resolved"
    })
    .await;
    assert_eq!(alerts[0]["value"], 150.0, "{alerts}");
}
