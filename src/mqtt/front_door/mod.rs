//! The embedded broker's front door: the listener on `mqtt.listen`, relaying
//! each client to rumqttd, which itself listens on a private loopback port.
//!
//! The door reads what clients send packet by packet ([`inbound`]): it keeps
//! EnergyGuard's own client id for EnergyGuard, and holds back a publisher
//! while the readings it already accepted fill the [`Backlog`], so the
//! broker never has to drop messages it acknowledged. What the broker sends
//! back is relayed untouched.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::signalled;
use inbound::{Admission, DoorRules, FrameError, Inbound};

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running relay; dropping it without [`FrontDoor::close`] leaves it
/// running for the life of the process.
pub struct FrontDoor {
    closing: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl FrontDoor {
    /// Relays every connection accepted on `listener` to `broker`.
    pub fn open(listener: TcpListener, broker: SocketAddr, rules: Arc<DoorRules>) -> Self {
        let (closing, closed) = watch::channel(false);
        let accepting = tokio::spawn(accept_loop(listener, broker, rules, closed));
        Self { closing, accepting }
    }

    /// Stops accepting and reading from clients, then waits (at most
    /// `timeout`) until the broker has closed every relayed connection.
    /// Returns whether it did so in time.
    pub async fn close(self, timeout: Duration) -> bool {
        let _ = self.closing.send(true);
        tokio::time::timeout(timeout, self.accepting).await.is_ok()
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: SocketAddr,
    rules: Arc<DoorRules>,
    closing: watch::Receiver<bool>,
) {
    let mut relays = JoinSet::new();
    let mut stop = closing.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    relays.spawn(relay(client, broker, rules.clone(), closing.clone()));
                }
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
    client: TcpStream,
    broker: SocketAddr,
    rules: Arc<DoorRules>,
    mut closing: watch::Receiver<bool>,
) {
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let mut inbound = Inbound::new(rules);
    let first = tokio::select! {
        first = tokio::time::timeout(CONNECT_TIMEOUT, inbound.read_connect(&mut client_read)) => first,
        _ = signalled(&mut closing) => return,
    };
    match first {
        Ok(Ok(Admission::Admit)) => {}
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
    }
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
        let ended = inbound
            .forward(&mut client_read, &mut broker_write, &mut closing)
            .await;
        if let FrameError::Protocol(error) = ended {
            tracing::debug!(%error, "MQTT connection closed on a malformed packet");
        }
        let _ = broker_write.shutdown().await;
    };
    let outbound = async move {
        let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::pin!(outbound);
    tokio::select! {
        _ = inbound => outbound.await,
        // The broker closed the connection: nothing more to relay.
        _ = &mut outbound => {}
    }
}
