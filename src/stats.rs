//! Counters per process (auth-worker): what was decided, how, and what the provider cost. Readable
//! from Lua (`validator:stats()`) and written to Dovecot's log every `stats_log_interval_secs`.

use crate::cache::Source;
use crate::clock::Clock;
use crate::errors::Verdict;
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
}

impl Snapshot {
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
                Verdict::TempFail(_) => s.tempfail += 1,
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
    use crate::errors::{Rejection, Unavailable};

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
