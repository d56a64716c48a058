//! MQTT: readings in on `P/readings/<sensor_id>`, alerts out on
//! `P/alerts/<sensor_id>`, dead letters on `P/deadletter`.
//!
//! * [`broker`]: the embedded broker (rumqttd) and its [`front_door`] on
//!   `mqtt.listen`, which keeps the readings [`backlog`] within what the
//!   broker holds;
//! * [`embedded`]: the consumer of the embedded broker, in-process;
//!   [`external`]: the consumer of an external broker, QoS 1, acknowledging
//!   after storage;
//! * [`intake`]: what both do with received messages (retained copies,
//!   parsing, dead letters, store or [`park`]);
//! * [`outbox`]: what EnergyGuard publishes (alerts, dead letters);
//! * here: topic names, payload parsing, and the consumer's status.
//!
//! Readings arrive as a JSON reading object, a JSON array of them, or a bare
//! number. Anything that cannot be stored goes to `P/deadletter` as
//! `{"topic", "payload", "error"}`.

pub mod backlog;
pub mod broker;
pub mod embedded;
pub mod external;
pub mod front_door;
pub mod intake;
pub mod lag;
pub mod outbox;
pub mod park;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rumqttc::MqttOptions;
use serde_json::Value;

use crate::reading::body::{BodyError, Parsed, parse_body};
use crate::reading::{Reading, SensorId};

/// Resolves once `flag` is true (a stop signal), or when its sender is gone.
async fn signalled(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Whether the consumer is connected and subscribed, and what waits in the
/// park and the embedded broker's backlog, for `/healthz` and `/metrics`.
/// Until the first subscription of a new session is in place, the broker
/// delivers readings published on `P/readings/+` to nobody.
pub struct ConsumerStatus {
    connected: AtomicBool,
    subscribed: AtomicBool,
    park: Arc<park::Park>,
    backlog: Option<Arc<backlog::Backlog>>,
    lag: Arc<lag::Lag>,
}

impl ConsumerStatus {
    /// `lag` is the one the consumer (or, with the embedded broker, the
    /// `backlog`) keeps.
    pub fn new(
        park: Arc<park::Park>,
        backlog: Option<Arc<backlog::Backlog>>,
        lag: Arc<lag::Lag>,
    ) -> Self {
        Self {
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            park,
            backlog,
            lag,
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Readings parked until their sensors' quorum is back.
    pub fn parked(&self) -> u64 {
        self.park.total()
    }

    /// Bytes of readings the embedded broker accepted and EnergyGuard has
    /// not stored yet; `None` with an external broker.
    pub fn backlog_bytes(&self) -> Option<usize> {
        self.backlog.as_ref().map(|b| b.used())
    }

    /// The age of the oldest message taken in and not yet stored
    /// ([`lag`]).
    pub fn lag(&self) -> std::time::Duration {
        self.lag.age()
    }

    /// A (re)connection starts without a subscription.
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.subscribed.store(false, Ordering::Relaxed);
        metrics::gauge!("energyguard_mqtt_connected").set(if connected { 1.0 } else { 0.0 });
    }

    fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }
}

/// Readings in one MQTT message at most (the HTTP batch limit too).
pub const MAX_READINGS_PER_MESSAGE: usize = 10_000;

/// A broker URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: String,
}

/// Connection options for `mqtt://[user[:password]@]host[:port]` (or
/// `tcp://`), or `mqtts://` for MQTT over TLS (port 8883 by default,
/// trusting the system's CAs and those in `ca_file`), with percent-encoded
/// credentials decoded. Callers add their session settings.
pub fn connection_options(
    url: &str,
    client_id: String,
    ca_file: Option<&std::path::Path>,
) -> Result<MqttOptions, UrlError> {
    let error = |reason: String| UrlError {
        url: url.to_string(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| error(e.to_string()))?;
    let tls = match parsed.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        _ => {
            return Err(error(
                "the scheme must be mqtt://, tcp:// or mqtts://".into(),
            ));
        }
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| error("a host is required".into()))?;
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut options = MqttOptions::new(client_id, host, port);
    if tls {
        let config = crate::tls::client_config(ca_file).map_err(|e| error(e.to_string()))?;
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
        ));
    }
    if !parsed.username().is_empty() {
        let decode = |text: &str| -> Result<String, UrlError> {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|t| t.into_owned())
                .map_err(|e| error(format!("credentials: {e}")))
        };
        options.set_credentials(
            decode(parsed.username())?,
            decode(parsed.password().unwrap_or(""))?,
        );
    }
    Ok(options)
}

