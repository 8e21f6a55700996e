//! A circuit breaker per provider host: after `circuit_breaker_failures` consecutive failures (no
//! answer, timeout, 5xx, 429, unusable reply), requests to that host fail at once for a back-off
//! (doubling on each failed probe, up to 8x), then one request probes it; an answer closes it again.
//! A provider that is down then costs logins nothing but a fast temporary failure, cached tokens keep
//! working, and the provider is not hammered while it recovers.

use crate::clock::Clock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Breaker {
    threshold: u32,
    backoff: Duration,
    hosts: Mutex<HashMap<String, HostState>>,
    clock: Clock,
}

#[derive(Default)]
struct HostState {
    failures: u32,
    open_until: Option<Instant>,
    /// Consecutive trips, for the doubling back-off.
    trips: u32,
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub failures: u32,
    pub retry_in: Duration,
}

/// One provider host's breaker as metrics show it (read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub host: String,
    /// Consecutive failures so far.
    pub failures: u32,
    pub state: BreakerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests go through (failures below the threshold).
    Closed,
    /// Requests fail at once for `retry_in`.
    Open { retry_in: Duration },
    /// The back-off is over: the next request probes the host.
    HalfOpen,
}

impl Breaker {
    /// Every host with failures on record, sorted by name (a host that answered is not listed).
    pub fn view(&self) -> Vec<HostView> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        let mut out: Vec<HostView> = hosts
            .iter()
            .map(|(host, st)| HostView {
                host: host.clone(),
                failures: st.failures,
                state: match st.open_until {
                    Some(until) if now < until => BreakerState::Open { retry_in: until - now },
                    Some(_) => BreakerState::HalfOpen,
                    None => BreakerState::Closed,
                },
            })
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }
}

impl Breaker {
    /// `threshold = 0` turns the breaker off.
    pub fn new(threshold: u32, backoff: Duration, clock: Clock) -> Breaker {
        Breaker { threshold, backoff, hosts: Mutex::new(HashMap::new()), clock }
    }

    /// May a request to `host` be sent now? While open: no. After the back-off: yes, one probe.
    pub fn admit(&self, host: &str) -> Result<(), Open> {
        if self.threshold == 0 {
            return Ok(());
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(st) = hosts.get_mut(host) else { return Ok(()) };
        let now = self.clock.now();
        match st.open_until {
            Some(until) if now < until => Err(Open { failures: st.failures, retry_in: until - now }),
            Some(_) => {
                // Half-open: let this one through; until it reports, others wait out a fresh back-off.
                st.open_until = Some(now + self.backoff);
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn success(&self, host: &str) {
        if self.threshold == 0 {
            return;
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.remove(host);
    }

    /// Records a failure; returns true when this one opened the circuit.
    pub fn failure(&self, host: &str) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let st = hosts.entry(host.to_string()).or_default();
        st.failures = st.failures.saturating_add(1);
        if st.failures >= self.threshold {
            let factor = 1u32 << st.trips.min(3);
            st.open_until = Some(self.clock.now() + self.backoff * factor);
            st.trips += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let b = Breaker::new(3, Duration::from_secs(10), Clock::manual());
        assert!(!b.failure("h") && !b.failure("h"));
        assert!(b.admit("h").is_ok());
        assert!(b.failure("h"));
        let open = b.admit("h").unwrap_err();
        assert_eq!(open.failures, 3);
        assert_eq!(open.retry_in, Duration::from_secs(10));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(3, Duration::from_secs(10), Clock::manual());
        b.failure("h");
        b.failure("h");
        b.success("h");
        assert!(!b.failure("h"));
        assert!(b.admit("h").is_ok());
    }

    #[test]
    fn hosts_are_independent() {
        let b = Breaker::new(1, Duration::from_secs(10), Clock::manual());
        b.failure("a");
        assert!(b.admit("a").is_err());
        assert!(b.admit("b").is_ok());
    }

    #[test]
    fn after_the_backoff_one_probe_is_let_through_and_success_closes() {
        let clock = Clock::manual();
        let b = Breaker::new(1, Duration::from_secs(10), clock.clone());
        b.failure("h");
        assert!(b.admit("h").is_err());
        clock.advance(Duration::from_secs(10));
        assert!(b.admit("h").is_ok(), "probe");
        assert!(b.admit("h").is_err(), "only one probe at a time");
        b.success("h");
        assert!(b.admit("h").is_ok());
    }

    #[test]
    fn a_failed_probe_reopens_with_a_longer_backoff() {
        let clock = Clock::manual();
        let b = Breaker::new(1, Duration::from_secs(10), clock.clone());
        b.failure("h");
        clock.advance(Duration::from_secs(10));
        assert!(b.admit("h").is_ok());
        b.failure("h");
        let open = b.admit("h").unwrap_err();
        assert_eq!(open.retry_in, Duration::from_secs(20));
    }

    #[test]
    fn the_view_shows_each_failing_host_as_closed_open_or_half_open() {
        let clock = Clock::manual();
        let b = Breaker::new(2, Duration::from_secs(10), clock.clone());
        assert!(b.view().is_empty());
        b.failure("b");
        b.failure("a");
        b.failure("a");
        let v = b.view();
        assert_eq!(v.iter().map(|h| (h.host.as_str(), h.failures)).collect::<Vec<_>>(), [("a", 2), ("b", 1)]);
        assert_eq!(v[0].state, BreakerState::Open { retry_in: Duration::from_secs(10) });
        assert_eq!(v[1].state, BreakerState::Closed);
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.view()[0].state, BreakerState::HalfOpen);
        b.success("a");
        assert_eq!(b.view().len(), 1);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(10), Clock::manual());
        for _ in 0..100 {
            b.failure("h");
        }
        assert!(b.admit("h").is_ok());
    }
}
