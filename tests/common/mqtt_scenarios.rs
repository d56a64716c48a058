//! MQTT scenarios run against both kinds of broker (the embedded one and a
//! real mosquitto): each takes a function that starts the service in the
//! same directory, so it can restart it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::mqtt_client::connect;
use super::service::Service;
use super::wait_until;

pub const T0: i64 = 1_751_738_400_000;

/// The `mqtt` section of `/healthz`.
async fn mqtt_health(s: &Service) -> Value {
    let (_, health) = s.call(Method::GET, "/healthz", None, None).await;
    health["mqtt"].clone()
}

async fn history_len(s: &Service, sensor: &str) -> usize {
    let (_, history) = s.get(&format!("/sensor/{sensor}/history")).await;
    history.as_array().map_or(0, Vec::len)
}

async fn stored(s: &Service, key: &str) -> bool {
    s.get(&format!("/measurement/{key}")).await.0 == StatusCode::OK
}

/// Publishes one fresh reading of sensor `probe` and waits until it is
/// stored: the broker delivers in order, so whatever it handed out before
/// (retained copies on subscription) has then been taken too.
async fn probe(s: &Service, round: i64) {
    let meter = connect(s.mqtt_port, &format!("probe-{round}"), &[]).await;
    meter.publish_reading("probe", T0, round).await;
    wait_until(Duration::from_secs(20), || async {
        history_len(s, "probe").await == round as usize + 1
    })
    .await;
}

/// A retained JSON reading and a retained bare number are each stored once,
/// across two restarts; the JSON one, deleted, stays deleted. With a broker
/// that keeps retained messages across EnergyGuard's restarts
/// (`broker_keeps_retained`), each restart is also shown to have skipped
/// their two retained copies.
pub async fn retained_readings_are_stored_once(
    start: impl Fn() -> Service,
    broker_keeps_retained: bool,
) {
    let mut s = start();
    s.wait_subscribed().await;
    let meter = connect(s.mqtt_port, "retaining-meter", &[]).await;
    meter
        .publish_retained(
            "energyguard/readings/kept",
            json!({"timestamp": T0 / 1000, "value": 1.5}).to_string(),
        )
        .await;
    meter
        .publish_retained("energyguard/readings/bare", "7.5")
        .await;
    wait_until(Duration::from_secs(20), || async {
        history_len(&s, "kept").await == 1 && history_len(&s, "bare").await == 1
    })
    .await;
    drop(meter);
    let (status, _) = s
        .admin(Method::DELETE, &format!("/measurement/kept:{T0}"))
        .await;
    assert_eq!(status, StatusCode::OK);

    for round in 0..2 {
        assert!(s.terminate().success(), "a clean stop");
        s = start();
        s.wait_subscribed().await;
        probe(&s, round).await;
        if broker_keeps_retained {
            // Both copies handed out on subscribing are seen (and skipped)
            // before the checks below, which they must not change.
            let name = "energyguard_mqtt_retained_copies_skipped_total";
            let skipped = || async {
                let metrics = s.metrics_text().await;
                metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            for _ in 0..2_000 {
                if skipped().await >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let metrics = s.metrics_text().await;
            let log: Vec<String> = s.log.try_iter().collect();
            assert_eq!(skipped().await, 2, "restart {round}: {metrics}\n{log:#?}");
        }
        assert!(
            !stored(&s, &format!("kept:{T0}")).await,
            "restart {round}: the deleted retained reading came back"
        );
        assert_eq!(
            history_len(&s, "bare").await,
            1,
            "restart {round}: the retained bare number was stored again"
        );
    }
}

/// Sets write quorum 2 (consistent, RF 2) and fails node2; answers a sensor
/// that then lacks its quorum and one that does not.
pub async fn fail_node2_under_quorum_2(s: &Service) -> (String, String) {
    let (status, body) = s
        .post(
            "/configure_replication",
            json!({"strategy": "consistent", "replication_factor": 2, "write_quorum": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.admin(Method::POST, "/fail_node/node2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sensors_on_and_off(s, "node2").await
}

/// The first sensors `q0, q1, …` with `node` among their replicas and
/// without it.
async fn sensors_on_and_off(s: &Service, node: &str) -> (String, String) {
    let (mut on, mut off) = (None, None);
    for i in 0..500 {
        let sensor = format!("q{i}");
        let (status, replicas) = s.get(&format!("/replica_nodes/{sensor}:{T0}")).await;
        assert_eq!(status, StatusCode::OK, "{replicas}");
        let holds = replicas["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n == node);
        let slot = if holds { &mut on } else { &mut off };
        slot.get_or_insert(sensor);
        if let (Some(on), Some(off)) = (&on, &off) {
            return (on.clone(), off.clone());
        }
    }
    panic!("no sensor on and off {node} among 500");
}

/// With write quorum 2 and one replica failed, a sensor whose replicas
/// cannot meet the quorum is parked: a healthy sensor's reading published
/// after it is stored within 3 s; once the node is recovered, the parked
/// reading is stored exactly once. With `kill_while_parked`, the service is
/// SIGKILLed while the reading waits and started again before the recovery.
pub async fn a_sensor_without_quorum_never_holds_back_another(
    start: impl Fn() -> Service,
    kill_while_parked: bool,
) {
    let mut s = start();
    s.wait_subscribed().await;
    let (blocked, healthy) = fail_node2_under_quorum_2(&s).await;

    let meter = connect(s.mqtt_port, "quorum-meter", &[]).await;
    meter.publish_reading(&blocked, T0, 1).await;
    meter.publish_reading(&healthy, T0, 2).await;
    let healthy_key = format!("{healthy}:{}", T0 + 2);
    wait_until(Duration::from_secs(3), || async {
        stored(&s, &healthy_key).await
    })
    .await;
    wait_until(Duration::from_secs(3), || async {
        mqtt_health(&s).await["parked"] == 1
    })
    .await;
    let blocked_key = format!("{blocked}:{}", T0 + 1);
    assert!(!stored(&s, &blocked_key).await, "stored without its quorum");
    assert!(
        s.metrics_text()
            .await
            .contains("energyguard_mqtt_parked_readings 1")
    );
    drop(meter);

    if kill_while_parked {
        s.kill();
        s = start();
        s.wait_subscribed().await;
        assert_eq!(mqtt_health(&s).await["parked"], 1, "parked on disk");
    }
    let (status, body) = s.admin(Method::POST, "/recover_node/node2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(Duration::from_secs(20), || async {
        stored(&s, &blocked_key).await && mqtt_health(&s).await["parked"] == 0
    })
    .await;
    assert_eq!(history_len(&s, &blocked).await, 1, "stored once");
    assert_eq!(s.copies().await, 4, "two readings, two copies each");
}
