//! How far the MQTT consumer is behind: the age of the oldest message taken
//! in and not yet stored (or parked, or dead-lettered), for
//! `energyguard_mqtt_consumer_lag_seconds`.
//!
//! "Taken in" is where the queue starts:
//! * with the embedded broker, when the front door admits a publish into
//!   the [`Backlog`](super::backlog::Backlog): the publisher has its answer
//!   from then on, and everything up to the store is EnergyGuard's delay;
//! * with an external broker, when the consumer receives the message. What
//!   waits in the broker's own queue is the broker's to report.
//!
//! Messages are counted in units (bytes or messages, as the caller likes)
//! and assumed to leave in the order they came, which both consumers nearly
//! keep: a batch is stored whole, in arrival order. Arrivals are grouped in
//! slots of 100 ms; the lag is the age of the oldest slot with units
//! left, so it is exact to a slot. Invariant: slots are in arrival order and
//! each holds at least one unit, so they are never more than the units
//! waiting, which the backlog or the consumer's channel bounds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Arrivals closer together than this share a slot.
const SLOT: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Lag {
    waiting: Mutex<VecDeque<Slot>>,
}

#[derive(Debug)]
struct Slot {
    since: Instant,
    units: usize,
}

impl Lag {
    /// `units` more were taken in now.
    pub fn arrived(&self, units: usize) {
        if units == 0 {
            return;
        }
        let now = Instant::now();
        let mut waiting = self.lock();
        match waiting.back_mut() {
            Some(last) if now.duration_since(last.since) < SLOT => last.units += units,
            _ => waiting.push_back(Slot { since: now, units }),
        }
    }

    /// `units` left (stored, parked or dead-lettered), the oldest first.
    /// More than are waiting empties it.
    pub fn left(&self, mut units: usize) {
        let mut waiting = self.lock();
        while units > 0 {
            let Some(oldest) = waiting.front_mut() else {
                return;
            };
            if oldest.units > units {
                oldest.units -= units;
                return;
            }
            units -= oldest.units;
            waiting.pop_front();
        }
    }

    /// How long the oldest unit waiting has waited; zero when none does.
    pub fn age(&self) -> Duration {
        self.lock()
            .front()
            .map_or(Duration::ZERO, |oldest| oldest.since.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_oldest_unit_waiting() {
        let lag = Lag::default();
        assert_eq!(lag.age(), Duration::ZERO);
        lag.arrived(10);
        std::thread::sleep(SLOT + Duration::from_millis(50));
        lag.arrived(5);
        assert!(lag.age() >= SLOT + Duration::from_millis(50));
        // Part of the oldest slot leaves: it is still the oldest.
        lag.left(4);
        let oldest = lag.age();
        assert!(oldest >= SLOT + Duration::from_millis(50));
        // The rest of it leaves: the younger slot, 150 ms younger, is now
        // the oldest.
        lag.left(6);
        assert!(lag.age() < oldest, "{:?} then {oldest:?}", lag.age());
        lag.left(100);
        assert_eq!(lag.age(), Duration::ZERO);
        assert!(lag.lock().is_empty());
    }

    #[test]
    fn arrivals_close_together_share_a_slot() {
        let lag = Lag::default();
        for _ in 0..1_000 {
            lag.arrived(1);
        }
        assert!(lag.lock().len() <= 2, "{:?}", lag.lock());
        lag.arrived(0);
        lag.left(1_000);
        assert!(lag.lock().is_empty());
    }
}
