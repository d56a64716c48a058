//! The command-line client, run as the built binary against a live service.

use crate::common;

use std::process::{Command, Output};

use common::service::*;
use serde_json::Value;

fn energyguard(service: &Service, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(args)
        .env("ENERGYGUARD_URL", &service.url)
        .env("ENERGYGUARD_TOKEN", token)
        .current_dir(&service.dir)
        .output()
        .expect("run energyguard")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

#[test]
fn put_get_list_history_update_delete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let put = energyguard(
        &s,
        WRITE_TOKEN,
        &[
            "put",
            "meter1",
            "42.5",
            "--timestamp",
            "2025-07-05T18:00:00Z",
            "--unit",
            "kW",
            "--json",
        ],
    );
    assert!(put.status.success(), "{put:?}");
    assert_eq!(json(&put)["key"], "meter1:1751738400000");
    energyguard(
        &s,
        WRITE_TOKEN,
        &["put", "meter1", "40", "--timestamp", "1751738460"],
    );

    let get = energyguard(&s, READ_TOKEN, &["get", "meter1:1751738400000"]);
    let table = stdout(&get);
    assert!(get.status.success());
    assert!(
        table.contains("42.5")
            && table.contains("kW")
            && table.contains("2025-07-05T18:00:00.000Z"),
        "{table}"
    );

    let list = energyguard(&s, READ_TOKEN, &["list", "--sensor-id", "meter1", "--json"]);
    assert_eq!(json(&list).as_array().map(Vec::len), Some(2));
    let table = stdout(&energyguard(&s, READ_TOKEN, &["list"]));
    assert!(
        table.contains("sensor_id") && table.contains("meter1:1751738460000"),
        "a table with a header: {table}"
    );

    let history = energyguard(
        &s,
        READ_TOKEN,
        &[
            "history", "meter1", "--every", "1h", "--agg", "max", "--json",
        ],
    );
    assert_eq!(json(&history)[0]["value"], 42.5);

    let update = energyguard(
        &s,
        WRITE_TOKEN,
        &["update", "meter1:1751738400000", "1", "--json"],
    );
    assert_eq!(json(&update)["value"], 1.0);
    let delete = energyguard(
        &s,
        WRITE_TOKEN,
        &["delete", "meter1:1751738400000", "--json"],
    );
    assert_eq!(json(&delete)["deleted"], "meter1:1751738400000");
}

#[test]
fn cluster_administration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let nodes = energyguard(&s, READ_TOKEN, &["nodes", "--json"]);
    assert_eq!(json(&nodes).as_array().map(Vec::len), Some(3));
    assert!(
        energyguard(&s, ADMIN_TOKEN, &["fail", "node2"])
            .status
            .success()
    );
    let table = stdout(&energyguard(&s, READ_TOKEN, &["nodes"]));
    assert!(table.contains("down"), "{table}");
    let recover = energyguard(&s, ADMIN_TOKEN, &["recover", "node2", "--json"]);
    assert_eq!(json(&recover)["status"], "up");
    let replication = energyguard(
        &s,
        ADMIN_TOKEN,
        &["replication", "full", "--write-quorum", "2", "--json"],
    );
    assert_eq!(
        (
            json(&replication)["strategy"].clone(),
            json(&replication)["write_quorum"].clone()
        ),
        ("full".into(), 2.into())
    );
    let replicas = energyguard(&s, READ_TOKEN, &["replicas", "x:1", "--json"]);
    assert_eq!(json(&replicas)["nodes"].as_array().map(Vec::len), Some(3));
    let threshold = energyguard(
        &s,
        WRITE_TOKEN,
        &[
            "threshold",
            "x",
            "--max",
            "10",
            "--hysteresis",
            "1",
            "--json",
        ],
    );
    assert_eq!(json(&threshold)["max"], 10.0);
    energyguard(
        &s,
        WRITE_TOKEN,
        &["put", "x", "11", "--timestamp", "1751738400"],
    );
    let alerts = energyguard(&s, READ_TOKEN, &["alerts", "--state", "firing", "--json"]);
    assert_eq!(json(&alerts)[0]["sensor_id"], "x");
}

