//! Counters per process (auth-worker): what was decided, how, and what the provider cost. Readable
//! from Lua (`validator:stats()`) and written to Dovecot's log every `stats_log_interval_secs`.

use crate::cache::Source;
use crate::clock::Clock;
use crate::errors::{Unavailable, Verdict};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub rejected: u64,
    /// Rejections by kind (`wrong_user`, `provider_refused`, `expired`...).
    pub rejected_by: BTreeMap<&'static str, u64>,
    pub tempfail: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub stale_used: u64,
    pub provider_requests: u64,
    pub provider_failures: u64,
    pub provider_msecs_total: u64,
    pub provider_msecs_max: u64,
    /// Temporary failures by kind (`unreachable`, `timeout`, `status`...).
    pub tempfail_by: BTreeMap<&'static str, u64>,
    /// Provider requests by duration: `[i]` counts those within `PROVIDER_LATENCY_BUCKETS_MS[i]` and
    /// above the bucket before; the last counts the slower ones (a histogram, not cumulative).
    pub provider_latency: [u64; PROVIDER_LATENCY_BUCKETS_MS.len() + 1],
    /// The same requests' total duration in microseconds (for the histogram's sum).
    pub provider_micros_total: u64,
}

/// Upper bounds of the provider latency histogram, in milliseconds.
pub const PROVIDER_LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000];

/// The kind of a temporary failure, as counters name it.
pub fn unavailable_kind(u: &Unavailable) -> &'static str {
    match u {
        Unavailable::Unreachable { .. } => "unreachable",
        Unavailable::Timeout { .. } => "timeout",
        Unavailable::Status { .. } => "status",
        Unavailable::BadReply { .. } => "bad_reply",
        Unavailable::NoKeys { .. } => "no_keys",
        Unavailable::CircuitOpen { .. } => "circuit_open",
        Unavailable::Settings(_) => "settings",
        Unavailable::Internal(_) => "internal",
    }
}

impl Snapshot {
    /// Adds `other`'s counts to these (the daemon keeps its counters across a reload this way).
    pub fn add(&mut self, other: &Snapshot) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        for (k, v) in &other.rejected_by {
            *self.rejected_by.entry(k).or_default() += v;
        }
        self.tempfail += other.tempfail;
        for (k, v) in &other.tempfail_by {
            *self.tempfail_by.entry(k).or_default() += v;
        }
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.stale_used += other.stale_used;
        self.provider_requests += other.provider_requests;
        self.provider_failures += other.provider_failures;
        self.provider_msecs_total += other.provider_msecs_total;
        self.provider_msecs_max = self.provider_msecs_max.max(other.provider_msecs_max);
        for (mine, theirs) in self.provider_latency.iter_mut().zip(other.provider_latency) {
            *mine += theirs;
        }
        self.provider_micros_total += other.provider_micros_total;
    }

    /// One log line, `key=value` pairs.
    pub fn line(&self) -> String {
        let mut s = format!(
            "dovecot-oauth2: stats accepted={} rejected={} tempfail={} cache_hits={} cache_misses={} stale_used={} \
             provider_requests={} provider_failures={} provider_avg_ms={} provider_max_ms={}",
            self.accepted,
            self.rejected,
            self.tempfail,
            self.cache_hits,
            self.cache_misses,
            self.stale_used,
            self.provider_requests,
            self.provider_failures,
            self.provider_msecs_total.checked_div(self.provider_requests).unwrap_or(0),
            self.provider_msecs_max
        );
        for (k, v) in &self.rejected_by {
            s.push_str(&format!(" rejected_{k}={v}"));
        }
        s
    }
}

pub struct Stats {
    inner: Mutex<Snapshot>,
    interval: Duration,
    last_logged: Mutex<Instant>,
    clock: Clock,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new(Duration::ZERO, Clock::system())
    }
}

impl Stats {
    pub fn new(log_interval: Duration, clock: Clock) -> Stats {
        Stats {
            inner: Mutex::new(Snapshot::default()),
            interval: log_interval,
            last_logged: Mutex::new(clock.now()),
            clock,
        }
    }

    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn login(&self, verdict: &Verdict, source: Option<Source>) {
        self.with(|s| {
            match verdict {
                Verdict::Accept(_) => s.accepted += 1,
                Verdict::Reject(r) => {
                    s.rejected += 1;
                    *s.rejected_by.entry(r.kind()).or_default() += 1;
                }
                Verdict::TempFail(u) => {
                    s.tempfail += 1;
                    *s.tempfail_by.entry(unavailable_kind(u)).or_default() += 1;
                }
            }
            match source {
                Some(Source::Cache) => s.cache_hits += 1,
                Some(Source::Stale) => {
                    s.cache_hits += 1;
                    s.stale_used += 1
                }
                Some(Source::Provider) => s.cache_misses += 1,
                None => {}
            }
        });
    }

