//! The one path from a validated reading to stored and alerted, whatever
//! door it came in by: HTTP and MQTT both use the one [`Ingestor`].
//!
//! Concurrent ingests are coalesced: each call queues its readings and
//! waits; a few batcher tasks take everything queued, store it as *one*
//! replicated write, evaluate alerts once, then answer every caller. A
//! thousand clients each posting one reading then cost a handful of
//! replicated writes instead of a thousand (each with its hand-offs to every
//! replica's writer thread). If a combined write is refused (a sensor
//! without its write quorum), each caller's readings are retried alone, so
//! one client's unavailable sensor never fails another client's write.
//!
//! Two batchers let one batch be planned and answered while another
//! commits. But a batch formed while another is being stored waits until it
//! holds as many readings as that one (or `OVERLAP_AT`), or until that one
//! is stored: each write commits on every node it touches, and a second write
//! of two or three readings costs most of what one of ten does, so small
//! writes are better carried by the next batch than stored beside a big one.
//!
//! The queue is bounded in readings: at most `MAX_QUEUED_READINGS` (100,000) wait or
//! are being stored; a caller beyond that waits for room before queueing,
//! which pushes back on its door (an HTTP connection, the MQTT consumer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::alerts::AlertService;
use crate::alerts::engine::{Change, Transition};
use crate::latest::LatestReadings;
use crate::reading::{Key, Reading};
use crate::replication::{ReplicationError, ReplicationResult, Replicator};

/// Batcher tasks: two keep both cores busy while one batch waits for its
/// commits.
const BATCHERS: usize = 2;
/// Readings combined into one replicated write at most.
const MAX_COMBINED: usize = 20_000;
/// A batch formed while another is being stored waits until it holds as
/// many readings as that one, or this many, or until that one is stored.
const OVERLAP_AT: usize = 1_000;
// So a full batch never waits.
const _: () = assert!(OVERLAP_AT <= MAX_COMBINED);
/// Readings queued or being stored at most. A single call larger than this
/// takes all the room, so it waits for everything before it and nothing
/// else queues beside it.
const MAX_QUEUED_READINGS: usize = 100_000;
// So the queue can always fill a combined write.
const _: () = assert!(MAX_COMBINED <= MAX_QUEUED_READINGS);

struct Pending {
    readings: Vec<Reading>,
    reply: oneshot::Sender<Result<(), Refused>>,
    /// The call's room in the queue, given back once it is answered.
    _room: OwnedSemaphorePermit,
}

/// Readings the ingestor did not store, handed back with the reason, so a
/// caller can keep them elsewhere without having cloned them beforehand.
#[derive(Debug)]
pub struct Refused {
    pub error: ReplicationError,
    /// Empty only when the ingestor stopped with the readings in hand.
    pub readings: Vec<Reading>,
}

/// What the batchers share: the queue, and how many readings the batches
/// being stored hold.
struct Batchers {
    /// A tokio Mutex: a batcher holds it while it forms a batch, which
    /// awaits arrivals.
    queue: Mutex<mpsc::UnboundedReceiver<Pending>>,
    storing: AtomicUsize,
    stored: Notify,
}

/// The door a reading came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Http,
    Mqtt,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Mqtt => "mqtt",
        }
    }
}

/// Readings stored since start, by door.
#[derive(Debug, Default)]
pub struct Accepted {
    http: AtomicU64,
    mqtt: AtomicU64,
}

impl Accepted {
    fn of(&self, door: Door) -> &AtomicU64 {
        match door {
            Door::Http => &self.http,
            Door::Mqtt => &self.mqtt,
        }
    }

    pub fn get(&self, door: Door) -> u64 {
        self.of(door).load(Ordering::Relaxed)
    }
}

pub struct Ingestor {
    queue: mpsc::UnboundedSender<Pending>,
    accepted: Accepted,
    /// One permit per reading that may be queued; the channel itself is
    /// unbounded because this bounds what it holds.
    room: Arc<Semaphore>,
}

impl Ingestor {
    /// Starts the batchers; every stored batch is also offered to `latest`.
    pub fn new(
        replicator: Arc<Replicator>,
        alerts: Arc<AlertService>,
        latest: Arc<LatestReadings>,
    ) -> Self {
        let (ingestor, batchers) = Self::unstarted();
        let shared = Arc::new(batchers);
        let after = Stored { alerts, latest };
        let after = Arc::new(after);
        for _ in 0..BATCHERS {
            tokio::spawn(batcher(shared.clone(), replicator.clone(), after.clone()));
        }
        ingestor
    }

    /// An ingestor and the batchers' side of its queue, with no batcher
    /// taking from it yet.
    fn unstarted() -> (Self, Batchers) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let ingestor = Self {
            queue,
            accepted: Accepted::default(),
            room: Arc::new(Semaphore::new(MAX_QUEUED_READINGS)),
        };
        (ingestor, Batchers::new(receiver))
    }

    /// Stores `readings` on their write quorum, then evaluates alerts.
    /// Answers their keys once stored. An alerting failure is logged and
    /// counted but does not fail the ingest: the readings are stored, and a
    /// client retry would not help.
    pub async fn ingest(&self, readings: Vec<Reading>, door: Door) -> ReplicationResult<Vec<Key>> {
        let keys: Vec<Key> = readings.iter().map(|r| r.key.clone()).collect();
        self.try_ingest(readings, door).await.map_err(|r| r.error)?;
        Ok(keys)
    }

    /// Readings stored since start, by door.
    pub fn accepted(&self) -> &Accepted {
        &self.accepted
    }

    /// Like [`Self::ingest`], but answers nothing on success and hands the
    /// readings back when they could not be stored.
    pub async fn try_ingest(&self, readings: Vec<Reading>, door: Door) -> Result<(), Refused> {
        let count = readings.len() as u64;
        let (reply, answer) = oneshot::channel();
        let closed = |readings| Refused {
            error: ReplicationError::Storage(crate::storage::StorageError::Closed),
            readings,
        };
        let wanted = readings.len().clamp(1, MAX_QUEUED_READINGS) as u32;
        let Ok(room) = self.room.clone().acquire_many_owned(wanted).await else {
            return Err(closed(readings));
        };
        self.queue
            .send(Pending {
                readings,
                reply,
                _room: room,
            })
            .map_err(|unsent| closed(unsent.0.readings))?;
        let result = answer.await.unwrap_or_else(|_| Err(closed(Vec::new())));
        match &result {
            Ok(()) => {
                self.accepted.of(door).fetch_add(count, Ordering::Relaxed);
                metrics::counter!("energyguard_readings_accepted_total", "door" => door.as_str())
                    .increment(count)
            }
            Err(_) => {
                metrics::counter!("energyguard_readings_rejected_total", "door" => door.as_str(), "reason" => "unavailable")
                    .increment(count)
            }
        }
        result
    }
}

