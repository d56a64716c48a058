//! EnergyGuard consuming from a real external mosquitto with persistence:
//! readings and dead letters flow, and a SIGKILL of EnergyGuard mid-stream
//! loses nothing and stores nothing twice, because messages are
//! acknowledged only after storage and the broker redelivers the rest.

mod common;

use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::mqtt_client::connect;
use common::service::*;
use serde_json::{Value, json};

const T0: i64 = 1_751_738_400_000;

/// Readings stored: copies on the nodes divided by two (consistent, RF 2).
async fn stored(s: &Service) -> u64 {
    s.copies().await / 2
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
    for _ in 0..200 {
        if stored(&s).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
            let payload = format!(
                r#"{{"timestamp":{},"value":{i}}}"#,
                (T0 + i) as f64 / 1000.0
            );
            meter
                .publish(&format!("energyguard/readings/k{}", i % 50), payload)
                .await;
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
    let mut count = 0;
    for _ in 0..1_200 {
        count = stored(&s).await;
        if count == READINGS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count, READINGS as u64,
        "all {READINGS} stored after the restart"
    );
    let copies = s.copies().await;
    assert_eq!(
        copies,
        2 * READINGS as u64,
        "exactly two copies of each, none twice"
    );
}