    pub fn provider_request(&self, elapsed: Duration, failed: bool) {
        self.with(|s| {
            let ms = elapsed.as_millis() as u64;
            s.provider_requests += 1;
            s.provider_failures += failed as u64;
            s.provider_msecs_total += ms;
            s.provider_msecs_max = s.provider_msecs_max.max(ms);
            let bucket = PROVIDER_LATENCY_BUCKETS_MS
                .iter()
                .position(|&le| elapsed <= Duration::from_millis(le))
                .unwrap_or(PROVIDER_LATENCY_BUCKETS_MS.len());
            s.provider_latency[bucket] += 1;
            s.provider_micros_total += elapsed.as_micros() as u64;
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The stats line when the log interval has passed since the last one (0 = never).
    pub fn due_line(&self) -> Option<String> {
        if self.interval.is_zero() {
            return None;
        }
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if self.clock.since(*last) < self.interval {
            return None;
        }
        *last = self.clock.now();
        Some(self.snapshot().line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Rejection;

    #[test]
    fn logins_are_counted_by_verdict_source_and_rejection_kind() {
        let st = Stats::new(Duration::ZERO, Clock::manual());
        st.login(&Verdict::Accept(vec![]), Some(Source::Cache));
        st.login(&Verdict::Accept(vec![]), Some(Source::Provider));
        st.login(&Verdict::Reject(Rejection::Inactive), Some(Source::Provider));
        st.login(&Verdict::TempFail(Unavailable::Internal("x".into())), Some(Source::Provider));
        let s = st.snapshot();
        assert_eq!((s.accepted, s.rejected, s.tempfail, s.cache_hits, s.cache_misses), (2, 1, 1, 1, 3));
        assert_eq!(s.rejected_by.get("inactive"), Some(&1));
        assert!(s.line().contains("rejected_inactive=1"));
    }

    #[test]
    fn provider_latency_is_summed_and_maxed() {
        let st = Stats::new(Duration::ZERO, Clock::manual());
        st.provider_request(Duration::from_millis(10), false);
        st.provider_request(Duration::from_millis(30), true);
        let s = st.snapshot();
        assert_eq!(
            (s.provider_requests, s.provider_failures, s.provider_msecs_total, s.provider_msecs_max),
            (2, 1, 40, 30)
        );
        assert!(s.line().contains("provider_avg_ms=20"));
    }

    #[test]
    fn provider_latency_falls_into_the_first_bucket_that_holds_it() {
        let st = Stats::new(Duration::ZERO, Clock::manual());
        st.provider_request(Duration::from_micros(500), false);
        st.provider_request(Duration::from_millis(1), false);
        st.provider_request(Duration::from_millis(7), false);
        st.provider_request(Duration::from_secs(60), true);
        let s = st.snapshot();
        assert_eq!(s.provider_latency[0], 2, "<= 1 ms");
        assert_eq!(s.provider_latency[3], 1, "<= 10 ms");
        assert_eq!(s.provider_latency[PROVIDER_LATENCY_BUCKETS_MS.len()], 1, "slower than the last bound");
        assert_eq!(s.provider_micros_total, 500 + 1_000 + 7_000 + 60_000_000);
    }

    #[test]
    fn temporary_failures_are_counted_by_kind() {
        let st = Stats::new(Duration::ZERO, Clock::manual());
        st.login(&Verdict::TempFail(Unavailable::Timeout { url: "u".into(), msecs: 1 }), Some(Source::Provider));
        st.login(&Verdict::TempFail(Unavailable::Internal("x".into())), None);
        let s = st.snapshot();
        assert_eq!((s.tempfail_by.get("timeout"), s.tempfail_by.get("internal")), (Some(&1), Some(&1)));
    }

    #[test]
    fn snapshots_add_up_every_counter() {
        let st = Stats::new(Duration::ZERO, Clock::manual());
        st.login(&Verdict::Reject(Rejection::Inactive), Some(Source::Provider));
        st.login(&Verdict::TempFail(Unavailable::Internal("x".into())), None);
        st.provider_request(Duration::from_millis(30), true);
        let one = st.snapshot();
        let mut sum = one.clone();
        sum.add(&one);
        assert_eq!((sum.rejected, sum.tempfail, sum.cache_misses, sum.provider_requests), (2, 2, 2, 2));
        assert_eq!((sum.rejected_by.get("inactive"), sum.tempfail_by.get("internal")), (Some(&2), Some(&2)));
        assert_eq!(sum.provider_latency.iter().sum::<u64>(), 2);
        assert_eq!((sum.provider_msecs_total, sum.provider_msecs_max), (60, 30));
    }

    #[test]
    fn the_log_line_is_due_once_per_interval_and_never_when_off() {
        assert_eq!(Stats::new(Duration::ZERO, Clock::manual()).due_line(), None);
        let clock = Clock::manual();
        let st = Stats::new(Duration::from_secs(60), clock.clone());
        assert_eq!(st.due_line(), None);
        clock.advance(Duration::from_secs(59));
        assert_eq!(st.due_line(), None);
        clock.advance(Duration::from_secs(1));
        assert!(st.due_line().is_some());
        assert_eq!(st.due_line(), None);
    }
}
