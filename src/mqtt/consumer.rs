//! The MQTT consumer: subscribes to `P/readings/+` with a persistent session
//! and QoS 1, stores what arrives through the same [`Ingestor`] as HTTP, and
//! acknowledges each message only after its readings are stored on the write
//! quorum, strictly in the order received (rumqttd pops its in-flight queue
//! head whatever packet id an ack names, so an out-of-order ack loses a
//! message). It also publishes alert changes to `P/alerts/<sensor>`.
//!
//! Three tasks, joined by channels:
//! * the poll loop drives the connection (nothing reaches the wire unless
//!   `poll()` runs), resubscribes on every ConnAck, backs off on errors, and
//!   hands publishes to the writer; it never awaits a client request, which
//!   can deadlock when the request channel is full;
//! * the writer batches messages (up to `batch_messages` messages or
//!   `batch_interval`), stores valid readings in one ingest, publishes dead
//!   letters for the rest, then acks the whole batch in order. While the
//!   write quorum is unmet it retries and acks nothing, so the broker keeps
//!   (and after a restart redelivers) the messages;
//! * the alert publisher sends fired and resolved alerts, QoS 1, retained.
//!
//! Stopping: with an external broker, the consumer stores and acks what it
//! has received and leaves the rest to the broker's persistent session.
//! The embedded broker keeps nothing past the process, so there the writer
//! drains it instead: once the front door is closed (no publisher can add
//! anything), it publishes a marker to a readings topic of its own and keeps
//! storing until the marker comes back. The broker delivers a subscription's
//! messages in log order, so everything published before the marker (all it
//! ever acknowledged to a publisher) has then been stored and acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Topics, UrlError, connection_options, dead_letter, signalled};
use crate::alerts::engine::{Change, Transition};
use crate::ingest::Ingestor;
use crate::reading::{Reading, now_ms};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A batch is stored once no message arrived for this long.
const QUIET_GAP: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// `mqtt://[user[:password]@]host[:port]`.
    pub url: String,
    /// Username and password; they win over any in the URL.
    pub credentials: Option<(String, String)>,
    pub client_id: String,
    pub topics: Topics,
    pub share_group: String,
    /// Messages stored per batch at most; a full batch is stored at once.
    /// Best set to the broker's limit of unacknowledged messages per
    /// subscriber, since no more arrive until the batch is acknowledged.
    pub batch_messages: usize,
    pub batch_interval: Duration,
    pub max_packet_bytes: usize,
    /// The topic of the shutdown marker when the broker must be drained
    /// before exit (the embedded one); `None` leaves undelivered messages
    /// to the broker.
    pub drain_marker: Option<String>,
}

/// Whether the consumer is connected and subscribed, for `/healthz` and
/// `/metrics`. Until the first subscription of a new session is in place,
/// the broker delivers readings published on `P/readings/+` to nobody.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    connected: AtomicBool,
    subscribed: AtomicBool,
}

impl ConsumerStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.subscribed.store(false, Ordering::Relaxed);
        metrics::gauge!("energyguard_mqtt_connected").set(if connected { 1.0 } else { 0.0 });
    }

    fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }
}

