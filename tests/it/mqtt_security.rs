//! The embedded broker against strangers and forgers: users with roles and
//! topic rights, EnergyGuard's own client id and topics reserved, last
//! wills checked, a cap on connections, and no anonymous broker on a
//! public address. The real binary, ordinary MQTT clients (rumqttc).

use crate::common;

use std::time::Duration;

use common::mqtt_client::{connect, connect_as};
use common::service::*;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use serde_json::json;
use tokio::io::AsyncReadExt;

const T0: i64 = 1_751_738_400_000;
/// `energyguard hash-password` of "meter-password", "watcher-password" and
/// "admin-password".
const METER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$Ols4ap6srzwW1EYsKLYHAg$05Tz3S1B18swZ5S200P8jDCKCI3fMuFTz4NJvn8b234";
const WATCHER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$A8+ppucWELcbnetX+MOqPw$+qqREYSSfqf12pBs+m+fD3yxeP3EvkPqNfny3wYxdLk";
const ADMIN_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$kU9BVaRp6/waM2qy5NwRfw$pBK3/vske7WHDNQz4tLViuSXJzeTgEkCoOsVhGWGmMo";

fn with_users() -> String {
    format!(
        "users = [\n\
         {{username = \"meter\", password_hash = \"{METER_HASH}\", role = \"meter\"}},\n\
         {{username = \"watcher\", password_hash = \"{WATCHER_HASH}\", role = \"watcher\"}},\n\
         {{username = \"admin\", password_hash = \"{ADMIN_HASH}\", role = \"admin\"}},\n]"
    )
}

/// The CONNACK code a client gets, with `credentials` and a `will`.
async fn connack(
    port: u16,
    client_id: &str,
    credentials: Option<(&str, &str)>,
    will: Option<LastWill>,
) -> ConnectReturnCode {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack.code,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return code,
            Err(error) => panic!("expected a CONNACK, got {error}"),
        }
    }
}

