//! The consumer of an external broker: subscribes to `P/readings/+` with a
//! persistent session and QoS 1, hands what arrives to the [`Intake`], and
//! acknowledges each message only after its readings are stored on the write
//! quorum or parked on disk, strictly in the order received (rumqttd pops its
//! in-flight queue head whatever packet id an ack names, and other brokers
//! may too, so an out-of-order ack could lose a message).
//!
//! Two tasks, joined by a channel:
//! * the poll loop drives the connection (nothing reaches the wire unless
//!   `poll()` runs), resubscribes on every ConnAck, backs off on errors, and
//!   hands publishes to the writer; it never awaits a client request, which
//!   can deadlock when the request channel is full;
//! * the writer takes whatever has arrived (up to `batch_messages`
//!   messages), has the intake store or park it, then acks the whole batch
//!   in order. Messages arriving meanwhile form the next batch: under load
//!   batches grow until storing keeps up, with no timer; alone, a message is
//!   stored at once.
//!
//! The channel between the two is not bounded by a count: the poll loop
//! must never wait on it, because acks reach the wire only through the poll
//! loop (a loop that waits for room while the writer waits for room for its
//! acks deadlocks; seen under load with a bounded channel). What bounds it
//! is the broker: it sends at most its in-flight window of unacknowledged
//! QoS 1 messages (mosquitto's `max_inflight_messages`), and acks follow
//! storing. Throughput needs that window well above one batch, so the broker
//! keeps sending while a batch is stored. Messages a meter publishes at QoS 0
//! arrive at QoS 0, outside that window: an external broker's QoS 0 flood
//! is bounded only by how fast storing keeps up. `batch_messages` stays at
//! most half of [`REQUEST_QUEUE`], so a batch's acks always fit beside
//! whatever else is queued.
//!
//! Stopping: the consumer stores and acks what it has received and leaves
//! the rest to the broker's persistent session.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::intake::{Intake, Message};
use super::{ConsumerStatus, UrlError, connection_options, signalled};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Requests (acks, the subscription) the client queues for the poll loop.
pub const REQUEST_QUEUE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// `mqtt://[user[:password]@]host[:port]`, or `mqtts://`.
    pub url: String,
    /// An extra CA to trust for `mqtts://`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Username and password; they win over any in the URL.
    pub credentials: Option<(String, String)>,
    pub client_id: String,
    /// The subscription filter (see [`super::Topics::readings_filter`]).
    pub filter: String,
    /// Messages stored per batch at most.
    pub batch_messages: usize,
    pub max_packet_bytes: usize,
}

fn options(settings: &ConsumerSettings) -> Result<MqttOptions, UrlError> {
    let mut options = connection_options(
        &settings.url,
        settings.client_id.clone(),
        settings.ca_file.as_deref(),
    )?;
    if let Some((username, password)) = &settings.credentials {
        options.set_credentials(username, password);
    }
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1_000)
        .set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes);
    Ok(options)
}

/// The client through which EnergyGuard publishes (alerts, dead letters),
/// and its connection, not yet driven.
pub struct Connection {
    pub client: AsyncClient,
    eventloop: EventLoop,
}

/// Sets up the connection; nothing happens until [`spawn`] drives it.
pub fn connect(settings: &ConsumerSettings) -> Result<Connection, UrlError> {
    let (client, eventloop) = AsyncClient::new(options(settings)?, REQUEST_QUEUE);
    Ok(Connection { client, eventloop })
}

/// Starts the consumer's tasks. They stop when `shutdown` turns true, after
/// storing and acknowledging everything already received.
pub fn spawn(
    settings: ConsumerSettings,
    connection: Connection,
    intake: Intake,
    status: Arc<ConsumerStatus>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let Connection { client, eventloop } = connection;
    let (messages, inbox) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_loop(
        eventloop,
        client.clone(),
        settings.filter.clone(),
        messages,
        status,
        shutdown.clone(),
    ));
    let writer = tokio::spawn(writer(settings, client.clone(), intake, inbox, shutdown));
    tokio::spawn(async move {
        let _ = writer.await;
        // Give the poll loop a moment to put the last acks on the wire.
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    })
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    messages: mpsc::UnboundedSender<Publish>,
    status: Arc<ConsumerStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = shutdown.changed(), if !*shutdown.borrow() => continue,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                status.set_connected(true);
                backoff = Duration::from_millis(100);
                tracing::info!(%filter, "MQTT connected; subscribing");
                if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::error!(%error, "MQTT subscribe request failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                status.set_subscribed();
                tracing::info!(%filter, "MQTT subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Never waits (see the module doc). Fails once the writer
                // has stopped taking messages: then this one is neither
                // stored nor acknowledged, and the broker keeps it.
                let _ = messages.send(publish);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                status.set_connected(false);
                if *shutdown.borrow() {
                    return;
                }
                tracing::warn!(%error, retry_in = ?backoff, "MQTT connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn writer(
    settings: ConsumerSettings,
    client: AsyncClient,
    intake: Intake,
    mut inbox: mpsc::UnboundedReceiver<Publish>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            message = inbox.recv() => message,
            _ = signalled(&mut shutdown) => {
                // Take nothing more; store and ack what already arrived.
                inbox.close();
                inbox.recv().await
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < settings.batch_messages {
            match inbox.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let messages: Vec<Message> = batch
            .iter()
            .map(|p| Message {
                topic: &p.topic,
                payload: &p.payload,
                retain: p.retain,
            })
            .collect();
        if let Err(error) = intake.take(&messages).await {
            tracing::error!(%error, "MQTT readings can no longer be stored; the rest stays with the broker");
            return;
        }
        tracing::debug!(messages = batch.len(), "MQTT batch stored; acknowledging");
        for message in &batch {
            if let Err(error) = client.ack(message).await {
                tracing::error!(%error, "MQTT ack failed; the broker will redeliver");
            }
        }
    }
}
