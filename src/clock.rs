//! Time as the engine sees it: monotonic instants for lifetimes and back-offs, Unix seconds for token
//! claims. Production uses the system clocks; tests use a manual clock they move forward, so no test
//! sleeps or depends on how busy the machine is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A cheap handle, cloned into every part that reads the time (cache, breaker, key store, stats).
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<Manual>>);

#[derive(Debug)]
struct Manual {
    start: Instant,
    start_unix: u64,
    /// Nanoseconds moved forward since `start`.
    offset: AtomicU64,
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that stands still until [`Clock::advance`] moves it; starts at the real time.
    pub fn manual() -> Clock {
        Clock(Some(Arc::new(Manual { start: Instant::now(), start_unix: system_unix(), offset: AtomicU64::new(0) })))
    }

    pub fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(m) => m.start + Duration::from_nanos(m.offset.load(Ordering::SeqCst)),
        }
    }

    /// Seconds since the Unix epoch (0 if the system clock is before it).
    pub fn unix(&self) -> u64 {
        match &self.0 {
            None => system_unix(),
            Some(m) => m.start_unix + m.offset.load(Ordering::SeqCst) / 1_000_000_000,
        }
    }

    /// Time elapsed since `earlier` by this clock (zero if `earlier` is later).
    pub fn since(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }

    /// Moves a manual clock forward. On the system clock this is a programming error.
    pub fn advance(&self, by: Duration) {
        let m = self.0.as_ref().expect("advance() needs Clock::manual()");
        m.offset.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

fn system_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_advanced() {
        let c = Clock::manual();
        let (t0, u0) = (c.now(), c.unix());
        assert_eq!((c.now(), c.unix()), (t0, u0));
        c.advance(Duration::from_secs(90));
        assert_eq!(c.since(t0), Duration::from_secs(90));
        assert_eq!(c.unix(), u0 + 90);
    }

    #[test]
    fn clones_of_a_manual_clock_share_its_time() {
        let c = Clock::manual();
        let other = c.clone();
        c.advance(Duration::from_secs(5));
        assert_eq!(other.since(c.now() - Duration::from_secs(5)), Duration::from_secs(5));
    }
}
