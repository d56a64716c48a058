//! The embedded broker's front door: the listener on `mqtt.listen`, relaying
//! each client to rumqttd, which itself listens on a private loopback port.
//!
//! The door reads what clients send packet by packet ([`inbound`]): it
//! checks who they are and what they may publish and subscribe to
//! ([`rights`]), keeps EnergyGuard's own client id for EnergyGuard, and
//! holds back a publisher while the readings it already accepted fill the
//! [`Backlog`], so the broker never has to drop messages it acknowledged.
//! What the broker sends back is relayed packet by packet too
//! (`outbound`), with the door's own answers in between. Connections past
//! `mqtt.max_connections` are closed at once.
//!
//! rumqttd can neither stop accepting nor close its clients' connections,
//! so without the door a SIGTERM would exit with messages the broker had
//! already acknowledged to publishers still queued for the consumer, and
//! lose them. [`FrontDoor::close`] gives shutdown that control: it stops
//! accepting, stops reading from every client, half-closes each relayed
//! connection towards the broker and waits until the broker has closed them
//! all. Once it returns, every publish a client was told was received is in
//! the broker's log ahead of anything published afterwards, which is what
//! the consumer's drain marker relies on.
//!
//! [`Backlog`]: crate::mqtt::backlog::Backlog

pub mod inbound;
mod outbound;
pub mod rights;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::signalled;
use inbound::{Admission, DoorRules, FrameError, Inbound};

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The door's own answers waiting for a client at most; past that the
/// client's packets wait (it is not reading what it is sent).
const REPLIES_QUEUED: usize = 64;

/// The running relay; dropping it without [`FrontDoor::close`] leaves it
/// running for the life of the process.
pub struct FrontDoor {
    closing: watch::Sender<bool>,
    accepting: Vec<JoinHandle<()>>,
}

/// A listener of the door: plain MQTT, or MQTT over TLS.
pub struct DoorListener {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

impl FrontDoor {
    /// Relays every connection accepted on `listeners` to `broker`, up to
    /// `max_connections` at once on all of them together.
    pub fn open(
        listeners: Vec<DoorListener>,
        broker: SocketAddr,
        rules: Arc<DoorRules>,
        max_connections: usize,
    ) -> Self {
        let (closing, closed) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(max_connections));
        let accepting = listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(accept_loop(
                    listener,
                    broker,
                    rules.clone(),
                    slots.clone(),
                    closed.clone(),
                ))
            })
            .collect();
        Self { closing, accepting }
    }

    /// Stops accepting and reading from clients, then waits (at most
    /// `timeout`) until the broker has closed every relayed connection.
    /// Returns whether it did so in time.
    pub async fn close(self, timeout: Duration) -> bool {
        let _ = self.closing.send(true);
        let all = futures::future::join_all(self.accepting);
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}

async fn accept_loop(
    door: DoorListener,
    broker: SocketAddr,
    rules: Arc<DoorRules>,
    slots: Arc<Semaphore>,
    closing: watch::Receiver<bool>,
) {
    let DoorListener { listener, tls } = door;
    let mut relays = JoinSet::new();
    let mut stop = closing.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let _ = client.set_nodelay(true);
                        let (rules, closing, tls) = (rules.clone(), closing.clone(), tls.clone());
                        relays.spawn(async move {
                            match tls {
                                None => relay(client, broker, rules, closing).await,
                                Some(acceptor) => {
                                    let handshake = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(client));
                                    match handshake.await {
                                        Ok(Ok(client)) => relay(client, broker, rules, closing).await,
                                        Ok(Err(error)) => tracing::debug!(%peer, %error, "MQTT TLS handshake failed"),
                                        Err(_) => tracing::debug!(%peer, "MQTT TLS handshake timed out"),
                                    }
                                }
                            }
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        metrics::counter!("energyguard_mqtt_connections_refused_total").increment(1);
                        tracing::warn!(%peer, "MQTT connection refused: mqtt.max_connections reached");
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = signalled(&mut stop) => break,
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
    drop(listener);
    let open = relays.len();
    tracing::info!(
        connections = open,
        "MQTT front door closed; waiting for the broker to take in what it received"
    );
    while relays.join_next().await.is_some() {}
}

/// Relays one client connection until either side closes it, or until
/// `closing`: then nothing more is read from the client, the broker sees
/// end-of-stream after the last complete packet forwarded, and the relay
/// ends once the broker has closed its side (its acks still reach the
/// client).
async fn relay(
    client: impl AsyncRead + AsyncWrite + Send + 'static,
    broker: SocketAddr,
    rules: Arc<DoorRules>,
    mut closing: watch::Receiver<bool>,
) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let max_packet_bytes = rules.max_packet_bytes;
    let (replies, replies_out) = mpsc::channel(REPLIES_QUEUED);
    let mut inbound = Inbound::new(rules, replies);
    let first = tokio::select! {
        first = tokio::time::timeout(CONNECT_TIMEOUT, inbound.read_connect(&mut client_read)) => first,
        _ = signalled(&mut closing) => return,
    };
    let connect = match first {
        Ok(Ok(Admission::Admit { connect, .. })) => connect,
        Ok(Ok(Admission::Refuse(connack))) => {
            inbound::refuse(&mut client_write, &connack).await;
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "MQTT connection dropped before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!("MQTT connection sent no CONNECT in time");
            return;
        }
    };
    let upstream = match TcpStream::connect(broker).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::error!(%error, "the embedded MQTT broker refused a relayed connection");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut broker_read, mut broker_write) = upstream.into_split();
    let inbound = async move {
        let ended = match broker_write.write_all(&connect).await {
            Ok(()) => {
                inbound
                    .forward(&mut client_read, &mut broker_write, &mut closing)
                    .await
            }
            Err(error) => FrameError::Io(error),
        };
        if matches!(ended, FrameError::Protocol(_) | FrameError::RefusedQos2) {
            tracing::debug!(error = %ended, "MQTT connection closed");
        }
        let _ = broker_write.shutdown().await;
    };
    let outbound = async move {
        outbound::relay(
            &mut broker_read,
            &mut client_write,
            replies_out,
            max_packet_bytes,
        )
        .await;
        let _ = client_write.shutdown().await;
    };
    tokio::pin!(outbound);
    tokio::select! {
        _ = inbound => outbound.await,
        // The broker closed the connection: nothing more to relay.
        _ = &mut outbound => {}
    }
}