/// The topics under a prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The subscription filter for readings, through a shared subscription
    /// when `share_group` is not empty.
    pub fn readings_filter(&self, share_group: &str) -> String {
        if share_group.is_empty() {
            format!("{}/readings/+", self.prefix)
        } else {
            format!("$share/{share_group}/{}/readings/+", self.prefix)
        }
    }

    /// A readings topic no sensor uses, unique to this process: the
    /// consumer's shutdown marker (see [`embedded`]).
    pub fn drain_marker(&self) -> String {
        format!(
            "{}/readings/energyguard-drain-{:016x}",
            self.prefix,
            rand::random::<u64>()
        )
    }

    pub fn deadletter(&self) -> String {
        format!("{}/deadletter", self.prefix)
    }

    pub fn alerts(&self, sensor: &SensorId) -> String {
        format!("{}/alerts/{sensor}", self.prefix)
    }

    /// The sensor named by a readings topic.
    pub fn sensor_of(&self, topic: &str) -> Result<SensorId, String> {
        let sensor = topic
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix("/readings/"))
            .ok_or_else(|| {
                format!(
                    "topic {topic:?} is not {}/readings/<sensor_id>",
                    self.prefix
                )
            })?;
        sensor
            .parse::<SensorId>()
            .map_err(|e| format!("topic {topic:?}: {e}"))
    }

    /// Parses one message into readings, or says why it cannot be stored.
    pub fn parse_message(
        &self,
        topic: &str,
        payload: &[u8],
        received_ms: i64,
    ) -> Result<Vec<Reading>, String> {
        let sensor = self.sensor_of(topic)?;
        match parse_body(
            payload,
            Some(&sensor),
            received_ms,
            MAX_READINGS_PER_MESSAGE,
        ) {
            Ok(Parsed::One(reading)) => Ok(vec![reading]),
            Ok(Parsed::Many(readings)) => Ok(readings),
            Err(BodyError::NotUtf8(e)) => Err(format!("payload is not UTF-8: {e}")),
            Err(BodyError::NotJson(e)) => Err(format!("payload is not JSON: {e}")),
            Err(BodyError::TooMany { max }) => Err(format!("at most {max} readings per message")),
            Err(BodyError::Invalid {
                index: Some(i),
                error,
                ..
            }) => Err(format!("[{i}].{error}")),
            Err(BodyError::Invalid { error, .. }) => Err(error.to_string()),
        }
    }
}

/// The dead letter for a message that could not be stored.
pub fn dead_letter(topic: &str, payload: &[u8], error: &str) -> Value {
    serde_json::json!({
        "topic": topic,
        "payload": String::from_utf8_lossy(payload),
        "error": error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_751_738_400_000;

    #[test]
    fn every_payload_form() {
        let topics = Topics::new("eg");
        let one = topics
            .parse_message("eg/readings/m1", br#"{"value": 2.5, "unit": "W"}"#, NOW)
            .expect("object");
        assert_eq!(
            (one[0].key.to_string(), one[0].sample.value),
            ("m1:1751738400000".into(), 2.5)
        );
        let many = topics
            .parse_message(
                "eg/readings/m1",
                br#"[{"value": 1, "timestamp": 1751738401}, {"sensor_id": "m1", "value": 2}]"#,
                NOW,
            )
            .expect("array");
        assert_eq!(many.len(), 2);
        let bare = topics
            .parse_message("eg/readings/m1", b"42", NOW)
            .expect("number");
        assert_eq!(
            (bare[0].key.timestamp_ms, bare[0].sample.value),
            (NOW, 42.0)
        );
    }

    #[test]
    fn bad_messages_say_why() {
        let topics = Topics::new("eg");
        for (topic, payload, needle) in [
            ("eg/readings/m1", &b"{not json"[..], "not JSON"),
            ("eg/readings/m1", &b"\xff\xfe"[..], "UTF-8"),
            ("eg/readings/m1", &br#"{"value": "x"}"#[..], "value"),
            (
                "eg/readings/m1",
                &br#"{"sensor_id": "other", "value": 1}"#[..],
                "does not match",
            ),
            ("eg/readings/bad id", &b"1"[..], "sensor_id"),
            ("eg/other/m1", &b"1"[..], "is not eg/readings"),
            ("eg/readings/m1", &b"\"text\""[..], "must be"),
        ] {
            let error = topics.parse_message(topic, payload, NOW).expect_err(needle);
            assert!(error.contains(needle), "{topic} {payload:?}: {error}");
        }
    }

    #[test]
    fn broker_urls() {
        let options =
            connection_options("mqtt://us%40er:p%2Bw@broker.local:1884", "id".into(), None)
                .expect("valid");
        assert_eq!(options.broker_address(), ("broker.local".to_string(), 1884));
        let plain = connection_options("tcp://127.0.0.1", "id".into(), None).expect("valid");
        assert_eq!(plain.broker_address().1, 1883);
        let secure = connection_options("mqtts://127.0.0.1", "id".into(), None).expect("valid");
        assert_eq!(secure.broker_address().1, 8883);
        assert_eq!(plain.broker_address().1, 1883);
        for bad in ["http://host", "mqtt://", "not a url", "mqtt://u%ff:p@host"] {
            assert!(connection_options(bad, "id".into(), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_and_topics() {
        let topics = Topics::new("energyguard");
        assert_eq!(topics.readings_filter(""), "energyguard/readings/+");
        assert_eq!(
            topics.readings_filter("g1"),
            "$share/g1/energyguard/readings/+"
        );
        assert_eq!(topics.deadletter(), "energyguard/deadletter");
        let letter = dead_letter("t", b"\xffx", "bad");
        assert_eq!(letter["error"], "bad");
    }
}
