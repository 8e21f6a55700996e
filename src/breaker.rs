//! A circuit breaker per provider host: after `circuit_breaker_failures` consecutive failures, requests
//! to that host fail at once for a back-off (doubling on each failed probe, up to 8x), then one request
//! probes it; an answer closes it again. A provider that is down then costs logins nothing but a fast
//! temporary failure, cached tokens keep working, and the provider is not hammered while it recovers.
//!
//! It measures the provider's health, never a client's token: what counts as a failure is decided by
//! [`crate::http::Http`] (a request about a token fails only by transport: no connection, TLS, timeout;
//! a 5xx for one token is that login's temporary failure, since a token can make a provider fail).
//! A failure reported while the circuit is already open (by a request let through before it opened,
//! or by a stale token's check, which is always sent) adds to the count but does not extend the
//! back-off: only a failed probe does.

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

/// How a request was let through, which decides what its failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The circuit was closed.
    Closed,
    /// The one request sent after a back-off to see whether the provider is back.
    Probe,
    /// Sent whatever the circuit says (a stale acceptance's check: only its own answer can tell a
    /// revoked token from an outage).
    Bypass,
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

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostState>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request to `host` be sent now? While open: no. After the back-off: yes, one probe.
    pub fn admit(&self, host: &str) -> Result<Pass, Open> {
        if self.threshold == 0 {
            return Ok(Pass::Closed);
        }
        let mut hosts = self.hosts();
        let Some(st) = hosts.get_mut(host) else { return Ok(Pass::Closed) };
        let now = self.clock.now();
        match st.open_until {
            Some(until) if now < until => Err(Open { failures: st.failures, retry_in: until - now }),
            Some(_) => {
                // Half-open: let this one through; until it reports, others wait out a fresh back-off.
                st.open_until = Some(now + self.backoff);
                Ok(Pass::Probe)
            }
            None => Ok(Pass::Closed),
        }
    }

    /// The provider answered: closes the circuit and forgets the failures.
    pub fn success(&self, host: &str) {
        if self.threshold == 0 {
            return;
        }
        self.hosts().remove(host);
    }

    /// Records a failure of a request let through as `pass`; returns true when this one opened the
    /// circuit (or, for a probe, opened it again with a doubled back-off).
    pub fn failure(&self, host: &str, pass: Pass) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut hosts = self.hosts();
        let st = hosts.entry(host.to_string()).or_default();
        st.failures = st.failures.saturating_add(1);
        let trip = match st.open_until {
            None => st.failures >= self.threshold,
            Some(_) => pass == Pass::Probe,
        };
        if trip {
            let factor = 1u32 << st.trips.min(3);
            st.open_until = Some(self.clock.now() + self.backoff * factor);
            st.trips += 1;
        }
        trip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let b = Breaker::new(3, Duration::from_secs(10), Clock::manual());
        assert!(!b.failure("h", Pass::Closed) && !b.failure("h", Pass::Closed));
        assert!(b.admit("h").is_ok());
        assert!(b.failure("h", Pass::Closed));
        let open = b.admit("h").unwrap_err();
        assert_eq!(open.failures, 3);
        assert_eq!(open.retry_in, Duration::from_secs(10));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(3, Duration::from_secs(10), Clock::manual());
        b.failure("h", Pass::Closed);
        b.failure("h", Pass::Closed);
        b.success("h");
        assert!(!b.failure("h", Pass::Closed));
        assert!(b.admit("h").is_ok());
    }

    #[test]
    fn hosts_are_independent() {
        let b = Breaker::new(1, Duration::from_secs(10), Clock::manual());
        b.failure("a", Pass::Closed);
        assert!(b.admit("a").is_err());
        assert!(b.admit("b").is_ok());
    }

    #[test]
    fn after_the_backoff_one_probe_is_let_through_and_success_closes() {
        let clock = Clock::manual();
        let b = Breaker::new(1, Duration::from_secs(10), clock.clone());
        b.failure("h", Pass::Closed);
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
        b.failure("h", Pass::Closed);
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.admit("h"), Ok(Pass::Probe));
        assert!(b.failure("h", Pass::Probe));
        let open = b.admit("h").unwrap_err();
        assert_eq!(open.retry_in, Duration::from_secs(20));
    }

    #[test]
    fn failures_reported_while_open_count_but_do_not_extend_the_backoff() {
        let clock = Clock::manual();
        let b = Breaker::new(1, Duration::from_secs(10), clock.clone());
        assert!(b.failure("h", Pass::Closed));
        // A request let through before it opened, and stale tokens' checks, fail later.
        assert!(!b.failure("h", Pass::Closed));
        assert!(!b.failure("h", Pass::Bypass));
        let open = b.admit("h").unwrap_err();
        assert_eq!((open.failures, open.retry_in), (3, Duration::from_secs(10)));
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.admit("h"), Ok(Pass::Probe), "the back-off is the first one, not doubled");
    }

    #[test]
    fn a_bypassing_request_that_gets_an_answer_closes_the_circuit() {
        let b = Breaker::new(1, Duration::from_secs(10), Clock::manual());
        b.failure("h", Pass::Closed);
        assert!(b.admit("h").is_err());
        b.success("h");
        assert_eq!(b.admit("h"), Ok(Pass::Closed));
    }

    #[test]
    fn the_backoff_doubles_at_most_three_times() {
        let clock = Clock::manual();
        let b = Breaker::new(1, Duration::from_secs(10), clock.clone());
        b.failure("h", Pass::Closed);
        for expected in [20, 40, 80, 80] {
            clock.advance(Duration::from_secs(3600));
            let pass = b.admit("h").unwrap();
            b.failure("h", pass);
            assert_eq!(b.admit("h").unwrap_err().retry_in, Duration::from_secs(expected));
        }
    }

    #[test]
    fn the_view_shows_each_failing_host_as_closed_open_or_half_open() {
        let clock = Clock::manual();
        let b = Breaker::new(2, Duration::from_secs(10), clock.clone());
        assert!(b.view().is_empty());
        b.failure("b", Pass::Closed);
        b.failure("a", Pass::Closed);
        b.failure("a", Pass::Closed);
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
            b.failure("h", Pass::Closed);
        }
        assert!(b.admit("h").is_ok());
    }
}
