//! Write versions: a hybrid logical clock.
//!
//! Every write (a value or a delete) carries a [`Version`]; a replica keeps
//! the record with the highest version per key, so replaying the same writes
//! in any order converges to the same state.
//!
//! A version is `physical milliseconds << 16 | logical counter`: it tracks
//! wall-clock time (useful when reading a database by hand), never goes
//! backwards while the process runs, and survives restarts because the clock
//! is started from the highest version found on disk ([`Clock::observe`]).
//! One clock issues every version of a cluster, so versions are unique per
//! write and "highest wins" is a total order.

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of a version below its physical milliseconds.
pub const LOGICAL_BITS: u32 = 16;

/// The version of one write. Higher wins.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Version(pub u64);

impl Version {
    /// The wall-clock millisecond this version was issued at.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{}.{}",
            self.physical_ms(),
            self.0 & ((1 << LOGICAL_BITS) - 1)
        )
    }
}

/// Issues strictly increasing versions.
///
/// A `std::sync::Mutex` rather than an atomic compare-and-swap loop: the
/// critical section is two integer operations and never awaits, and the mutex
/// keeps the logic obvious.
#[derive(Debug, Default)]
pub struct Clock {
    last: Mutex<u64>,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later version higher than `seen` (e.g. the highest version
    /// stored on disk, so a restart after the wall clock stepped back still
    /// issues newer versions).
    pub fn observe(&self, seen: Version) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = (*last).max(seen.0);
    }

    /// The highest version issued or observed so far.
    pub fn last(&self) -> Version {
        Version(*self.last.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The next version: at least the current wall-clock time, and always
    /// higher than any version issued or observed before.
    pub fn next(&self) -> Version {
        self.next_batch(1)
    }

    /// Reserves `count` consecutive versions and returns the first.
    pub fn next_batch(&self, count: u64) -> Version {
        let physical = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            << LOGICAL_BITS;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = physical.max(*last + 1);
        *last = first + count.saturating_sub(1);
        Version(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        let clock = Clock::new();
        let mut previous = clock.next();
        for _ in 0..100_000 {
            let v = clock.next();
            assert!(v > previous);
            previous = v;
        }
    }

    #[test]
    fn observed_versions_are_exceeded_even_from_the_future() {
        let clock = Clock::new();
        let future = Version(clock.next().0 + (3_600_000 << LOGICAL_BITS));
        clock.observe(future);
        assert!(clock.next() > future);
    }

    #[test]
    fn a_batch_reserves_consecutive_versions() {
        let clock = Clock::new();
        let first = clock.next_batch(10);
        let after = clock.next();
        assert!(after.0 >= first.0 + 10);
    }

    #[test]
    fn versions_track_wall_clock_time() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let v = Clock::new().next();
        assert!(v.physical_ms() >= now_ms && v.physical_ms() < now_ms + 60_000);
    }
}