#[test]
fn failures_exit_non_zero_with_the_servers_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let missing = energyguard(&s, READ_TOKEN, &["get", "nobody:1"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("no measurement with key nobody:1") && stderr.contains("404"),
        "{stderr}"
    );

    let forbidden = energyguard(&s, READ_TOKEN, &["fail", "node1"]);
    assert!(!forbidden.status.success());
    assert!(String::from_utf8_lossy(&forbidden.stderr).contains("admin role"));

    let bad = energyguard(&s, WRITE_TOKEN, &["put", "bad id", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sensor_id"));

    let unreachable = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["nodes", "--url", "http://127.0.0.1:9"])
        .output()
        .expect("run");
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
}

#[test]
fn a_bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("bad.toml"),
        "[replication]\nreplication_factor = 7\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("replication.replication_factor"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_csv_over_mqtt_and_reports_bad_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let mut csv = String::from("sensor_id,timestamp,value\n");
    for i in 0..1_000 {
        csv.push_str(&format!("meter{},{},{}\n", i % 10, 1_751_738_400 + i, i));
    }
    csv.push_str("meter1,not-a-time,5\n");
    let file = dir.path().join("readings.csv");
    std::fs::write(&file, csv).expect("write csv");
    let mqtt = format!("mqtt://127.0.0.1:{}", s.mqtt_port);
    let output = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["publish", file.to_str().expect("path"), "--mqtt", &mqtt])
        .output()
        .expect("run publish");
    assert!(
        !output.status.success(),
        "a refused line makes the exit code non-zero"
    );
    assert!(
        stdout(&output).contains("published 1000 readings, 1 lines refused"),
        "{}",
        stdout(&output)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 1002"));
    for _ in 0..200 {
        let copies = s.copies().await;
        if copies == 2_000 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the 1,000 published readings were not all stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_alerts_as_they_arrive() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let mqtt = format!("mqtt://127.0.0.1:{}", s.mqtt_port);
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["watch", "--json", "--mqtt", &mqtt])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run watch");
    let stdout = watcher.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    energyguard(&s, WRITE_TOKEN, &["threshold", "hot", "--max", "10"]);
    // Keep raising until the watcher (which subscribes asynchronously) sees one.
    let mut seen = None;
    for i in 0..100 {
        energyguard(
            &s,
            WRITE_TOKEN,
            &[
                "put",
                "hot",
                &(20 + i).to_string(),
                "--timestamp",
                &(1_751_738_400 + i).to_string(),
            ],
        );
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    let alert: Value = serde_json::from_str(&seen.expect("an alert line")).expect("JSON line");
    assert_eq!(
        (alert["sensor_id"].clone(), alert["state"].clone()),
        ("hot".into(), "firing".into())
    );
}

#[test]
fn a_taken_mqtt_port_fails_at_start_naming_the_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    std::fs::write(
        dir.path().join("taken.toml"),
        format!("[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["serve", "--config", "taken.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mqtt.listen") && stderr.contains("mqtt.embedded"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_second_service_on_the_same_data_dir_is_refused_and_the_first_keeps_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = Service::start_in(dir.path(), "");
    let put = energyguard(
        &first,
        WRITE_TOKEN,
        &["put", "s1", "5", "--timestamp", "1751328000"],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let second_dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        second_dir.path(),
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    let config_text = std::fs::read_to_string(&config).expect("read config");
    let shared = config_text.replace(
        &second_dir.path().join("data").display().to_string(),
        &dir.path().join("data").display().to_string(),
    );
    std::fs::write(&config, shared).expect("write config");
    let second = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another process") && stderr.contains("data_dir"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));

    let get = energyguard(&first, READ_TOKEN, &["get", "s1:1751328000000", "--json"]);
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(json(&get)["value"], 5.0);
}

#[test]
fn the_service_can_log_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "listen = \"127.0.0.1:0\"", "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("ENERGYGUARD_API_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start energyguard");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let ready = line.contains("HTTP API listening on");
        lines.push(line);
        if ready || lines.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("HTTP API listening on")),
        "{lines:#?}"
    );
    for line in &lines {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some(), "no {field} in {line}");
        }
    }
}
