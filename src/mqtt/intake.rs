//! What both consumers do with a batch of received messages, whichever
//! broker they came from: skip retained copies, parse, store through the
//! [`Ingestor`] or park, and publish dead letters.
//!
//! Rules, in the order they apply to each message:
//! * **A retained copy is not a reading.** A broker hands a topic's retained
//!   message to every new subscription with the retain flag set, and sends
//!   live publishes to existing subscriptions with it cleared (MQTT 3.1.1
//!   §3.3.1.3; rumqttd and mosquitto both do). A reading published retained
//!   is therefore stored once, when it is published; the copies handed out
//!   on each (re)subscription are counted and skipped, so neither a deleted
//!   reading nor a bare number (timestamped on receipt) comes back.
//! * **What cannot be parsed is a dead letter**, published to `P/deadletter`.
//! * **One sensor never holds back another.** Readings go to storage
//!   together; if that fails (a sensor's replicas cannot meet the write
//!   quorum), each sensor's readings are stored on their own and those that
//!   still fail are parked on disk ([`Park`]), as are new readings of a
//!   sensor that already has parked ones.
//!
//! [`Intake::take`] returns once every reading of the batch is stored or
//! parked durably: only then may the messages be acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::outbox::Outbox;
use super::park::Park;
use super::{Topics, dead_letter};
use crate::ingest::{Door, Ingestor, Refused};
use crate::reading::{Reading, SensorId, now_ms};

/// The longest wait between tries to park readings on a failing disk.
const MAX_PARK_BACKOFF: Duration = Duration::from_secs(5);

/// One received message, borrowed from the client's or the link's own
/// packet (no copy per message).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Set on the copy a broker hands out because a subscription was made.
    pub retain: bool,
}

/// The ingestor stopped: nothing more can be stored, so nothing may be
/// acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("the ingestor has stopped")]
pub struct Stopped;

pub struct Intake {
    pub topics: Topics,
    pub ingestor: Arc<Ingestor>,
    pub park: Arc<Park>,
    pub outbox: Outbox,
}

impl Intake {
    /// Stores or parks every reading of `messages`, publishes their dead
    /// letters, and skips retained copies.
    pub async fn take(&self, messages: &[Message<'_>]) -> Result<(), Stopped> {
        let received = now_ms();
        let mut readings = Vec::new();
        let mut dead = Vec::new();
        let mut retained_copies = 0;
        for message in messages {
            if message.retain {
                retained_copies += 1;
                continue;
            }
            match self
                .topics
                .parse_message(message.topic, message.payload, received)
            {
                Ok(parsed) => readings.extend(parsed),
                Err(error) => dead.push(dead_letter(message.topic, message.payload, &error)),
            }
        }
        self.store_or_park(readings).await?;
        for letter in dead {
            metrics::counter!("energyguard_mqtt_dead_letters_total").increment(1);
            tracing::warn!(topic = %letter["topic"], error = %letter["error"], "MQTT dead letter");
            if let Err(error) = self
                .outbox
                .publish(self.topics.deadletter(), letter.to_string(), false)
                .await
            {
                tracing::error!(%error, "publishing a dead letter failed");
            }
        }
        if retained_copies > 0 {
            metrics::counter!("energyguard_mqtt_retained_copies_skipped_total")
                .increment(retained_copies);
        }
        metrics::counter!("energyguard_mqtt_messages_total").increment(messages.len() as u64);
        Ok(())
    }

    async fn store_or_park(&self, readings: Vec<Reading>) -> Result<(), Stopped> {
        let (direct, mut parked) = if self.park.is_empty() {
            (readings, Vec::new())
        } else {
            readings
                .into_iter()
                .partition(|r| !self.park.is_parked(&r.key.sensor))
        };
        if !direct.is_empty()
            && let Err(refused) = self.ingestor.try_ingest(direct, Door::Mqtt).await
        {
            parked.extend(self.store_each_sensor(refused).await?);
        }
        self.park_durably(parked).await;
        Ok(())
    }

    /// Stores each sensor's readings of a refused write on their own;
    /// answers those still refused.
    async fn store_each_sensor(&self, refused: Refused) -> Result<Vec<Reading>, Stopped> {
        if refused.readings.is_empty() {
            return Err(Stopped);
        }
        let mut order: Vec<SensorId> = Vec::new();
        let mut by_sensor: HashMap<SensorId, Vec<Reading>> = HashMap::new();
        for reading in refused.readings {
            let sensor = reading.key.sensor.clone();
            by_sensor
                .entry(sensor.clone())
                .or_insert_with(|| {
                    order.push(sensor);
                    Vec::new()
                })
                .push(reading);
        }
        let tries = order.iter().filter_map(|sensor| {
            by_sensor
                .remove(sensor)
                .map(|readings| self.ingestor.try_ingest(readings, Door::Mqtt))
        });
        let mut still_refused = Vec::new();
        for outcome in join_all(tries).await {
            if let Err(refused) = outcome {
                if refused.readings.is_empty() {
                    return Err(Stopped);
                }
                still_refused.extend(refused.readings);
            }
        }
        Ok(still_refused)
    }

    /// Parks `readings`, retrying until the park's disk takes them: they
    /// must not be acknowledged before.
    async fn park_durably(&self, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let mut wait = Duration::from_millis(100);
        while let Err(error) = self.park.add(readings.clone()).await {
            tracing::error!(%error, retry_in = ?wait, "cannot park MQTT readings; they stay unacknowledged");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_PARK_BACKOFF);
        }
    }
}
