//! `GET /metrics`: the engine's counters and the daemon's own, in Prometheus' text exposition format
//! (version 0.0.4). Counters survive a reload (the replaced engine's are carried over).

use crate::breaker::{BreakerState, HostView};
use crate::stats::{Snapshot, PROVIDER_LATENCY_BUCKETS_MS};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The statuses the daemon answers with, counted one by one (anything else counts as `other`).
const STATUSES: [u16; 11] = [200, 400, 401, 404, 405, 408, 413, 415, 431, 500, 503];

/// The HTTP front end's counters (the engine counts verdicts itself).
#[derive(Default)]
pub struct Counters {
    responses: [AtomicU64; STATUSES.len() + 1],
    pub connections_open: AtomicU64,
    /// Connections refused because `MAX_CONNECTIONS` were open.
    pub connections_refused: AtomicU64,
    /// Introspection requests refused because `MAX_IN_FLIGHT` were being answered.
    pub requests_refused_busy: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Counters {
    pub fn response(&self, status: u16) {
        let i = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len());
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn responses(&self, status: u16) -> u64 {
        let i = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len());
        self.responses[i].load(Ordering::Relaxed)
    }
}

/// Everything one scrape shows.
pub struct View<'a> {
    pub stats: &'a Snapshot,
    pub breakers: &'a [HostView],
    pub cache_entries: u64,
    pub counters: &'a Counters,
}

pub fn render(v: &View<'_>) -> String {
    let mut out = String::with_capacity(4096);
    let s = v.stats;
    let mut m = Metrics(&mut out);
    m.one("dovecot_oauth2_accepted_total", "counter", "Tokens accepted.", s.accepted);
    m.labelled(
        "dovecot_oauth2_rejected_total",
        "counter",
        "Tokens refused, by reason.",
        "reason",
        s.rejected_by.iter().map(|(k, v)| (k.to_string(), *v)),
    );
    m.labelled(
        "dovecot_oauth2_tempfail_total",
        "counter",
        "Requests answered with a temporary failure (no verdict now), by reason.",
        "reason",
        s.tempfail_by.iter().map(|(k, v)| (k.to_string(), *v)),
    );
    m.one("dovecot_oauth2_cache_hits_total", "counter", "Verdicts answered from the cache.", s.cache_hits);
    m.one(
        "dovecot_oauth2_cache_misses_total",
        "counter",
        "Verdicts that needed the provider or a local check.",
        s.cache_misses,
    );
    m.one(
        "dovecot_oauth2_stale_used_total",
        "counter",
        "Stale acceptances used while the provider could not answer (stale_if_error_secs).",
        s.stale_used,
    );
    m.one("dovecot_oauth2_cache_entries", "gauge", "Verdicts in the cache.", v.cache_entries);
    m.one("dovecot_oauth2_provider_requests_total", "counter", "HTTP requests to the provider.", s.provider_requests);
    m.one(
        "dovecot_oauth2_provider_failures_total",
        "counter",
        "Provider requests without a usable answer (no answer, timeout, 5xx, 429, redirect).",
        s.provider_failures,
    );
    m.histogram(
        "dovecot_oauth2_provider_request_duration_seconds",
        "Duration of provider requests.",
        &s.provider_latency,
        s.provider_micros_total,
    );
    m.labelled(
        "dovecot_oauth2_breaker_open",
        "gauge",
        "1 while the circuit breaker of a provider host is open (requests fail at once), else 0.",
        "host",
        v.breakers.iter().map(|h| (h.host.clone(), u64::from(matches!(h.state, BreakerState::Open { .. })))),
    );
    m.labelled(
        "dovecot_oauth2_breaker_consecutive_failures",
        "gauge",
        "Consecutive failures of a provider host.",
        "host",
        v.breakers.iter().map(|h| (h.host.clone(), u64::from(h.failures))),
    );
    let c = v.counters;
    let mut by_status: Vec<(String, u64)> =
        STATUSES.iter().map(|&st| (st.to_string(), c.responses(st))).filter(|(_, n)| *n > 0).collect();
    let other = c.responses[STATUSES.len()].load(Ordering::Relaxed);
    if other > 0 {
        by_status.push(("other".into(), other));
    }
    m.labelled("dovecot_oauth2d_http_responses_total", "counter", "HTTP responses, by status.", "code", by_status);
    m.one(
        "dovecot_oauth2d_connections_open",
        "gauge",
        "Client connections open.",
        c.connections_open.load(Ordering::Relaxed),
    );
    m.one(
        "dovecot_oauth2d_connections_refused_total",
        "counter",
        "Connections refused because too many were open.",
        c.connections_refused.load(Ordering::Relaxed),
    );
    m.one(
        "dovecot_oauth2d_requests_refused_busy_total",
        "counter",
        "Introspection requests refused (503) because too many were in flight.",
        c.requests_refused_busy.load(Ordering::Relaxed),
    );
    m.labelled(
        "dovecot_oauth2d_reloads_total",
        "counter",
        "Settings reloads (SIGHUP), by result.",
        "result",
        [
            ("ok".to_string(), c.reloads_ok.load(Ordering::Relaxed)),
            ("failed".to_string(), c.reloads_failed.load(Ordering::Relaxed)),
        ],
    );
    out
}

struct Metrics<'a>(&'a mut String);

