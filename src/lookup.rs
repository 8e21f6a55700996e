//! One login: token checks, cache, provider or local JWT validation, rules. Built once per process
//! from [`Settings`]; `verify` is the per-request path.

use crate::breaker::HostView;
use crate::cache::{Entry, Key, Source, VerdictCache};
use crate::claims::{self, Introspection, Login};
use crate::clock::Clock;
use crate::config::{IntrospectionMode, Settings};
use crate::errors::{AuthError, ConfigError, Rejection, Unavailable, Verdict};
use crate::http::Http;
use crate::jwks::KeyStore;
use crate::jwt::{self, Shape};
use crate::provider;
use crate::stats::{Snapshot, Stats};
use crate::token::{fingerprint, Fingerprint, Token};
use crate::trace;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Authenticator {
    settings: Settings,
    http: Http,
    cache: VerdictCache,
    /// Signing keys for `introspection_mode = local` (empty otherwise), fetched on first use.
    keys: KeyStore,
    stats: Arc<Stats>,
    clock: Clock,
}

/// A verdict with what an admin needs to understand it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    /// None when the token was refused before the cache (malformed, too large).
    pub source: Option<Source>,
    /// `sha256:xxxxxxxx` of the token: the only trace of it that may be logged.
    pub fingerprint: Fingerprint,
    pub elapsed: Duration,
    /// Checked in the module (local JWT validation) rather than by the provider.
    pub local: bool,
    /// Things worth a warning in the log that did not decide this login (a failed key refresh while
    /// older keys are still in use).
    pub warnings: Vec<String>,
    /// For an acceptance by [`Authenticator::introspect`]: what the introspection reply passes on.
    pub introspection: Option<Arc<Introspection>>,
}

impl Outcome {
    /// The log line for a refusal or a temporary failure; None for an acceptance.
    pub fn log_line(&self) -> Option<String> {
        let how = match self.source {
            Some(Source::Cache) => ", cached verdict",
            _ => "",
        };
        match &self.verdict {
            Verdict::Accept(_) => None,
            Verdict::Reject(r) => {
                Some(format!("dovecot-oauth2: authentication failed: {r} (token {}{how})", self.fingerprint))
            }
            Verdict::TempFail(u) => {
                Some(format!("dovecot-oauth2: temporary failure: {u} (token {})", self.fingerprint))
            }
        }
    }

    /// A debug line for an acceptance.
    pub fn accept_line(&self, user: &str) -> String {
        let how = match self.source {
            Some(Source::Cache) => "from cache".to_string(),
            Some(Source::Stale) => "from stale cache, provider unavailable".to_string(),
            _ if self.local => format!("checked locally in {} ms", self.elapsed.as_millis()),
            _ => format!("by provider in {} ms", self.elapsed.as_millis()),
        };
        format!("dovecot-oauth2: accepted {user} (token {}, {how})", self.fingerprint)
    }
}

/// What `verify_cached` found: the answer, or a login to `finish`.
pub enum FirstLook<'a> {
    Answered(Outcome),
    Pending(Pending<'a>),
}

/// A login the cache could not answer at once, with the work already done for it.
pub struct Pending<'a> {
    started: Instant,
    login: Login<'a>,
    raw_token: &'a [u8],
    /// The checked token and its cache key, or why the token was refused before the cache.
    prepared: Result<(Token<'a>, Key), (AuthError, Option<Source>)>,
}

/// What a login came to before it is counted and logged: the fields to export (and, for the token
/// alone, what the introspection reply passes on), or why not.
type Decided = Result<(Vec<(String, String)>, Option<Arc<Introspection>>, Source), (AuthError, Option<Source>)>;