/// Requests taken together, and how many readings they hold.
#[derive(Default)]
struct Batch {
    requests: Vec<Pending>,
    readings: usize,
}

impl Batch {
    fn push(&mut self, pending: Pending) {
        self.readings += pending.readings.len();
        self.requests.push(pending);
    }

    /// Adds whatever is queued, up to [`MAX_COMBINED`] readings.
    fn take_queued(&mut self, queue: &mut mpsc::UnboundedReceiver<Pending>) {
        while self.readings < MAX_COMBINED {
            match queue.try_recv() {
                Ok(next) => self.push(next),
                Err(_) => break,
            }
        }
    }

    /// Worth storing beside a batch of `storing` readings already being
    /// stored: a second write in flight keeps both cores busy, but a small
    /// one costs a commit on every node for a few readings that the next
    /// write could have carried.
    fn worth_storing_beside(&self, storing: usize) -> bool {
        storing == 0 || self.readings >= storing.min(OVERLAP_AT)
    }
}

impl Batchers {
    fn new(queue: mpsc::UnboundedReceiver<Pending>) -> Self {
        Self {
            queue: Mutex::new(queue),
            storing: AtomicUsize::new(0),
            stored: Notify::new(),
        }
    }

    /// The next batch worth storing, counted as being stored; `None` once
    /// the queue is closed and empty.
    async fn next_batch(&self, queue: &mut mpsc::UnboundedReceiver<Pending>) -> Option<Batch> {
        let mut batch = Batch::default();
        batch.push(queue.recv().await?);
        batch.take_queued(queue);
        loop {
            // Created before the check, so a batch stored in between still
            // wakes this one.
            let stored = self.stored.notified();
            if batch.worth_storing_beside(self.storing.load(Ordering::Acquire)) {
                break;
            }
            tokio::select! {
                next = queue.recv() => match next {
                    Some(next) => {
                        batch.push(next);
                        batch.take_queued(queue);
                    }
                    None => break,
                },
                () = stored => {}
            }
        }
        self.storing.fetch_add(batch.readings, Ordering::AcqRel);
        Some(batch)
    }

    /// A batch of `readings` readings has been stored (or refused).
    fn finished(&self, readings: usize) {
        self.storing.fetch_sub(readings, Ordering::AcqRel);
        self.stored.notify_waiters();
    }
}

/// Who hears of readings once stored.
struct Stored {
    alerts: Arc<AlertService>,
    latest: Arc<LatestReadings>,
}

async fn batcher(shared: Arc<Batchers>, replicator: Arc<Replicator>, after: Arc<Stored>) {
    loop {
        let batch = {
            let mut queue = shared.queue.lock().await;
            shared.next_batch(&mut queue).await
        };
        let Some(batch) = batch else {
            return;
        };
        store(&replicator, &after, batch.requests).await;
        shared.finished(batch.readings);
    }
}

/// Stores a batch, evaluates alerts on what was stored, then answers every
/// caller: a caller's next request is therefore evaluated after this one.
async fn store(replicator: &Replicator, after: &Stored, batch: Vec<Pending>) {
    let combined_ok = batch.len() > 1 && {
        let combined: Vec<Reading> = batch
            .iter()
            .flat_map(|p| p.readings.iter().cloned())
            .collect();
        replicator.put(combined).await.is_ok()
    };
    let mut accepted = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for pending in batch {
        let result = if combined_ok {
            Ok(())
        } else {
            replicator.put(pending.readings.clone()).await
        };
        let result = match result {
            Ok(()) => {
                accepted.extend(pending.readings);
                Ok(())
            }
            Err(error) => Err(Refused {
                error,
                readings: pending.readings,
            }),
        };
        replies.push((pending.reply, result));
    }
    after.latest.record(&accepted);
    match after.alerts.observe(&accepted).await {
        Ok(changes) => record_alert_metrics(&changes),
        Err(error) => {
            metrics::counter!("energyguard_alert_evaluation_errors_total").increment(1);
            tracing::error!(%error, "alert evaluation failed for stored readings");
        }
    }
    for (reply, result) in replies {
        // The caller may have gone away; the readings are stored regardless.
        let _ = reply.send(result);
    }
}

pub fn record_alert_metrics(changes: &[Change]) {
    for change in changes {
        let transition = match change.transition {
            Transition::Fired => "fired",
            Transition::Resolved => "resolved",
            Transition::Updated => continue,
        };
        tracing::info!(alert = %change.alert.id, transition, value = change.alert.value, "alert");
        metrics::counter!("energyguard_alerts_total", "transition" => transition).increment(1);
    }
}

#[cfg(test)]
mod tests;
