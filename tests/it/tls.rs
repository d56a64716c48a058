//! TLS end to end, with certificates the test makes (rcgen): HTTPS for the
//! API and the CLI (`--ca`, global options before or after the command),
//! MQTT over TLS on the embedded broker's `mqtt.tls_listen`, and the
//! consumer of an external `mqtts://` mosquitto.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::service::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

const T0: i64 = 1_751_738_400_000;

/// A self-signed certificate for localhost and 127.0.0.1: (cert, key) PEM
/// files in `dir`; the certificate is its own CA.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

/// The config keys `tls_cert` and `tls_key` naming the two files.
fn tls_keys(cert: &Path, key: &Path) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    )
}

fn https_client(ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(energyguard::tls::client_config(Some(ca)).expect("CA"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_cli_speak_https() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = certificate(dir.path());
    let s = Service::start_in(dir.path(), &tls_keys(&cert, &key));
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let client = https_client(&cert);
    let health = client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .expect("an HTTPS answer");
    assert!(health.status().is_success());
    let plain = s.url.replace("https://", "http://");
    assert!(
        reqwest::Client::new()
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success()),
        "plain HTTP answered on the HTTPS port"
    );

    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_energyguard"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("ENERGYGUARD_TOKEN")
            .env_remove("ENERGYGUARD_URL")
            .output()
            .expect("run the CLI")
    };
    let ca = cert.display().to_string();
    let before = cli(&[
        "--url",
        &s.url,
        "--ca",
        &ca,
        "--token",
        ADMIN_TOKEN,
        "--json",
        "nodes",
    ]);
    assert!(before.status.success(), "{before:?}");
    let nodes: serde_json::Value = serde_json::from_slice(&before.stdout).expect("JSON");
    assert_eq!(nodes.as_array().map(Vec::len), Some(3));
    let after = cli(&[
        "nodes",
        "--url",
        &s.url,
        "--ca",
        &ca,
        "--token",
        ADMIN_TOKEN,
    ]);
    assert!(after.status.success(), "{after:?}");
    let untrusted = cli(&["nodes", "--url", &s.url, "--token", ADMIN_TOKEN]);
    assert!(
        !untrusted.status.success(),
        "a certificate nobody vouched for"
    );
}

/// An MQTT client over TLS trusting `ca`.
async fn tls_meter(port: u16, ca: &Path) -> AsyncClient {
    let mut options = MqttOptions::new("tls-meter", "localhost", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(energyguard::tls::client_config(Some(ca)).expect("CA")),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (connected, mut ready) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = connected.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("connected over TLS within 10 s");
    client
}

async fn publish_and_wait_stored(s: &Service, meter: &AsyncClient, sensor: &str) {
    meter
        .publish(
            format!("energyguard/readings/{sensor}"),
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"timestamp": {}, "value": 1}}"#, T0 / 1000),
        )
        .await
        .expect("publish");
    common::wait_until(Duration::from_secs(10), || async {
        s.get(&format!("/measurement/{sensor}:{T0}")).await.0 == reqwest::StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_speaks_mqtt_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = certificate(dir.path());
    let s = Service::start_in_with_mqtt(
        dir.path(),
        &format!("tls_listen = \"127.0.0.1:0\"\n{}", tls_keys(&cert, &key)),
    );
    s.wait_subscribed().await;
    let port = s.mqtts_port.expect("an MQTT over TLS port in the log");
    let meter = tls_meter(port, &cert).await;
    publish_and_wait_stored(&s, &meter, "over-tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_reads_an_external_broker_over_mqtts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = certificate(dir.path());
    let broker = Mosquitto::start_tls(dir.path(), &cert, &key);
    let s = Service::start_with_broker_as(
        dir.path(),
        broker.port,
        &format!(
            "url = \"mqtts://localhost:{{port}}\"\nclient_id = \"eg-tls\"\nca_file = \"{}\"",
            cert.display()
        ),
    );
    s.wait_subscribed().await;
    let meter = tls_meter(broker.port, &cert).await;
    publish_and_wait_stored(&s, &meter, "via-mqtts").await;
}
