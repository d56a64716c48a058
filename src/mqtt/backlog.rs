//! The embedded broker's backlog of readings: bytes that publishers were
//! told were received and that are not yet stored (or parked).
//!
//! rumqttd keeps each subscription's messages in an in-memory window and, if
//! a subscriber falls further behind than that window, skips ahead without
//! a word to the publishers it already acknowledged. The [`Backlog`] makes
//! that impossible for the readings consumer: the front door admits a
//! readings PUBLISH only while the backlog has room for it, otherwise it
//! stops reading from that client (TCP pushes back on the publisher) until
//! the consumer has stored enough. The consumer releases a message's bytes
//! once its readings are stored, parked or dead-lettered.
//!
//! Invariant: `used <= capacity`, except that one message may always enter
//! an empty backlog (so a message larger than the capacity is not held
//! forever). With the capacity at half the broker's window, which rumqttd
//! never trims below fifteen sixteenths, the consumer is never skipped.
//!
//! A message's size is counted as rumqttd counts it in its window:
//! [`message_size`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::lag::Lag;

/// What rumqttd counts for one message in a subscription's window.
pub fn message_size(topic_len: usize, payload_len: usize) -> usize {
    4 + topic_len + payload_len
}

#[derive(Debug)]
pub struct Backlog {
    capacity: usize,
    used: AtomicUsize,
    released: Notify,
    /// The bytes' age, in the same units.
    lag: Arc<Lag>,
}

impl Backlog {
    /// A backlog of `capacity` bytes whose waiting bytes' age `lag` keeps.
    pub fn new(capacity: usize, lag: Arc<Lag>) -> Self {
        Self {
            capacity,
            used: AtomicUsize::new(0),
            released: Notify::new(),
            lag,
        }
    }

    /// Waits until `size` more bytes fit, then counts them in.
    pub async fn admit(&self, size: usize) {
        loop {
            // Registered before the attempt, so a release in between wakes it.
            let released = self.released.notified();
            if self.try_admit(size) {
                return;
            }
            metrics::counter!("energyguard_mqtt_publishers_held_total").increment(1);
            released.await;
        }
    }

    pub(crate) fn try_admit(&self, size: usize) -> bool {
        let admitted = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + size <= self.capacity).then_some(used + size)
            })
            .is_ok();
        if admitted {
            self.lag.arrived(size);
        }
        admitted
    }

    /// `size` bytes left the backlog (stored, parked or dead-lettered).
    pub fn release(&self, size: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(size))
            });
        self.lag.left(size);
        self.released.notify_waiters();
        metrics::gauge!("energyguard_mqtt_backlog_bytes").set(self.used() as f64);
    }

    /// Bytes in the backlog now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_backlog_holds_publishers_until_bytes_are_released() {
        let backlog = Arc::new(Backlog::new(100, Arc::default()));
        backlog.admit(60).await;
        backlog.admit(40).await;
        assert_eq!(backlog.used(), 100);
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.admit(30).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "admitted past the capacity");
        backlog.release(20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "30 bytes do not fit in 20");
        backlog.release(20);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once there was room")
            .expect("task");
        assert_eq!(backlog.used(), 90);
    }

    #[tokio::test]
    async fn one_message_larger_than_the_capacity_enters_an_empty_backlog() {
        let backlog = Backlog::new(10, Arc::default());
        backlog.admit(50).await;
        assert_eq!(backlog.used(), 50);
        backlog.release(80);
        assert_eq!(backlog.used(), 0, "never below zero");
    }
}