fn options(settings: &ConsumerSettings) -> Result<MqttOptions, UrlError> {
    let mut options = connection_options(&settings.url, settings.client_id.clone())?;
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

/// Starts the consumer's tasks. They stop when `shutdown` turns true, after
/// storing and acknowledging everything already received.
pub fn spawn(
    settings: ConsumerSettings,
    ingestor: Arc<Ingestor>,
    alerts: broadcast::Receiver<Change>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<ConsumerStatus>, JoinHandle<()>), UrlError> {
    let options = options(&settings)?;
    let (client, eventloop) = AsyncClient::new(options, 10_000);
    let status = Arc::new(ConsumerStatus::default());
    let (messages, inbox) = mpsc::unbounded_channel();
    let filter = settings.topics.readings_filter(&settings.share_group);
    let poller = tokio::spawn(poll_loop(
        eventloop,
        client.clone(),
        filter,
        messages,
        status.clone(),
        shutdown.clone(),
    ));
    let writer = tokio::spawn(writer(
        settings.clone(),
        client.clone(),
        ingestor,
        inbox,
        status.clone(),
        shutdown.clone(),
    ));
    let publisher = tokio::spawn(publish_alerts(
        settings.topics,
        client.clone(),
        alerts,
        shutdown,
    ));
    let handle = tokio::spawn(async move {
        let _ = writer.await;
        let _ = publisher.await;
        // Give the poll loop a moment to put the last acks on the wire.
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    });
    Ok((status, handle))
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
                status.set(true);
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
                // Fails once the writer has stopped taking messages: then
                // this one is neither stored nor acknowledged, and the
                // broker keeps it.
                let _ = messages.send(publish);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                status.set(false);
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
    ingestor: Arc<Ingestor>,
    mut inbox: mpsc::UnboundedReceiver<Publish>,
    status: Arc<ConsumerStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            inbox.recv().await
        } else {
            tokio::select! {
                message = inbox.recv() => message,
                _ = signalled(&mut shutdown) => {
                    stopping = true;
                    begin_stop(&settings, &client, &status, &mut inbox).await;
                    continue;
                }
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.batch_interval;
        while batch.len() < settings.batch_messages && !settings.ends_drain(&batch) {
            // Flush once the inbox stays quiet for a moment: a broker sends
            // only so many unacknowledged messages, so waiting for a fuller
            // batch would only stall.
            let quiet = (tokio::time::Instant::now() + QUIET_GAP).min(deadline);
            match tokio::time::timeout_at(quiet, inbox.recv()).await {
                Ok(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        let drained = settings.ends_drain(&batch);
        store_batch(&settings, &client, &ingestor, batch).await;
        if drained {
            tracing::info!("MQTT drained: everything the broker accepted is stored");
            return;
        }
    }
}

/// Stops intake: either sends the drain marker (and keeps consuming until
/// it returns) or takes nothing more than what was already received.
async fn begin_stop(
    settings: &ConsumerSettings,
    client: &AsyncClient,
    status: &ConsumerStatus,
    inbox: &mut mpsc::UnboundedReceiver<Publish>,
) {
    // Without a subscription the broker delivers nothing to us, the marker
    // included: there is nothing to drain.
    let Some(marker) = settings
        .drain_marker
        .as_ref()
        .filter(|_| status.subscribed())
    else {
        inbox.close();
        return;
    };
    tracing::info!("draining the embedded MQTT broker");
    if let Err(error) = client
        .publish(marker.as_str(), QoS::AtLeastOnce, false, Vec::new())
        .await
    {
        tracing::error!(%error, "cannot publish the drain marker; stopping without draining");
        inbox.close();
    }
}

impl ConsumerSettings {
    /// Whether `message` is our own drain marker rather than a sensor's.
    fn is_marker(&self, message: &Publish) -> bool {
        self.drain_marker.as_deref() == Some(message.topic.as_str())
    }

    /// Whether the batch ends with the drain marker.
    fn ends_drain(&self, batch: &[Publish]) -> bool {
        batch.last().is_some_and(|message| self.is_marker(message))
    }
}

/// Stores a batch, publishes its dead letters, then acks it in order.
async fn store_batch(
    settings: &ConsumerSettings,
    client: &AsyncClient,
    ingestor: &Ingestor,
    batch: Vec<Publish>,
) {
    let received = now_ms();
    let mut readings: Vec<Reading> = Vec::new();
    let mut dead = Vec::new();
    let from_sensors: Vec<&Publish> = batch.iter().filter(|m| !settings.is_marker(m)).collect();
    for message in &from_sensors {
        match settings
            .topics
            .parse_message(&message.topic, &message.payload, received)
        {
            Ok(parsed) => readings.extend(parsed),
            Err(error) => dead.push(dead_letter(&message.topic, &message.payload, &error)),
        }
    }
    let mut wait = Duration::from_millis(200);
    while !readings.is_empty() {
        match ingestor.ingest(readings.clone()).await {
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?wait, "MQTT readings not stored yet; they stay unacknowledged");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
    for letter in dead {
        metrics::counter!("energyguard_mqtt_dead_letters_total").increment(1);
        tracing::warn!(topic = %letter["topic"], error = %letter["error"], "MQTT dead letter");
        if let Err(error) = client
            .publish(
                settings.topics.deadletter(),
                QoS::AtLeastOnce,
                false,
                letter.to_string(),
            )
            .await
        {
            tracing::error!(%error, "publishing a dead letter failed");
        }
    }
    metrics::counter!("energyguard_mqtt_messages_total").increment(from_sensors.len() as u64);
    tracing::debug!(messages = batch.len(), "MQTT batch stored; acknowledging");
    for message in &batch {
        if let Err(error) = client.ack(message).await {
            tracing::error!(%error, "MQTT ack failed; the broker will redeliver");
        }
    }
}

async fn publish_alerts(
    topics: Topics,
    client: AsyncClient,
    mut alerts: broadcast::Receiver<Change>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            change = alerts.recv() => change,
            _ = signalled(&mut shutdown) => return,
        };
        match change {
            Ok(change) if change.transition != Transition::Updated => {
                let topic = topics.alerts(&change.alert.sensor_id);
                let payload = serde_json::to_string(&change.alert).unwrap_or_default();
                if let Err(error) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
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
}
