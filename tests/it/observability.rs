//! What operators watch: a live scrape after traffic of every kind passes
//! `promtool check metrics` and has every metric the shipped dashboard and
//! rules name; the rules pass `promtool check rules` and their unit tests,
//! and the compose file's Prometheus configuration checks; every state
//! change that matters is one log line with an `event`, and a normal run
//! logs no ERROR.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::mqtt_client::connect;
use common::mqtt_scenarios::fail_node2_under_quorum_2;
use common::promtool::promtool_passes;
use common::service::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const T0: i64 = 1_751_738_400_000;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Traffic of every kind: HTTP readings good and bad, an alert, MQTT
/// readings good and bad, a console session, a node taken out, an MQTT
/// reading parked for lack of quorum, the node's recovery, which stores the
/// parked reading, and a replication change that moves readings.
async fn traffic_of_every_kind(s: &Service) {
    s.wait_subscribed().await;
    let (status, _) = s
        .post("/set_threshold", json!({"sensor_id": "hot", "max": 10}))
        .await;
    assert!(status.is_success());
    let (status, _) = s
        .post(
            "/ingest",
            json!({"sensor_id": "hot", "timestamp": T0, "value": 20}),
        )
        .await;
    assert!(status.is_success());
    let _ = s.post("/ingest", json!({"value": "not a reading"})).await;
    let meter = connect(s.mqtt_port, "meter", &[]).await;
    meter.publish_reading("mqtt-meter", T0, 0).await;
    meter
        .publish("energyguard/readings/mqtt-meter", "not json")
        .await;
    s.console_session(READ_TOKEN).await;
    // Clients that leave properly: DISCONNECT, then the socket closes.
    connect(s.mqtt_port, "leaving", &[])
        .await
        .disconnect()
        .await;
    for round in 0..3 {
        connect_and_leave(s.mqtt_port, &format!("leaver{round}")).await;
    }

    let (blocked, _) = fail_node2_under_quorum_2(s).await;
    meter.publish_reading(&blocked, T0, 1).await;
    let parked = || async {
        s.metrics_text()
            .await
            .contains("energyguard_mqtt_parked_readings 1")
    };
    common::wait_until(Duration::from_secs(10), parked).await;
    let (status, body) = s.admin(Method::POST, "/recover_node/node2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = || async {
        s.get(&format!("/sensor/{blocked}/history"))
            .await
            .1
            .as_array()
            .is_some_and(|h| h.len() == 1)
    };
    common::wait_until(Duration::from_secs(10), stored).await;
    // Every node holds every sensor from now on: readings move.
    let (status, body) = s
        .post("/configure_replication", json!({"strategy": "full"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let settled = || async {
        let text = s.metrics_text().await;
        text.contains("energyguard_mqtt_parked_readings 0")
            && text.contains("energyguard_rebalance_in_progress 0")
    };
    common::wait_until(Duration::from_secs(20), settled).await;
}

/// Leaves as `mosquitto_pub` does: CONNECT, its CONNACK, DISCONNECT, and
/// the socket closed at once (rumqttd sees two disconnections).
async fn connect_and_leave(port: u16, client_id: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let id = client_id.as_bytes();
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60, 0, id.len() as u8]);
    connect.extend_from_slice(id);
    stream.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    stream.write_all(&[0xE0, 0]).await.expect("DISCONNECT");
}

/// The metric families a PromQL expression or a dashboard mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["energyguard_", "process_"] {
        for (start, _) in text.match_indices(prefix) {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_string();
            names.insert(family);
        }
    }
    names
}

#[tokio::test]
async fn a_scrape_after_traffic_of_every_kind_lints_clean_and_has_every_shipped_metric() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    traffic_of_every_kind(&s).await;
    let scrape = s.metrics_text().await;

    // Debian's promtool: HELP and TYPE, names, units, counters' suffix.
    let printed = promtool_passes(dir.path(), &["check", "metrics"], &scrape);
    assert_eq!(printed.trim(), "", "promtool's remarks on:\n{scrape}");

    // The traffic left its mark on the figures it should have moved.
    for needle in [
        "energyguard_readings_accepted_total{door=\"mqtt\"} 2",
        "energyguard_readings_rejected_total{door=\"http\",reason=\"invalid\"} 1",
        "energyguard_recoveries_total{node=\"node2\",outcome=\"succeeded\"} 1",
        "energyguard_mqtt_unparked_total 1",
        "energyguard_console_sessions 1",
        "energyguard_node_commit_duration_seconds_bucket{node=\"node1\",le=",
        "energyguard_mqtt_consumer_lag_seconds 0",
    ] {
        assert!(scrape.contains(needle), "{needle} not in:\n{scrape}");
    }

    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    for file in ["alert-rules.yml", "grafana-dashboard.json"] {
        let path = repository().join("docs/observability").join(file);
        let text = std::fs::read_to_string(&path).expect(file);
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{file} names {named:?}");
        let missing: Vec<_> = named
            .iter()
            .filter(|name| !exported.contains(name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} names {missing:?}, not in:\n{scrape}"
        );
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("docs/observability/grafana-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 20);
    // Every panel reads the data source the importer or provisioning picks.
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
    }
}

#[test]
fn the_rules_check_and_fire_when_their_unit_tests_say_and_prometheus_loads_them() {
    let observability = repository().join("docs/observability");
    let checked = promtool_passes(&observability, &["check", "rules", "alert-rules.yml"], "");
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool_passes(
        &observability,
        &["test", "rules", "alert-rules.test.yml"],
        "",
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The compose file's Prometheus finds the same rules by the same path.
    let config = promtool_passes(
        repository(),
        &["check", "config", "docker/prometheus.yml"],
        "",
    );
    assert!(config.contains("SUCCESS: 7 rules found"), "{config}");
}

/// The `event` field of a text log line, if it has one.
fn event_of(line: &str) -> Option<&str> {
    line.split("event=\"").nth(1)?.split('"').next()
}

#[tokio::test]
async fn every_state_change_is_one_event_line_and_a_normal_run_logs_no_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    traffic_of_every_kind(&s).await;
    let (status, log) = s.terminate_with_log();
    assert!(status.success());

    let events: Vec<(&str, &String)> = log
        .iter()
        .filter_map(|line| event_of(line).map(|event| (event, line)))
        .collect();
    let lines_of = |event: &str| -> Vec<&String> {
        events
            .iter()
            .filter(|(e, _)| *e == event)
            .map(|(_, line)| *line)
            .collect()
    };
    let one = |event: &str| -> &String {
        let lines = lines_of(event);
        assert_eq!(lines.len(), 1, "{event}: {lines:#?}\nin {log:#?}");
        lines[0]
    };
    let down = one("node_down");
    assert!(
        down.contains("node=node2") && down.contains("reason=\"admin\""),
        "{down}"
    );
    assert!(one("recovery_started").contains("node=node2"));
    let up = one("node_up");
    for field in ["node=node2", "hints=", "repaired=", "took_ms="] {
        assert!(up.contains(field), "{field} in {up}");
    }
    assert!(one("rebalance_started").to_lowercase().contains("full"));
    let finished = one("rebalance_finished");
    for field in ["sensors_moved=", "records_copied="] {
        assert!(finished.contains(field), "{field} in {finished}");
    }
    assert!(one("readings_parked").contains("sensor="));
    assert!(one("parked_flushed").contains("still_parked=0"));
    assert!(lines_of("recovery_failed").is_empty());

    let errors: Vec<&String> = log.iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "a normal run logged errors: {errors:#?}");
}