impl Metrics<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.head(name, kind, help);
        for (l, v) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {v}", label_value(&l));
        }
    }

    fn histogram(&mut self, name: &str, help: &str, buckets: &[u64], micros_total: u64) {
        self.head(name, "histogram", help);
        let mut cumulative = 0;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = match PROVIDER_LATENCY_BUCKETS_MS.get(i) {
                Some(ms) => (*ms as f64 / 1000.0).to_string(),
                None => "+Inf".into(),
            };
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(self.0, "{name}_sum {}", micros_total as f64 / 1e6);
        let _ = writeln!(self.0, "{name}_count {cumulative}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn render_with(stats: &Snapshot, breakers: &[HostView], counters: &Counters) -> String {
        render(&View { stats, breakers, cache_entries: 7, counters })
    }

    /// The value of one sample line, by its name and labels as written.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn every_family_has_help_and_type_and_every_sample_a_family() {
        let mut s = Snapshot::default();
        s.rejected_by.insert("wrong_user", 2);
        let text = render_with(&s, &[], &Counters::default());
        let mut families = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                families.insert(name.to_string());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, suf| n.strip_suffix(suf).unwrap_or(n));
                assert!(families.contains(name) || families.contains(base), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn verdict_cache_and_provider_counters_are_shown() {
        let s = Snapshot { accepted: 3, cache_hits: 2, cache_misses: 1, provider_requests: 1, ..Snapshot::default() };
        let text = render_with(&s, &[], &Counters::default());
        assert_eq!(sample(&text, "dovecot_oauth2_accepted_total").as_deref(), Some("3"));
        assert_eq!(sample(&text, "dovecot_oauth2_cache_hits_total").as_deref(), Some("2"));
        assert_eq!(sample(&text, "dovecot_oauth2_cache_misses_total").as_deref(), Some("1"));
        assert_eq!(sample(&text, "dovecot_oauth2_provider_requests_total").as_deref(), Some("1"));
        assert_eq!(sample(&text, "dovecot_oauth2_cache_entries").as_deref(), Some("7"));
    }

    #[test]
    fn rejections_and_temporary_failures_are_labelled_by_reason() {
        let mut s = Snapshot::default();
        s.rejected_by.insert("wrong_user", 2);
        s.rejected_by.insert("inactive", 1);
        s.tempfail_by.insert("timeout", 4);
        let text = render_with(&s, &[], &Counters::default());
        assert_eq!(sample(&text, r#"dovecot_oauth2_rejected_total{reason="wrong_user"}"#).as_deref(), Some("2"));
        assert_eq!(sample(&text, r#"dovecot_oauth2_rejected_total{reason="inactive"}"#).as_deref(), Some("1"));
        assert_eq!(sample(&text, r#"dovecot_oauth2_tempfail_total{reason="timeout"}"#).as_deref(), Some("4"));
    }

    #[test]
    fn the_latency_histogram_is_cumulative_with_sum_and_count() {
        let st = crate::stats::Stats::new(Duration::ZERO, crate::clock::Clock::manual());
        st.provider_request(Duration::from_micros(1500), false);
        st.provider_request(Duration::from_millis(40), false);
        st.provider_request(Duration::from_secs(30), true);
        let text = render_with(&st.snapshot(), &[], &Counters::default());
        let name = "dovecot_oauth2_provider_request_duration_seconds";
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"0.001\"}}")).as_deref(), Some("0"));
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"0.002\"}}")).as_deref(), Some("1"));
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"0.05\"}}")).as_deref(), Some("2"));
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"10\"}}")).as_deref(), Some("2"));
        assert_eq!(sample(&text, &format!("{name}_bucket{{le=\"+Inf\"}}")).as_deref(), Some("3"));
        assert_eq!(sample(&text, &format!("{name}_count")).as_deref(), Some("3"));
        assert_eq!(sample(&text, &format!("{name}_sum")).as_deref(), Some("30.0415"));
    }

    #[test]
    fn breaker_state_is_shown_per_host_with_escaped_labels() {
        let hosts = [
            HostView {
                host: "idp:443".into(),
                failures: 5,
                state: BreakerState::Open { retry_in: Duration::from_secs(3) },
            },
            HostView { host: "we\"ird\\".into(), failures: 1, state: BreakerState::Closed },
        ];
        let text = render_with(&Snapshot::default(), &hosts, &Counters::default());
        assert_eq!(sample(&text, r#"dovecot_oauth2_breaker_open{host="idp:443"}"#).as_deref(), Some("1"));
        assert_eq!(
            sample(&text, r#"dovecot_oauth2_breaker_consecutive_failures{host="idp:443"}"#).as_deref(),
            Some("5")
        );
        assert_eq!(sample(&text, r#"dovecot_oauth2_breaker_open{host="we\"ird\\"}"#).as_deref(), Some("0"));
    }

    #[test]
    fn http_responses_are_counted_by_status() {
        let c = Counters::default();
        c.response(401);
        c.response(401);
        c.response(200);
        c.response(418);
        let text = render_with(&Snapshot::default(), &[], &c);
        assert_eq!(sample(&text, r#"dovecot_oauth2d_http_responses_total{code="401"}"#).as_deref(), Some("2"));
        assert_eq!(sample(&text, r#"dovecot_oauth2d_http_responses_total{code="200"}"#).as_deref(), Some("1"));
        assert_eq!(sample(&text, r#"dovecot_oauth2d_http_responses_total{code="other"}"#).as_deref(), Some("1"));
        assert_eq!(sample(&text, r#"dovecot_oauth2d_reloads_total{result="ok"}"#).as_deref(), Some("0"));
    }
}
