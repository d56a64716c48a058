//! The embedded MQTT broker (rumqttd), configured in code from our config.
//!
//! rumqttd has no stop API and its `start()` blocks forever, so it runs on
//! its own OS thread for the life of the process, on a private loopback
//! port. Clients reach it through the [`FrontDoor`] relay on `mqtt.listen`,
//! which we bind ourselves (a taken port is a clear start-up error; rumqttd
//! would only log it) and can close at shutdown.
//!
//! Its one sharp edge that loses data: a subscriber that falls further behind
//! than the router's in-memory window (`max_segment_size × max_segment_count`)
//! silently skips messages the publishers were already told were received.
//! The window is sized from `mqtt.broker_memory_mb`; the consumer stays ahead
//! of it by batching, and the README documents the limit.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use super::front_door::FrontDoor;

/// rumqttd sends a subscriber at most this many unacknowledged QoS 1
/// messages (a constant in its router, not configurable): a consumer that
/// acknowledges after storing gets at most this many per store.
pub const OUTGOING_INFLIGHT: usize = 100;

/// Segments the window is split into.
const SEGMENTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot start the embedded MQTT broker on {listen} (mqtt.listen): {reason}; \
         free the port, change mqtt.listen, or use an external broker (mqtt.embedded = false, mqtt.url)"
    )]
    Listen { listen: SocketAddr, reason: String },
}

/// Limits of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    pub max_payload_bytes: usize,
    /// The per-subscription in-memory window, in MiB.
    pub memory_mb: usize,
}

fn config(settings: &BrokerSettings, internal: SocketAddr) -> Config {
    let segment = (settings.memory_mb.max(SEGMENTS) * 1024 * 1024) / SEGMENTS;
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: settings.max_payload_bytes,
        max_inflight_count: 1_000,
        auth: None,
        external_auth: None,
        // Without this, publishes to a topic nobody subscribed to yet are
        // acknowledged and dropped.
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: segment,
            max_segment_count: SEGMENTS,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    }
}

/// The running embedded broker.
pub struct EmbeddedBroker {
    /// Where rumqttd itself listens (loopback, private): the consumer's
    /// address, so closing the front door does not close the consumer.
    pub internal: SocketAddr,
    /// The relay on `mqtt.listen` that every other client goes through.
    pub front_door: FrontDoor,
}

/// Binds `mqtt.listen`, starts rumqttd on its own thread on a private
/// loopback port, waits until it accepts connections, then opens the front
/// door.
pub async fn start(settings: &BrokerSettings) -> Result<EmbeddedBroker, BrokerError> {
    let listen = settings.listen;
    let error = |reason: String| BrokerError::Listen { listen, reason };
    let public = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| error(e.to_string()))?;
    let internal = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|probe| probe.local_addr())
        .map_err(|e| error(format!("no free loopback port for the broker: {e}")))?;
    let config = config(settings, internal);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            match broker.start() {
                Ok(()) => tracing::error!("the embedded MQTT broker stopped"),
                Err(error) => tracing::error!(%error, "the embedded MQTT broker failed"),
            }
        })
        .map_err(|e| error(e.to_string()))?;
    if !accepts_connections(internal, Duration::from_secs(10)).await {
        return Err(error("it did not accept connections within 10 s".into()));
    }
    tracing::info!(%listen, window_mb = settings.memory_mb, "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        internal,
        front_door: FrontDoor::open(public, internal),
    })
}

/// Whether something accepts TCP connections on `address` within
/// `timeout` (a broker that was just started), trying every 20 ms.
pub async fn accepts_connections(address: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// A tracing layer that counts rumqttd's report of a subscriber skipping
/// ahead ("Read cursor start jumped …"): the only trace of messages it
/// dropped after acknowledging them to their publishers. Exposed as
/// `energyguard_mqtt_broker_skips_total`; the warning itself stays in the log.
pub struct SkipCounter;

static SKIPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Skips counted since the process started.
pub fn skips() -> u64 {
    SKIPS.load(std::sync::atomic::Ordering::Relaxed)
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SkipCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("rumqttd::router") {
            return;
        }
        let mut finder = JumpFinder(false);
        event.record(&mut finder);
        if finder.0 {
            SKIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("energyguard_mqtt_broker_skips_total").increment(1);
        }
    }
}

struct JumpFinder(bool);

impl tracing::field::Visit for JumpFinder {
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        self.0 |= value.contains("cursor start jumped");
    }

    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0 |= format!("{value:?}").contains("cursor start jumped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn rumqttd_skip_warnings_are_counted_and_nothing_else_is() {
        let subscriber = tracing_subscriber::registry().with(SkipCounter);
        let before = skips();
        tracing::subscriber::with_default(subscriber, || {
            let error = "Read cursor start jumped from (0, 5) to (1, 0) on energyguard/readings/+"
                .to_string();
            tracing::warn!(target: "rumqttd::router::routing", request_cursor = 5, error);
            tracing::warn!(target: "rumqttd::router::routing", error = "something else");
            tracing::warn!(target: "energyguard", error = "Read cursor start jumped, but not from the broker");
        });
        assert_eq!(skips(), before + 1);
    }
}
