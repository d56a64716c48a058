//! What EnergyGuard publishes: dead letters, alert changes and the drain
//! marker, through whichever connection the consumer has: a client of an
//! external broker, or the embedded broker's in-process link.
//!
//! The link's sending half (`rumqttd::local::LinkTx`) blocks its caller
//! while the broker's router queue is full, so it lives on a thread of its
//! own ([`LinkSender`]) fed by a bounded channel; async code never blocks on
//! it. Publishes through the link are QoS 0 on the way in: in-process they
//! cannot be lost in transit, and rumqttd hands every message to each
//! subscriber at that subscriber's QoS.

use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Topics, signalled};
use crate::alerts::engine::{Change, Transition};

/// Publishes waiting for the link thread at most.
const LINK_QUEUE: usize = 1_024;

/// One message to publish.
struct Outgoing {
    topic: String,
    payload: Bytes,
    retain: bool,
}

/// Where EnergyGuard's own messages go.
#[derive(Clone)]
pub enum Outbox {
    /// An external broker, through the consumer's client (QoS 1).
    Client(AsyncClient),
    /// The embedded broker, through the in-process link.
    Link(LinkSender),
}

#[derive(Debug, thiserror::Error)]
#[error("MQTT publish failed: {0}")]
pub struct PublishError(String);

impl Outbox {
    pub async fn publish(
        &self,
        topic: String,
        payload: impl Into<Bytes>,
        retain: bool,
    ) -> Result<(), PublishError> {
        let payload = payload.into();
        match self {
            Self::Client(client) => client
                .publish_bytes(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| PublishError(e.to_string())),
            Self::Link(sender) => sender
                .queue
                .send(Outgoing {
                    topic,
                    payload,
                    retain,
                })
                .await
                .map_err(|_| PublishError("the embedded broker's link is closed".into())),
        }
    }
}

/// The handle to the thread that owns the link's sending half.
#[derive(Clone)]
pub struct LinkSender {
    queue: mpsc::Sender<Outgoing>,
}

impl LinkSender {
    /// Subscribes the link to `filter`, then starts the thread that
    /// publishes through it. The subscription is confirmed on the link's
    /// receiving half.
    pub fn start(mut link: LinkTx, filter: &str) -> std::io::Result<Self> {
        link.subscribe(filter)
            .map_err(|e| std::io::Error::other(format!("subscribing the link: {e}")))?;
        let (queue, mut outgoing) = mpsc::channel::<Outgoing>(LINK_QUEUE);
        std::thread::Builder::new()
            .name("mqtt-link-send".into())
            .spawn(move || {
                while let Some(message) = outgoing.blocking_recv() {
                    let publish =
                        Publish::new(Bytes::from(message.topic), message.payload, message.retain);
                    // `send` only queues for the router; it never waits on I/O.
                    let sent = futures::executor::block_on(link.send(Packet::Publish(publish, None)));
                    if let Err(error) = sent {
                        tracing::error!(%error, "publishing through the embedded broker's link failed");
                        return;
                    }
                }
            })?;
        Ok(Self { queue })
    }
}

/// Publishes alert changes (fired, resolved) to `P/alerts/<sensor>`,
/// retained, until `shutdown`.
pub fn spawn_alert_publisher(
    topics: Topics,
    outbox: Outbox,
    mut alerts: broadcast::Receiver<Change>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                change = alerts.recv() => change,
                _ = signalled(&mut shutdown) => return,
            };
            match change {
                Ok(change) if change.transition != Transition::Updated => {
                    let topic = topics.alerts(&change.alert.sensor_id);
                    let payload = serde_json::to_vec(&change.alert).unwrap_or_default();
                    if let Err(error) = outbox.publish(topic, payload, true).await {
                        tracing::error!(%error, "publishing an alert failed");
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "the alert publisher fell behind; some alert changes were not published"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}
