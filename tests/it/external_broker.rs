//! EnergyGuard consuming from a real external mosquitto with persistence:
//! readings and dead letters flow, and a SIGKILL of EnergyGuard mid-stream
//! loses nothing and stores nothing twice, because messages are
//! acknowledged only after storage and the broker redelivers the rest.

use crate::common;

use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::mqtt_client::{connect, connect_as};
use common::service::*;
use serde_json::{Value, json};

const T0: i64 = 1_751_738_400_000;

/// Readings stored: copies on the nodes divided by two (consistent, RF 2).
async fn stored(s: &Service) -> u64 {
    s.copies().await / 2
}

/// Waits (up to a minute) until `count` readings are stored, and asserts
/// that exactly that many are.
async fn wait_stored(s: &Service, count: u64) {
    let mut now = 0;
    for _ in 0..1_200 {
        now = stored(s).await;
        if now >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, count, "all {count} readings stored");
}

#[tokio::test]
async fn readings_and_dead_letters_through_mosquitto() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start(dir.path());
    let s = Service::start_with_broker(dir.path(), broker.port);
    s.wait_subscribed().await;
    let mut watcher = connect(broker.port, "watcher", &["energyguard/deadletter"]).await;
    let meter = connect(broker.port, "meter", &[]).await;
    meter
        .publish(
            "energyguard/readings/m1",
            json!({"timestamp": T0 / 1000, "value": 3}).to_string(),
        )
        .await;
    meter.publish("energyguard/readings/m1", "{broken").await;
    let letter: Value = serde_json::from_slice(&watcher.next().await.payload).expect("JSON");
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("not JSON"))
    );
    wait_stored(&s, 1).await;
    assert_eq!(
        s.get(&format!("/measurement/m1:{T0}")).await.1["value"],
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_stores_nothing_twice() {
    const READINGS: i64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start(dir.path());
    let s = Service::start_with_broker(dir.path(), broker.port);
    s.wait_subscribed().await;
    let meter = connect(broker.port, "meter", &[]).await;
    let publisher = tokio::spawn(async move {
        for i in 0..READINGS {
            meter.publish_reading(&format!("k{}", i % 50), T0, i).await;
            if i % 500 == 0 {
                // A steady stream rather than one burst.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        meter
    });
    for _ in 0..600 {
        if stored(&s).await >= 3_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = stored(&s).await;
    assert!(
        before > 0 && before < READINGS as u64,
        "killed mid-stream ({before} stored)"
    );
    s.kill();

    let s = Service::start_with_broker(dir.path(), broker.port);
    s.wait_subscribed().await;
    let _meter = publisher.await.expect("publisher");
    wait_stored(&s, READINGS as u64).await;
    let copies = s.copies().await;
    assert_eq!(
        copies,
        2 * READINGS as u64,
        "exactly two copies of each, none twice"
    );
}

/// QoS 0 messages come outside the broker's in-flight window: the consumer
/// holds one batch of them and pushes back on the broker for the rest, so a
/// burst larger than many batches is stored whole, not queued in memory
/// without bound (nor lost: mosquitto keeps what the socket does not take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_burst_through_mosquitto_is_stored_whole() {
    const READINGS: i64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start(dir.path());
    let s = Service::start_with_broker_as(
        dir.path(),
        broker.port,
        "url = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"eg-qos0\"\nbatch_messages = 100",
    );
    s.wait_subscribed().await;
    let meter = connect(broker.port, "qos0-meter", &[]).await;
    for i in 0..READINGS {
        let payload = format!(
            r#"{{"timestamp":{},"value":{i}}}"#,
            (T0 + i) as f64 / 1000.0
        );
        meter
            .publish_qos0(&format!("energyguard/readings/q{}", i % 20), payload)
            .await;
    }
    wait_stored(&s, READINGS as u64).await;
}

/// Publishes `count` readings of sensor `sensor` with values `first..`.
async fn publish_readings(
    meter: &common::mqtt_client::Client,
    sensor: &str,
    first: i64,
    count: i64,
) {
    for i in first..first + count {
        meter.publish_reading(sensor, T0, i).await;
    }
}

/// Blocks until a log line contains `needle` (after those already read).
fn wait_for_log(s: &Service, needle: &str) {
    loop {
        match s.log.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => panic!("no log line with {needle:?} within 30 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_reconnects_and_resubscribes_after_the_broker_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Mosquitto::start(dir.path());
    let s = Service::start_with_broker(dir.path(), broker.port);
    s.wait_subscribed().await;
    let meter = connect(broker.port, "before", &[]).await;
    publish_readings(&meter, "r1", 0, 500).await;
    wait_stored(&s, 500).await;

    broker.restart();
    wait_for_log(&s, "MQTT connection lost");
    wait_for_log(&s, "MQTT subscribed");
    let (_, health) = s.get("/healthz").await;
    assert_eq!(health["mqtt"]["connected"], true, "{health}");
    let meter = connect(broker.port, "after", &[]).await;
    publish_readings(&meter, "r1", 500, 500).await;
    wait_stored(&s, 1_000).await;
    assert!(
        s.metrics_text()
            .await
            .contains("energyguard_mqtt_connected 1")
    );
}

/// Values stored for sensors `g0..g9` on one instance.
async fn stored_values(s: &Service) -> Vec<i64> {
    let mut values = Vec::new();
    for sensor in 0..10 {
        let (_, history) = s.get(&format!("/sensor/g{sensor}/history")).await;
        for point in history.as_array().into_iter().flatten() {
            values.push(point["value"].as_f64().expect("value") as i64);
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_in_a_share_group_split_the_readings_between_them() {
    const READINGS: i64 = 2_000;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let broker = Mosquitto::start(dir_a.path());
    let group = |id: &str| {
        format!("url = \"mqtt://127.0.0.1:{{port}}\"\nclient_id = \"{id}\"\nshare_group = \"eg\"")
    };
    let a = Service::start_with_broker_as(dir_a.path(), broker.port, &group("eg-a"));
    let b = Service::start_with_broker_as(dir_b.path(), broker.port, &group("eg-b"));
    a.wait_subscribed().await;
    b.wait_subscribed().await;
    let meter = connect(broker.port, "meter", &[]).await;
    for i in 0..READINGS {
        meter.publish_reading(&format!("g{}", i % 10), T0, i).await;
    }
    let mut total = 0;
    for _ in 0..600 {
        total = stored(&a).await + stored(&b).await;
        if total >= READINGS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total, READINGS as u64);
    let (on_a, on_b) = (stored_values(&a).await, stored_values(&b).await);
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "both instances took a share"
    );
    let mut all: Vec<i64> = on_a.into_iter().chain(on_b).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..READINGS).collect::<Vec<_>>(),
        "each reading on exactly one instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_url_or_the_config_and_wrong_ones_are_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (user, password) = ("meter@site", "p:ss w0rd");
    let broker = Mosquitto::start_with_user(dir.path(), Some((user, password)));
    let meter = connect_as(broker.port, "meter", Some((user, password)), &[]).await;

    let in_url =
        "url = \"mqtt://meter%40site:p%3Ass%20w0rd@127.0.0.1:{port}\"\nclient_id = \"eg-url\"";
    let s = Service::start_with_broker_as(dir.path(), broker.port, in_url);
    s.wait_subscribed().await;
    publish_readings(&meter, "c1", 0, 10).await;
    wait_stored(&s, 10).await;
    drop(s);

    let in_config = tempfile::tempdir().expect("temp dir");
    let keys = "url = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"eg-config\"\n\
                username = \"meter@site\"\npassword = \"p:ss w0rd\"";
    let s = Service::start_with_broker_as(in_config.path(), broker.port, keys);
    s.wait_subscribed().await;
    publish_readings(&meter, "c2", 0, 10).await;
    wait_stored(&s, 10).await;
    drop(s);

    let wrong = tempfile::tempdir().expect("temp dir");
    let keys = "url = \"mqtt://meter%40site:guess@127.0.0.1:{port}\"\nclient_id = \"eg-wrong\"";
    let s = Service::start_with_broker_as(wrong.path(), broker.port, keys);
    wait_for_log(&s, "MQTT connection lost");
    let (_, health) = s.get("/healthz").await;
    assert_eq!(health["mqtt"]["connected"], false, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_readings_are_stored_once_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start(dir.path());
    // A new session at every start, so mosquitto surely hands out the
    // retained copies again (a resumed one may keep its subscription).
    let starts = std::sync::atomic::AtomicUsize::new(0);
    common::mqtt_scenarios::retained_readings_are_stored_once(
        || {
            let n = starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mqtt =
                format!("url = \"mqtt://127.0.0.1:{{port}}\"\nclient_id = \"eg-retained-{n}\"");
            Service::start_with_broker_as(dir.path(), broker.port, &mqtt)
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_reading_survives_a_sigkill_and_is_stored_once_after_recovery() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start(dir.path());
    common::mqtt_scenarios::a_sensor_without_quorum_never_holds_back_another(
        || Service::start_with_broker(dir.path(), broker.port),
        true,
    )
    .await;
}

/// The compose file's mosquitto rights (`docker/mosquitto.acl`) on a real
/// mosquitto: meters store readings but forge no alert, EnergyGuard reads
/// readings and publishes alerts as user `energyguard`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_acl_lets_meters_publish_and_only_energyguard_alert() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/mosquitto.acl");
    let users = [
        ("energyguard", "eg-password"),
        ("meters", "meter-password"),
        ("watchers", "watch-password"),
    ];
    let broker = Mosquitto::start_with_acl(dir.path(), &users, Some(&acl));
    let s = Service::start_with_broker_as(
        dir.path(),
        broker.port,
        "url = \"mqtt://127.0.0.1:{port}\"\nusername = \"energyguard\"\npassword = \"eg-password\"",
    );
    s.wait_subscribed().await;
    s.post("/set_threshold", json!({"sensor_id": "acl", "max": 10}))
        .await;
    let meter = connect_as(broker.port, "m", Some(users[1]), &[]).await;
    meter
        .publish_retained(
            "energyguard/alerts/acl",
            json!({"sensor_id": "acl", "state": "forged"}).to_string(),
        )
        .await;
    let mut watcher = connect_as(broker.port, "w", Some(users[2]), &["energyguard/alerts/#"]).await;
    meter.publish_reading("acl", T0, 50).await;
    wait_stored(&s, 1).await;
    let alert: Value = serde_json::from_slice(&watcher.next().await.payload).expect("JSON");
    assert_eq!(
        alert["state"], "firing",
        "the real alert, not the forged one"
    );
}
