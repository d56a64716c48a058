//! The embedded MQTT broker (rumqttd), configured in code from our config.
//!
//! rumqttd has no stop API and its `start()` blocks forever, so it runs on
//! its own OS thread for the life of the process, on a private loopback
//! port. Clients reach it through the [`FrontDoor`] relay on `mqtt.listen`,
//! which we bind ourselves (a taken port is a clear start-up error; rumqttd
//! would only log it) and can close at shutdown. EnergyGuard itself reaches
//! it in-process, through a link (`rumqttd::local`) made before the broker
//! starts: no socket, no PUBACK round trip.
//!
//! Its one sharp edge that loses data: a subscriber that falls further behind
//! than the router's in-memory window (`max_segment_size × max_segment_count`)
//! silently skips messages the publishers were already told were received.
//! The window is sized from `mqtt.broker_memory_mb`, and the front door keeps
//! the readings consumer's backlog under half of it
//! ([`crate::mqtt::backlog`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::net::TcpListener;

use super::front_door::inbound::DoorRules;
use super::front_door::{DoorListener, FrontDoor};

/// Segments the window is split into. rumqttd drops the oldest segment only
/// once all are full, so a subscriber less than `SEGMENTS - 1` segments
/// behind never skips.
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
    /// The in-process link's client id (EnergyGuard's own).
    pub client_id: String,
    /// Where the broker also speaks MQTT over TLS, and how.
    pub tls: Option<(SocketAddr, Arc<tokio_rustls::rustls::ServerConfig>)>,
}

impl BrokerSettings {
    /// One segment of the window, in bytes.
    fn segment_bytes(&self) -> usize {
        (self.memory_mb.max(SEGMENTS) * 1024 * 1024) / SEGMENTS
    }

    /// How far the readings consumer may fall behind without ever being
    /// skipped: half the window.
    pub fn safe_backlog_bytes(&self) -> usize {
        self.segment_bytes() * SEGMENTS / 2
    }
}

/// `login`: the only credentials rumqttd accepts, which the front door puts
/// in every CONNECT it lets through: a process reaching rumqttd's private
/// port directly gets nowhere.
fn config(settings: &BrokerSettings, internal: SocketAddr, login: &(String, String)) -> Config {
    let segment = settings.segment_bytes();
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: settings.max_payload_bytes,
        max_inflight_count: 1_000,
        auth: Some(HashMap::from([login.clone()])),
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

/// The running embedded broker, its front door not yet open.
pub struct EmbeddedBroker {
    /// EnergyGuard's in-process connection to the broker.
    pub link_tx: LinkTx,
    pub link_rx: LinkRx,
    /// The credentials rumqttd accepts (username, password), random per
    /// process, for the front door to put in every CONNECT.
    pub login: (String, String),
    pub door: ClosedDoor,
}

/// `mqtt.listen` (and `mqtt.tls_listen`), bound, and where rumqttd itself
/// listens (loopback, private): clients wait in the listen queue until the
/// door opens.
pub struct ClosedDoor {
    listeners: Vec<DoorListener>,
    internal: SocketAddr,
}

impl ClosedDoor {
    /// Starts relaying clients to the broker, up to `max_connections`.
    pub fn open(self, rules: Arc<DoorRules>, max_connections: usize) -> FrontDoor {
        FrontDoor::open(self.listeners, self.internal, rules, max_connections)
    }
}

/// Binds `mqtt.listen`, starts rumqttd on its own thread on a private
/// loopback port with EnergyGuard's link to it, and waits until it accepts
/// connections.
pub async fn start(settings: &BrokerSettings) -> Result<EmbeddedBroker, BrokerError> {
    let listen = settings.listen;
    let error = |reason: String| BrokerError::Listen { listen, reason };
    let public = TcpListener::bind(listen)
        .await
        .map_err(|e| error(e.to_string()))?;
    let internal = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|probe| probe.local_addr())
        .map_err(|e| error(format!("no free loopback port for the broker: {e}")))?;
    let login = (
        format!("energyguard-door-{:016x}", rand::random::<u64>()),
        format!("{:032x}", rand::random::<u128>()),
    );
    let config = config(settings, internal, &login);
    let client_id = settings.client_id.clone();
    let (linked, link) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            // The router runs from `new` on; the link must exist before
            // `start`, which never returns.
            let made = broker.link(&client_id).map_err(|e| e.to_string());
            let failed = made.is_err();
            let _ = linked.send(made);
            if failed {
                return;
            }
            match broker.start() {
                Ok(()) => tracing::error!("the embedded MQTT broker stopped"),
                Err(error) => tracing::error!(%error, "the embedded MQTT broker failed"),
            }
        })
        .map_err(|e| error(e.to_string()))?;
    let (link_tx, link_rx) = link
        .await
        .map_err(|_| error("its thread ended before linking".into()))?
        .map_err(|e| error(format!("no in-process link: {e}")))?;
    if !accepts_connections(internal, Duration::from_secs(10)).await {
        return Err(error("it did not accept connections within 10 s".into()));
    }
    let bound = public.local_addr().unwrap_or(listen);
    tracing::info!(
        window_mb = settings.memory_mb,
        "embedded MQTT broker listening on mqtt://{bound}"
    );
    let mut listeners = vec![DoorListener {
        listener: public,
        tls: None,
    }];
    if let Some((address, config)) = &settings.tls {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| BrokerError::Listen {
                listen: *address,
                reason: format!("mqtt.tls_listen: {e}"),
            })?;
        let bound = listener.local_addr().unwrap_or(*address);
        tracing::info!("embedded MQTT broker listening on mqtts://{bound}");
        listeners.push(DoorListener {
            listener,
            tls: Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        });
    }
    Ok(EmbeddedBroker {
        link_tx,
        link_rx,
        login,
        door: ClosedDoor {
            listeners,
            internal,
        },
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
