//! The embedded broker's front door: a TCP relay on `mqtt.listen` in front
//! of rumqttd, which itself listens on a private loopback port.
//!
//! rumqttd can neither stop accepting nor close its clients' connections,
//! so without the relay a SIGTERM would exit with messages the broker had
//! already acknowledged to publishers still queued for the consumer, and
//! lose them. [`FrontDoor::close`] gives shutdown that control: it stops
//! accepting, stops reading from every client, half-closes each relayed
//! connection towards the broker and waits until the broker has closed them
//! all. Once it returns, every publish a client was told was received is in
//! the broker's log ahead of anything published afterwards, which is what
//! the consumer's drain marker relies on.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::signalled;

/// Bytes read from a client per relayed write.
const RELAY_BUFFER: usize = 64 * 1024;

/// The running relay; dropping it without [`FrontDoor::close`] leaves it
/// running for the life of the process.
pub struct FrontDoor {
    closing: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl FrontDoor {
    /// Relays every connection accepted on `listener` to `broker`.
    pub fn open(listener: TcpListener, broker: SocketAddr) -> Self {
        let (closing, closed) = watch::channel(false);
        let accepting = tokio::spawn(accept_loop(listener, broker, closed));
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

async fn accept_loop(listener: TcpListener, broker: SocketAddr, closing: watch::Receiver<bool>) {
    let mut relays = JoinSet::new();
    let mut stop = closing.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    relays.spawn(relay(client, broker, closing.clone()));
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
/// end-of-stream after the last complete bytes forwarded, and the relay
/// ends once the broker has closed its side (its acks still reach the client).
async fn relay(client: TcpStream, broker: SocketAddr, mut closing: watch::Receiver<bool>) {
    let upstream = match TcpStream::connect(broker).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::error!(%error, "the embedded MQTT broker refused a relayed connection");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = upstream.into_split();
    let inbound = async move {
        let mut buffer = vec![0; RELAY_BUFFER];
        loop {
            let read = tokio::select! {
                read = client_read.read(&mut buffer) => read,
                _ = signalled(&mut closing) => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if broker_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
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
