//! The consumer of the embedded broker, reading it in-process through
//! rumqttd's local link.
//!
//! The broker and EnergyGuard share one process and the broker keeps what it
//! accepted in memory only: a crash loses that memory whether or not the
//! consumer had acknowledged anything, so acknowledging after storage would
//! buy nothing but a round trip per message. The link subscribes at QoS 0 (no
//! acknowledgements) and flow is controlled instead:
//! * rumqttd hands the link up to a round of messages, then waits until the
//!   link says it is ready for more; the reader says so only once its
//!   bounded queue to the writer has taken the round;
//! * the front door admits readings only while the [`Backlog`] of bytes
//!   accepted and not yet stored has room, and the writer releases a batch's
//!   bytes once [`Intake::take`] has stored or parked it. Publishers are
//!   slowed, never skipped.
//!
//! Two parts: the reader, a thread (the link's receiving half is a blocking
//! API), and the writer, a task that stores what the reader received in
//! batches, one at a time, so a sensor's readings reach the alert engine in
//! order.
//!
//! Stopping: once the front door is closed (no publisher can add anything),
//! the writer publishes a marker to a readings topic of its own and keeps
//! storing until the marker comes back. The broker delivers a subscription's
//! messages in log order, so everything published before the marker (all it
//! ever acknowledged to a publisher) has then been stored.

use std::sync::Arc;
use std::time::Instant;

use rumqttd::Notification;
use rumqttd::local::LinkRx;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::backlog::{Backlog, message_size};
use rumqttd::protocol::Publish;

use super::intake::{Intake, Message};
use super::{ConsumerStatus, signalled};

/// Rounds of messages received and not yet taken by the writer, at most.
const ROUNDS_QUEUED: usize = 64;

#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Messages stored together at most (a round may add a few more).
    pub batch_messages: usize,
    /// The topic of the shutdown marker, a readings topic no sensor uses.
    pub drain_marker: String,
}

/// Starts the reader thread and the writer task. The writer stops when
/// `shutdown` turns true, after draining the broker.
pub fn spawn(
    link: LinkRx,
    intake: Intake,
    backlog: Arc<Backlog>,
    status: Arc<ConsumerStatus>,
    settings: LinkSettings,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let (rounds, inbox) = mpsc::channel(ROUNDS_QUEUED);
    status.set_connected(true);
    let reader_status = status.clone();
    std::thread::Builder::new()
        .name("mqtt-link-read".into())
        .spawn(move || read(link, rounds, &reader_status))?;
    Ok(tokio::spawn(write(
        inbox, intake, backlog, status, settings, shutdown,
    )))
}

/// Moves what the broker hands the link to the writer, a round at a time,
/// until the link or the writer is gone.
fn read(mut link: LinkRx, rounds: mpsc::Sender<Vec<Publish>>, status: &ConsumerStatus) {
    loop {
        let mut next = match link.recv() {
            Ok(notification) => notification,
            Err(error) => {
                tracing::error!(%error, "the embedded broker closed EnergyGuard's link");
                status.set_connected(false);
                return;
            }
        };
        let mut round = Vec::new();
        let mut paused = false;
        while let Some(notification) = next {
            match notification {
                Notification::Forward(forward) => round.push(forward.publish),
                // The link publishes at QoS 0: its only acknowledgement is
                // the SUBACK of its subscription.
                Notification::DeviceAck(_) => {
                    status.set_subscribed();
                    tracing::info!("MQTT subscribed (embedded broker, in-process)");
                }
                // The router waits for a `ready` before handing out more.
                Notification::Unschedule => paused = true,
                Notification::Disconnect(..) => {
                    tracing::error!("the embedded broker disconnected EnergyGuard's link");
                    status.set_connected(false);
                    return;
                }
                _ => {}
            }
            next = link.recv_deadline(Instant::now()).ok().flatten();
        }
        if !round.is_empty() && rounds.blocking_send(round).is_err() {
            return;
        }
        if paused && link.ready().is_err() {
            return;
        }
    }
}

async fn write(
    mut inbox: mpsc::Receiver<Vec<Publish>>,
    intake: Intake,
    backlog: Arc<Backlog>,
    status: Arc<ConsumerStatus>,
    settings: LinkSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut draining = false;
    loop {
        let first = if draining {
            inbox.recv().await
        } else {
            tokio::select! {
                round = inbox.recv() => round,
                _ = signalled(&mut shutdown) => {
                    draining = begin_drain(&intake, &status, &settings).await;
                    if !draining {
                        return;
                    }
                    continue;
                }
            }
        };
        let Some(mut batch) = first else { return };
        while batch.len() < settings.batch_messages {
            match inbox.try_recv() {
                Ok(round) => batch.extend(round),
                Err(_) => break,
            }
        }
        // Nothing a client published comes after the marker.
        let marker = batch
            .iter()
            .position(|p| p.topic == settings.drain_marker.as_bytes());
        if let Some(at) = marker {
            batch.truncate(at);
        }
        let bytes: usize = batch
            .iter()
            .map(|p| message_size(p.topic.len(), p.payload.len()))
            .sum();
        // The codec admits only UTF-8 topics; an empty one is a dead letter.
        let messages: Vec<Message> = batch
            .iter()
            .map(|p| Message {
                topic: std::str::from_utf8(&p.topic).unwrap_or_default(),
                payload: &p.payload,
                retain: p.retain,
            })
            .collect();
        if let Err(error) = intake.take(&messages).await {
            tracing::error!(%error, "MQTT readings can no longer be stored; the consumer stops");
            return;
        }
        backlog.release(bytes);
        if marker.is_some() {
            tracing::info!("MQTT drained: everything the broker accepted is stored");
            return;
        }
    }
}

/// Publishes the drain marker; answers whether there is anything to drain.
async fn begin_drain(intake: &Intake, status: &ConsumerStatus, settings: &LinkSettings) -> bool {
    // Without a subscription the broker delivers nothing, the marker
    // included: there is nothing to drain.
    if !status.subscribed() {
        return false;
    }
    tracing::info!("draining the embedded MQTT broker");
    match intake
        .outbox
        .publish(settings.drain_marker.clone(), Vec::new(), false)
        .await
    {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "cannot publish the drain marker; stopping without draining");
            false
        }
    }
}