fn verdict_of(entry: &Entry, source: Source) -> Decided {
    match &entry.verdict {
        Ok(identity) => Ok((identity.fields.clone(), identity.introspection.clone(), source)),
        Err(r) => Err((r.clone().into(), Some(source))),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Authenticator {
    pub fn new(settings: Settings) -> Result<Authenticator, ConfigError> {
        Authenticator::with_clock(settings, Clock::system())
    }

    /// With another clock: tests move a manual one instead of sleeping.
    pub fn with_clock(settings: Settings, clock: Clock) -> Result<Authenticator, ConfigError> {
        let stats = Arc::new(Stats::new(settings.stats_log_interval, clock.clone()));
        let http = Http::new(&settings, stats.clone(), clock.clone())?;
        let max_entries = if settings.cache_ttl.is_zero() { 0 } else { settings.cache_max_entries };
        let cache = VerdictCache::new(max_entries, clock.clone());
        let keys = KeyStore::new(&settings, clock.clone());
        Ok(Authenticator { settings, http, cache, keys, stats, clock })
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn stats(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// The counters line, when `stats_log_interval_secs` has passed since the last one.
    pub fn stats_due_line(&self) -> Option<String> {
        self.stats.due_line()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn cache(&self) -> &VerdictCache {
        &self.cache
    }

    pub async fn verify(&self, login_user: &str, raw_token: &[u8]) -> Outcome {
        self.finish(self.pending(Login::User(login_user), raw_token)).await
    }

    /// The daemon's path: checks `raw_token` with no login user (every rule but the user comparison)
    /// and, when accepted, returns in [`Outcome::introspection`] the token's user for Dovecot to
    /// compare. Cached under [`VerdictCache::token_key`], apart from `verify`'s (user, token) keys;
    /// concurrent calls for one new token share one provider request.
    pub async fn introspect(&self, raw_token: &[u8]) -> Outcome {
        self.finish(self.pending(Login::Token, raw_token)).await
    }

    /// The state of the circuit breaker of each provider host that failed lately (for metrics).
    pub fn breaker_view(&self) -> Vec<HostView> {
        self.http.breaker().view()
    }

    /// The warm path: a login answered by a fresh cache entry, without entering the runtime.
    /// Otherwise the login as far as it got (token checked, cache key computed), for `finish`.
    pub fn verify_cached<'a>(&self, login_user: &'a str, raw_token: &'a [u8]) -> FirstLook<'a> {
        let pending = self.pending(Login::User(login_user), raw_token);
        if let Ok((_, key)) = &pending.prepared {
            if let Some(entry) = self.cache.fresh(key) {
                return FirstLook::Answered(self.outcome(
                    pending.started,
                    raw_token,
                    verdict_of(&entry, Source::Cache),
                    Vec::new(),
                ));
            }
        }
        FirstLook::Pending(pending)
    }

    /// Completes a login `verify_cached` could not answer: cache, provider or local validation.
    pub async fn finish(&self, pending: Pending<'_>) -> Outcome {
        let Pending { started, login, raw_token, prepared } = pending;
        let mut warnings = Vec::new();
        let decided = match prepared {
            Ok((token, key)) => self.decide(login, raw_token, token, key, &mut warnings).await,
            Err(refused) => Err(refused),
        };
        self.outcome(started, raw_token, decided, warnings)
    }

    fn pending<'a>(&self, login: Login<'a>, raw_token: &'a [u8]) -> Pending<'a> {
        let started = Instant::now();
        let key = |raw| match login {
            Login::User(user) => VerdictCache::key(user, raw),
            Login::Token => VerdictCache::token_key(raw),
        };
        let prepared = Token::parse(raw_token, self.settings.max_token_bytes)
            .map(|token| (token, key(raw_token)))
            .map_err(|r| (r.into(), None));
        Pending { started, login, raw_token, prepared }
    }

    fn outcome(&self, started: Instant, raw_token: &[u8], decided: Decided, mut warnings: Vec<String>) -> Outcome {
        let (verdict, source, introspection) = match decided {
            Ok((fields, introspection, source)) => (Verdict::Accept(fields), Some(source), introspection),
            Err((e, source)) => (Verdict::from(Err(e)), source, None),
        };
        self.stats.login(&verdict, source);
        // JWT-shaped (two dots): enough for the debug line, without decoding the token again.
        let local = self.settings.introspection_mode == IntrospectionMode::Local
            && raw_token.iter().filter(|&&b| b == b'.').count() == 2;
        warnings.extend(self.keys.take_notes());
        Outcome {
            verdict,
            source,
            fingerprint: fingerprint(raw_token),
            elapsed: started.elapsed(),
            local,
            warnings,
            introspection,
        }
    }

    async fn decide(
        &self,
        login: Login<'_>,
        raw: &[u8],
        token: Token<'_>,
        key: Key,
        warnings: &mut Vec<String>,
    ) -> Decided {
        trace::note(|| {
            let shape = if token.looks_like_jwt() { "JWT-shaped" } else { "opaque" };
            format!("token: {} bytes, {shape}, {}", raw.len(), fingerprint(raw))
        });
        let (entry, source, stale_because) = self
            .cache
            .get_or_load(key, self.load(login, token))
            .await
            .map_err(|u| (u.into(), Some(Source::Provider)))?;
        if let Some(why) = stale_because {
            warnings.push(format!(
                "accepted on an earlier verdict ({} s old, stale_if_error_secs) because {why}",
                self.clock.since(entry.created).as_secs()
            ));
        }
        trace::note(|| match source {
            Source::Cache => format!("cache: hit, verdict {} s old", self.clock.since(entry.created).as_secs()),
            Source::Stale => "cache: stale acceptance used, provider unavailable".into(),
            Source::Provider => format!("cache: miss; verdict kept {} s", entry.ttl.as_secs()),
        });
        verdict_of(&entry, source)
    }

    /// Validates the token locally or asks the provider, applies the rules, and decides how long the
    /// verdict may be reused.
    async fn load(&self, login: Login<'_>, token: Token<'_>) -> Result<Entry, Unavailable> {
        let s = &self.settings;
        let created = self.clock.now();
        let negative = |r: Rejection| Ok(Entry::new(Err(r), s.cache_negative_ttl, Duration::ZERO, created));
        let now = self.clock.unix();
        let checked = if s.introspection_mode == IntrospectionMode::Local {
            match jwt::shape(token.as_str()) {
                Shape::Jwt(Ok(parsed)) => Some(jwt::validate(&self.keys, &self.http, s, &parsed, login, now).await),
                Shape::Jwt(Err(r)) => return negative(r),
                // Opaque tokens: only a provider can say what they are.
                Shape::Opaque(_) if s.introspection_url.is_some() || s.tokeninfo_url.is_some() => None,
                Shape::Opaque(Some(why)) => return negative(Rejection::Malformed(why)),
                Shape::Opaque(None) => return negative(Rejection::Opaque),
            }
        } else {
            None
        };
        let checked = match checked {
            Some(local) => local,
            None => match provider::fetch_claims(&self.http, s, token).await {
                Ok(claims) => {
                    trace::note(|| describe_claims(s, &claims, now));
                    claims::check_login(s, &claims, login, now).map_err(AuthError::from)
                }
                Err(e) => Err(e),
            },
        };
        match checked {
            Err(AuthError::Unavailable(u)) => Err(u),
            Err(AuthError::Rejected(r)) => negative(r),
            Ok(identity) => {
                // Never reuse an acceptance past the token's own expiry, stale or not.
                let exp = identity.expires_at.or_else(|| token.unverified_jwt_exp());
                let (ttl, stale) = match exp {
                    Some(exp) => {
                        let left = Duration::from_secs(exp.saturating_sub(now));
                        let ttl = s.cache_ttl.min(left);
                        (ttl, s.stale_if_error.min(left - ttl))
                    }
                    None => (s.cache_ttl, s.stale_if_error),
                };
                Ok(Entry::new(Ok(identity), ttl, stale, created))
            }
        }
    }
}

/// The claims that decide a login, for the troubleshooting trace (values a token's owner may see
/// in their own token; never the token).
fn describe_claims(s: &Settings, claims: &claims::Claims, now: u64) -> String {
    let mut parts = vec![format!(
        "{} = {}",
        s.username_attribute,
        claims::claim_text(claims, &s.username_attribute).unwrap_or_else(|| "(missing)".into())
    )];
    for name in ["active", "scope", "aud", "iss"] {
        if let Some(v) = claims::claim_text(claims, name) {
            parts.push(format!("{name} = {v}"));
        }
    }
    if let Some(exp) = claims.get("exp").and_then(|v| v.as_u64()) {
        parts.push(if exp > now { format!("exp in {} s", exp - now) } else { format!("exp {} s ago", now - exp) });
    }
    if let Some(a) = &s.active_attribute {
        parts.push(format!("{a} = {}", claims::claim_text(claims, a).unwrap_or_else(|| "(missing)".into())));
    }
    format!("provider claims: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Canned, TestServer};
    use std::path::Path;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn auth(extra: &str, url: &str) -> Authenticator {
        let text = format!("introspection_url = {url}\n{extra}");
        Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap()
    }

    #[test]
    fn userinfo_reply_with_the_login_users_email_accepts() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"alice@example.test","sub":"1"}"#)).await;
            let a = auth("", &srv.url("/userinfo"));
            let o = a.verify("alice@example.test", b"tok-1").await;
            assert_eq!(o.verdict, Verdict::Accept(vec![]));
            let req = srv.requests().pop().unwrap();
            assert!(
                req.contains("authorization: Bearer tok-1") || req.contains("Authorization: Bearer tok-1"),
                "{req}"
            );
        });
    }

    #[test]
    fn cache_fast_path_answers_only_fresh_entries_and_like_the_full_path() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"alice@example.test"}"#)).await;
            let a = auth("", &srv.url("/userinfo"));
            assert!(
                matches!(a.verify_cached("alice@example.test", b"tok-1"), FirstLook::Pending(_)),
                "nothing cached yet"
            );
            let first = a.verify("alice@example.test", b"tok-1").await;
            let FirstLook::Answered(fast) = a.verify_cached("alice@example.test", b"tok-1") else {
                panic!("a cache hit")
            };
            assert_eq!((fast.verdict, fast.source), (first.verdict, Some(Source::Cache)));
            assert!(
                matches!(a.verify_cached("bob@example.test", b"tok-1"), FirstLook::Pending(_)),
                "the key binds the user"
            );
            assert!(
                matches!(a.verify_cached("alice@example.test", b"bad token"), FirstLook::Pending(_)),
                "malformed: full path"
            );
            assert_eq!(srv.requests().len(), 1);
            assert_eq!((a.stats().accepted, a.stats().cache_hits), (2, 1));
        });
    }

    #[test]
    fn userinfo_401_rejects_and_the_log_line_hides_the_token() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(401, "{}")).await;
            let a = auth("", &srv.url("/userinfo"));
            let o = a.verify("alice@example.test", b"secret-token").await;
            assert_eq!(o.verdict, Verdict::Reject(Rejection::ProviderRefused(401)));
            let line = o.log_line().unwrap();
            assert!(!line.contains("secret-token") && line.contains("sha256:"), "{line}");
        });
    }

    #[test]
    fn provider_5xx_is_a_temporary_failure() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(503, "{}")).await;
            let o = auth("", &srv.url("/userinfo")).verify("a@x", b"t").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::Status { status: 503, .. })));
        });
    }

    #[test]
    fn unreachable_provider_is_a_temporary_failure() {
        rt().block_on(async {
            let port = TestServer::closed_port();
            let o = auth("", &format!("http://127.0.0.1:{port}/userinfo")).verify("a@x", b"t").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::Unreachable { .. })), "{:?}", o.verdict);
        });
    }

    #[test]
    fn slow_provider_times_out_as_a_temporary_failure() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, "{}").delayed(Duration::from_millis(2000))).await;
            let started = Instant::now();
            let o = auth("timeout_msecs = 300\n", &srv.url("/userinfo")).verify("a@x", b"t").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::Timeout { .. })), "{:?}", o.verdict);
            assert!(started.elapsed() < Duration::from_millis(1500));
        });
    }

    #[test]
    fn oversized_reply_is_a_temporary_failure() {
        rt().block_on(async {
            let big = format!("{{\"email\":\"a@x\",\"pad\":\"{}\"}}", "x".repeat(4096));
            let srv = TestServer::start(Canned::json(200, &big)).await;
            let o = auth("max_response_bytes = 1024\n", &srv.url("/u")).verify("a@x", b"t").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::BadReply { .. })), "{:?}", o.verdict);
        });
    }

    #[test]
    fn cached_acceptance_survives_the_provider_going_down() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#)).await;
            let a = auth("", &srv.url("/u"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::Accept(_)));
            srv.stop().await;
            let o = a.verify("a@x", b"t").await;
            assert!(matches!(o.verdict, Verdict::Accept(_)));
            assert_eq!(o.source, Some(Source::Cache));
            assert!(matches!(a.verify("a@x", b"other").await.verdict, Verdict::TempFail(_)));
        });
    }

    #[test]
    fn cached_acceptance_is_per_user() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#)).await;
            let a = auth("", &srv.url("/u"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::Accept(_)));
            assert!(matches!(a.verify("b@x", b"t").await.verdict, Verdict::Reject(Rejection::WrongUser { .. })));
        });
    }

    #[test]
    fn rejection_is_cached_for_the_negative_ttl_only() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(401, "{}")).await;
            let a = auth("cache_negative_ttl_secs = 1\n", &srv.url("/u"));
            a.verify("a@x", b"t").await;
            a.verify("a@x", b"t").await;
            assert_eq!(srv.requests().len(), 1);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            a.verify("a@x", b"t").await;
            assert_eq!(srv.requests().len(), 2);
        });
    }

    #[test]
    fn acceptance_is_not_cached_past_the_tokens_exp() {
        rt().block_on(async {
            let exp = unix_now() + 1;
            let srv =
                TestServer::start(Canned::json(200, &format!(r#"{{"email":"a@x","exp":{exp},"active":true}}"#))).await;
            let a = auth("introspection_mode = post\nleeway_secs = 0\n", &srv.url("/i"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::Accept(_)));
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let o = a.verify("a@x", b"t").await;
            assert_eq!(o.source, Some(Source::Provider));
            assert!(matches!(o.verdict, Verdict::Reject(Rejection::Expired(_))), "{:?}", o.verdict);
        });
    }

    #[test]
    fn post_mode_sends_rfc7662_form_with_client_credentials() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"active":true,"email":"a@x"}"#)).await;
            let a = auth(
                "introspection_mode = post\nclient_id = dovecot\nclient_secret = s3cret\n",
                &srv.url("/introspect"),
            );
            assert!(matches!(a.verify("a@x", b"tok+/=").await.verdict, Verdict::Accept(_)));
            let req = srv.requests().pop().unwrap();
            assert!(req.starts_with("POST /introspect"), "{req}");
            assert!(
                req.to_lowercase().contains("authorization: basic ZG92ZWNvdDpzM2NyZXQ=".to_lowercase().as_str()),
                "{req}"
            );
            assert!(req.ends_with("token=tok%2B%2F%3D&token_type_hint=access_token"), "{req}");
        });
    }

    #[test]
    fn failing_provider_opens_the_circuit_then_logins_fail_fast_and_cached_tokens_still_work() {
        rt().block_on(async {
            let srv = TestServer::routes(&[("/u", Canned::json(200, r#"{"email":"a@x"}"#))]).await;
            let a = auth("circuit_breaker_failures = 2\ncircuit_breaker_backoff_secs = 1\n", &srv.url("/u"));
            assert!(matches!(a.verify("a@x", b"cached").await.verdict, Verdict::Accept(_)));
            srv.set("/u", Canned::json(503, "{}"));
            assert!(matches!(a.verify("a@x", b"t1").await.verdict, Verdict::TempFail(Unavailable::Status { .. })));
            assert!(matches!(a.verify("a@x", b"t2").await.verdict, Verdict::TempFail(Unavailable::Status { .. })));
            let o = a.verify("a@x", b"t3").await;
            assert!(
                matches!(o.verdict, Verdict::TempFail(Unavailable::CircuitOpen { failures: 2, .. })),
                "{:?}",
                o.verdict
            );
            assert_eq!(srv.count("/u"), 3, "no request while the circuit is open");
            assert!(matches!(a.verify("a@x", b"cached").await.verdict, Verdict::Accept(_)));
            // It recovers by itself: after the back-off one probe goes through and closes it.
            srv.set("/u", Canned::json(200, r#"{"email":"a@x"}"#));
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert!(matches!(a.verify("a@x", b"t4").await.verdict, Verdict::Accept(_)));
            assert!(matches!(a.verify("a@x", b"t5").await.verdict, Verdict::Accept(_)));
        });
    }

    #[test]
    fn provider_rejections_do_not_open_the_circuit() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(401, "{}")).await;
            let a = auth("circuit_breaker_failures = 2\n", &srv.url("/u"));
            for t in [&b"t1"[..], b"t2", b"t3", b"t4"] {
                assert!(matches!(a.verify("a@x", t).await.verdict, Verdict::Reject(_)));
            }
            assert_eq!(srv.requests().len(), 4);
        });
    }

    #[test]
    fn stale_if_error_accepts_an_expired_cache_entry_only_while_the_provider_cannot_answer() {
        rt().block_on(async {
            let srv = TestServer::routes(&[("/u", Canned::json(200, r#"{"email":"a@x"}"#))]).await;
            let a =
                auth("cache_ttl_secs = 1\nstale_if_error_secs = 600\ncircuit_breaker_failures = 0\n", &srv.url("/u"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::Accept(_)));
            tokio::time::sleep(Duration::from_millis(1100)).await;
            srv.set("/u", Canned::json(503, "{}"));
            let o = a.verify("a@x", b"t").await;
            assert!(matches!(o.verdict, Verdict::Accept(_)), "{:?}", o.verdict);
            assert_eq!(o.source, Some(Source::Stale));
            assert!(o.warnings.iter().any(|w| w.contains("stale_if_error_secs")), "{:?}", o.warnings);
            // When the provider answers again, its answer wins (here: revoked).
            srv.set("/u", Canned::json(401, "{}"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::Reject(Rejection::ProviderRefused(401))));
        });
    }

    #[test]
    fn without_stale_if_error_an_expired_cache_entry_is_a_temporary_failure_when_the_provider_is_down() {
        rt().block_on(async {
            let srv = TestServer::routes(&[("/u", Canned::json(200, r#"{"email":"a@x"}"#))]).await;
            let a = auth("cache_ttl_secs = 1\n", &srv.url("/u"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::Accept(_)));
            tokio::time::sleep(Duration::from_millis(1100)).await;
            srv.set("/u", Canned::json(503, "{}"));
            assert!(matches!(a.verify("a@x", b"t").await.verdict, Verdict::TempFail(_)));
        });
    }

    #[test]
    fn counters_follow_verdicts_cache_and_provider_requests() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#)).await;
            let a = auth("", &srv.url("/u"));
            a.verify("a@x", b"t").await;
            a.verify("a@x", b"t").await;
            a.verify("b@x", b"t").await;
            let s = a.stats();
            assert_eq!((s.accepted, s.rejected, s.cache_hits, s.cache_misses, s.provider_requests), (2, 1, 1, 2, 2));
            assert_eq!(s.rejected_by.get("wrong_user"), Some(&1));
        });
    }

    #[test]
    fn a_traced_login_notes_endpoint_status_claims_and_cache_but_never_the_token() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x","scope":"mail"}"#)).await;
            let a = auth("", &srv.url("/u"));
            let (o, steps) = crate::trace::traced(a.verify("a@x", b"secret-tok")).await;
            assert!(matches!(o.verdict, Verdict::Accept(_)));
            let all = steps.join("\n");
            assert!(all.contains("GET http://127.0.0.1:") && all.contains("-> HTTP 200"), "{all}");
            assert!(all.contains("email = a@x") && all.contains("scope = mail"), "{all}");
            assert!(all.contains("cache: miss"), "{all}");
            assert!(!all.contains("secret-tok"), "{all}");
        });
    }

    #[test]
    fn a_pooled_connection_the_provider_closed_between_logins_is_retried_on_a_new_one() {
        use std::io::{BufRead, BufReader, Write};
        // A provider on a plain thread that closes each kept-alive connection shortly after answering,
        // while this process's runtime is idle (as between two logins in an auth-worker).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(3) {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let body = r#"{"email":"a@x"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                std::thread::sleep(Duration::from_millis(50));
                drop(conn);
            }
        });
        let text = format!("introspection_url = http://127.0.0.1:{port}/u\n");
        let engine = crate::Engine::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
        assert!(matches!(engine.verify("a@x", b"t1").verdict, Verdict::Accept(_)));
        std::thread::sleep(Duration::from_millis(200));
        let o = engine.verify("a@x", b"t2");
        assert!(matches!(o.verdict, Verdict::Accept(_)), "{:?}", o.verdict);
    }

    #[test]
    fn malformed_token_never_reaches_the_provider() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#)).await;
            let a = auth("", &srv.url("/u"));
            let o = a.verify("a@x", b"bad token\0").await;
            assert!(matches!(o.verdict, Verdict::Reject(Rejection::Malformed(_))));
            assert!(srv.requests().is_empty());
        });
    }

    #[test]
    fn introspect_accepts_a_token_alone_and_returns_its_user_scope_and_exp() {
        rt().block_on(async {
            let exp = unix_now() + 600;
            let reply = format!(r#"{{"email":"Alice@Example.TEST","scope":"openid mail","exp":{exp}}}"#);
            let srv = TestServer::start(Canned::json(200, &reply)).await;
            let a = auth("", &srv.url("/u"));
            let o = a.introspect(b"tok-1").await;
            assert_eq!((o.verdict, o.source), (Verdict::Accept(vec![]), Some(Source::Provider)));
            let i = o.introspection.expect("introspection");
            assert_eq!((&*i.username, i.scope.as_deref()), ("alice@example.test", Some("openid mail")));
            assert_eq!(a.introspect(b"tok-1").await.source, Some(Source::Cache));
            assert_eq!(srv.requests().len(), 1);
        });
    }

    #[test]
    fn introspect_refuses_what_the_provider_refuses_and_carries_nothing() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(401, "{}")).await;
            let o = auth("", &srv.url("/u")).introspect(b"tok").await;
            assert_eq!(o.verdict, Verdict::Reject(Rejection::ProviderRefused(401)));
            assert!(o.introspection.is_none());
        });
    }

    #[test]
    fn a_token_alone_verdict_is_never_served_to_a_login_nor_a_logins_to_the_token_alone() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#)).await;
            let a = auth("", &srv.url("/u"));
            assert!(matches!(a.introspect(b"t").await.verdict, Verdict::Accept(_)));
            let o = a.verify("b@x", b"t").await;
            assert_eq!(o.source, Some(Source::Provider), "not the daemon's cached acceptance");
            assert!(matches!(o.verdict, Verdict::Reject(Rejection::WrongUser { .. })));
            let o = a.verify("a@x", b"t2").await;
            assert!(o.introspection.is_none(), "a login's acceptance carries no introspection");
            let o = a.introspect(b"t2").await;
            assert_eq!(o.source, Some(Source::Provider), "not the login's cached acceptance");
            assert!(o.introspection.is_some());
            assert_eq!(srv.requests().len(), 4);
        });
    }

    #[test]
    fn concurrent_introspections_of_one_new_token_make_one_provider_request() {
        rt().block_on(async {
            let srv =
                TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#).delayed(Duration::from_millis(100))).await;
            let a = auth("", &srv.url("/u"));
            let all = futures_util::future::join_all((0..8).map(|_| a.introspect(b"shared")));
            assert!(all.await.iter().all(|o| matches!(o.verdict, Verdict::Accept(_))));
            assert_eq!(srv.requests().len(), 1);
        });
    }

    #[test]
    fn pass_attrs_are_returned_with_the_acceptance() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"a@x","quota":"2G"}"#)).await;
            let a = auth("pass_attrs = userdb_quota_rule=*:storage=%{oauth2:quota} proxy=y\n", &srv.url("/u"));
            let o = a.verify("a@x", b"t").await;
            assert_eq!(
                o.verdict,
                Verdict::Accept(vec![
                    ("userdb_quota_rule".into(), "*:storage=2G".into()),
                    ("proxy".into(), "y".into())
                ])
            );
        });
    }
}