/// The SUBACK codes for `filter`, subscribed as `credentials`.
async fn suback(port: u16, credentials: (&str, &str), filter: &str) -> Vec<SubscribeReasonCode> {
    let mut options = MqttOptions::new(format!("sub-{}", credentials.0), "127.0.0.1", port);
    options.set_credentials(credentials.0, credentials.1);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    loop {
        match eventloop.poll().await.expect("connected") {
            Event::Incoming(Packet::ConnAck(_)) => {
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .expect("subscribe");
            }
            Event::Incoming(Packet::SubAck(ack)) => return ack.return_codes,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_forgers_are_refused_and_meters_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in_with_mqtt(dir.path(), &with_users());
    s.wait_subscribed().await;
    let port = s.mqtt_port;

    assert_eq!(
        connack(port, "stranger", None, None).await,
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        connack(port, "m1", Some(("meter", "guess")), None).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        connack(port, "m1", Some(("nobody", "meter-password")), None).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let forged_will = LastWill::new(
        "energyguard/alerts/s1",
        r#"{"state": "firing"}"#,
        QoS::AtLeastOnce,
        true,
    );
    assert_eq!(
        connack(
            port,
            "m1",
            Some(("meter", "meter-password")),
            Some(forged_will)
        )
        .await,
        ConnectReturnCode::NotAuthorized,
        "a last will may not forge an alert"
    );

    // A meter stores readings, but forges no retained alert and reads nothing.
    let meter = connect_as(port, "m1", Some(("meter", "meter-password")), &[]).await;
    meter
        .publish_retained(
            "energyguard/alerts/s1",
            json!({"sensor_id": "s1", "state": "firing"}).to_string(),
        )
        .await;
    meter.publish("energyguard/deadletter", "forged").await;
    meter.publish_reading("s1", T0, 1).await;
    assert_eq!(
        suback(port, ("meter", "meter-password"), "#").await,
        [SubscribeReasonCode::Failure]
    );
    // A watcher reads alerts but stores nothing.
    let watcher_login = ("watcher", "watcher-password");
    let watcher = connect_as(port, "w1", Some(watcher_login), &[]).await;
    watcher.publish_reading("s2", T0, 2).await;
    assert_eq!(
        suback(port, watcher_login, "energyguard/readings/+").await,
        [SubscribeReasonCode::Failure]
    );
    assert_eq!(
        suback(port, watcher_login, "energyguard/alerts/#").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // Only the real alert reaches a watcher: no forged retained one first.
    let mut alerts = connect_as(port, "w2", Some(watcher_login), &["energyguard/alerts/#"]).await;
    s.post("/set_threshold", json!({"sensor_id": "real", "max": 10}))
        .await;
    meter.publish_reading("real", T0, 50).await;
    let first = alerts.next().await;
    assert_eq!(first.topic, "energyguard/alerts/real");

    common::wait_until(Duration::from_secs(10), || async {
        s.get(&format!("/measurement/s1:{}", T0 + 1)).await.0 == reqwest::StatusCode::OK
    })
    .await;
    assert_eq!(
        s.get(&format!("/measurement/s2:{}", T0 + 2)).await.0,
        reqwest::StatusCode::NOT_FOUND,
        "a watcher's reading was stored"
    );
    let metrics = s.metrics_text().await;
    for needle in [
        r#"energyguard_mqtt_refused_total{packet="connect"} 4"#,
        r#"energyguard_mqtt_refused_total{packet="publish"} 3"#,
        r#"energyguard_mqtt_refused_total{packet="subscribe"} 2"#,
    ] {
        assert!(metrics.contains(needle), "{needle} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_at_once_and_others_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in_with_mqtt(dir.path(), "max_connections = 3");
    s.wait_subscribed().await;
    let address = format!("127.0.0.1:{}", s.mqtt_port);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    let mut extra = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut byte))
        .await
        .expect("closed at once, not queued");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let (_, health) = s.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(health["mqtt"]["subscribed"], true, "{health}");
    drop(idle);
    // A slot frees once a connection ends.
    common::wait_until(Duration::from_secs(5), || async {
        s.metrics_text()
            .await
            .contains("energyguard_mqtt_connections_refused_total 1")
    })
    .await;
    let meter = connect(s.mqtt_port, "after", &[]).await;
    meter.publish_reading("capped", T0, 1).await;
    common::wait_until(Duration::from_secs(10), || async {
        s.get(&format!("/measurement/capped:{}", T0 + 1)).await.0 == reqwest::StatusCode::OK
    })
    .await;
}

/// mosquitto 2's rule: no anonymous broker on a public address unless the
/// operator asks for one.
#[test]
fn a_public_broker_without_users_refuses_to_start_naming_the_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |mqtt: &str| {
        std::fs::write(
            dir.path().join("public.toml"),
            format!("[mqtt]\nlisten = \"0.0.0.0:{}\"\n{mqtt}\n", free_port()),
        )
        .expect("write");
        std::process::Command::new(env!("CARGO_BIN_EXE_energyguard"))
            .args(["serve", "--config", "public.toml"])
            .current_dir(dir.path())
            .env_remove("ENERGYGUARD_API_TOKEN")
            .output()
            .expect("run")
    };
    let refused = run("");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for key in ["mqtt.listen", "mqtt.users", "mqtt.allow_anonymous"] {
        assert!(stderr.contains(key), "{key} in {stderr}");
    }
    let bad_hash = run("users = [{username = \"m\", password_hash = \"plain\", role = \"meter\"}]");
    assert_eq!(bad_hash.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_hash.stderr);
    assert!(stderr.contains("mqtt.users[0].password_hash"), "{stderr}");
}

#[test]
fn hash_password_reads_standard_input_and_refuses_short_passwords() {
    use std::io::Write;
    let hash = |password: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_energyguard"))
            .arg("hash-password")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{password}").expect("write");
        drop(stdin);
        child.wait_with_output().expect("output")
    };
    let made = hash("correct horse battery");
    assert!(made.status.success());
    let printed = String::from_utf8_lossy(&made.stdout);
    let parsed = argon2::PasswordHash::new(printed.trim()).expect("a PHC hash");
    use argon2::PasswordVerifier;
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok()
    );
    let short = hash("short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));
}

/// Even where anonymous clients are welcome (no users, loopback), nobody
/// but EnergyGuard publishes alerts: a forged retained alert never reaches
/// a watcher, and the real one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_client_cannot_forge_a_retained_alert() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    s.wait_subscribed().await;
    let stranger = connect(s.mqtt_port, "stranger", &[]).await;
    stranger
        .publish_retained(
            "energyguard/alerts/s1",
            json!({"sensor_id": "s1", "state": "firing"}).to_string(),
        )
        .await;
    s.post("/set_threshold", json!({"sensor_id": "real", "max": 10}))
        .await;
    let mut watcher = connect(s.mqtt_port, "watcher", &["energyguard/alerts/#"]).await;
    stranger.publish_reading("real", T0, 50).await;
    assert_eq!(watcher.next().await.topic, "energyguard/alerts/real");
}
