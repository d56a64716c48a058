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
//! The channel between the two holds one batch (`batch_messages`). When it
//! is full the poll loop waits, so it stops reading the socket and TCP
//! pushes back on the broker: that bounds even messages published at QoS 0,
//! which arrive unacknowledged and outside the broker's in-flight window.
//! **The writer never waits for an ack to be queued**: acks reach the wire
//! only through the poll loop, so a writer waiting for room in the client's
//! request queue while the poll loop waits for room in the channel would
//! deadlock. The writer queues acks with `try_ack`, in order, and keeps those
//! that did not fit for its next turn; they are bounded by the broker's
//! in-flight window (QoS 0 messages need none). Throughput needs that window
//! well above one batch, so the broker keeps sending while a batch is
//! stored.
//!
//! Stopping: the consumer stores and acks what it has received and leaves
//! the rest to the broker's persistent session.

use std::collections::VecDeque;
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
    let (messages, inbox) = mpsc::channel(settings.batch_messages);
    let poller = tokio::spawn(poll_loop(
        eventloop,
        client.clone(),
        settings.filter.clone(),
        messages,
        status.clone(),
        shutdown.clone(),
    ));
    let writer = tokio::spawn(writer(
        settings,
        client.clone(),
        intake,
        inbox,
        status,
        shutdown,
    ));
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
    messages: mpsc::Sender<Publish>,
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
                // Waits while a batch is queued (see the module doc). Fails
                // once the writer has stopped taking messages: then this one
                // is neither stored nor acknowledged, and the broker keeps it.
                status.lag.arrived(1);
                let _ = messages.send(publish).await;
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

/// How soon acks that did not fit in the client's request queue are
/// offered again when no message arrives meanwhile.
const ACK_RETRY: Duration = Duration::from_millis(10);

async fn writer(
    settings: ConsumerSettings,
    client: AsyncClient,
    intake: Intake,
    mut inbox: mpsc::Receiver<Publish>,
    status: Arc<ConsumerStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Stored messages whose acks are not queued yet, in the order received.
    let mut unacked: VecDeque<Publish> = VecDeque::new();
    loop {
        queue_acks(&client, &mut unacked);
        let first = tokio::select! {
            message = inbox.recv() => message,
            _ = signalled(&mut shutdown) => {
                // Take nothing more; store and ack what already arrived.
                inbox.close();
                inbox.recv().await
            }
            () = tokio::time::sleep(ACK_RETRY), if !unacked.is_empty() => continue,
        };
        let Some(first) = first else { break };
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
        status.lag.left(batch.len());
        tracing::debug!(messages = batch.len(), "MQTT batch stored; acknowledging");
        unacked.extend(batch);
    }
    // The channel is closed, so the poll loop no longer waits on it: waiting
    // here for room in the request queue is safe.
    for message in unacked {
        if let Err(error) = client.ack(&message).await {
            tracing::error!(%error, "MQTT ack failed; the broker will redeliver");
        }
    }
}

/// Queues the acks of `unacked` in order, as many as the client's request
/// queue takes now.
fn queue_acks(client: &AsyncClient, unacked: &mut VecDeque<Publish>) {
    while let Some(message) = unacked.front() {
        if client.try_ack(message).is_err() {
            return;
        }
        unacked.pop_front();
    }
}
