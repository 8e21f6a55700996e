//! PLAIN/LOGIN passwords (issue 12): an IdP app password or password, checked with the password grant
//! at the provider's token endpoint; the token it returns is then checked exactly like an XOAUTH2
//! token, identity included. Optionally (`accept_token_as_password`) a password that is itself an
//! access token is checked as one.
//!
//! This path receives real passwords, so:
//! - verdicts are cached under HMAC-SHA256 with a key drawn at random when the process starts (useless
//!   outside it, unlike a plain hash of a password); acceptances for `password_cache_ttl_secs`, never
//!   past the returned token's expiry; refusals for `password_cache_negative_ttl_secs`, so one
//!   (user, password) costs at most one provider request per negative TTL;
//! - each login user gets at most `password_max_requests_per_minute` provider requests in any 60 s per
//!   process (then a temporary failure), so guessing cannot turn the module into an amplifier;
//! - the password is borrowed from the request and copied only into the grant's form body, which is
//!   wiped when sent; it is never logged or traced, and no hash of it is written anywhere.

use crate::cache::{Entry, Key, Source, VerdictCache};
use crate::clock::Clock;
use crate::config::Settings;
use crate::errors::{AuthError, ConfigError, Rejection, Unavailable, Verdict};
use crate::grant::{self, TokenEndpoint};
use crate::lookup::{Authenticator, Outcome};
use crate::token::Token;
use crate::trace;
use aws_lc_rs::hmac;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Passwords longer than this are refused without asking anyone (app passwords are 16-64 characters).
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// The window of `password_max_requests_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How many users' request windows are remembered (least used forgotten first).
const RATE_USERS: usize = 10_000;

/// What a password login came to before it is counted: the fields to export, or why not.
type Decided = Result<(Vec<(String, String)>, Source), (AuthError, Option<Source>)>;

/// Which check a password went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The password grant at the token endpoint.
    Grant,
    /// The password is an access token (`accept_token_as_password`).
    Token,
}

/// A password login's verdict and what an admin needs to understand it (never the password).
#[derive(Debug, Clone)]
pub struct PasswordOutcome {
    pub verdict: Verdict,
    pub source: Option<Source>,
    pub route: Route,
    pub elapsed: Duration,
    pub warnings: Vec<String>,
}

impl PasswordOutcome {
    fn how(&self) -> &'static str {
        match (self.route, self.source) {
            (Route::Token, Some(Source::Cache)) => "password used as a token, cached verdict",
            (Route::Token, _) => "password used as a token",
            (Route::Grant, Some(Source::Cache)) => "password grant, cached verdict",
            (Route::Grant, _) => "password grant",
        }
    }

    /// The log line for a refusal or a temporary failure; None for an acceptance.
    pub fn log_line(&self) -> Option<String> {
        match &self.verdict {
            Verdict::Accept(_) => None,
            Verdict::Reject(r) => Some(format!("dovecot-oauth2: authentication failed: {r} ({})", self.how())),
            Verdict::TempFail(u) => Some(format!("dovecot-oauth2: temporary failure: {u} ({})", self.how())),
        }
    }

    /// A debug line for an acceptance.
    pub fn accept_line(&self, user: &str) -> String {
        let when = match self.source {
            Some(Source::Cache) => "from cache".to_string(),
            _ => format!("by provider in {} ms", self.elapsed.as_millis()),
        };
        let what = match self.route {
            Route::Grant => "password grant",
            Route::Token => "password used as a token",
        };
        format!("dovecot-oauth2: accepted {} ({what}, {when})", crate::escape::shown(user))
    }

    fn from_token(o: Outcome) -> PasswordOutcome {
        PasswordOutcome {
            verdict: o.verdict,
            source: o.source,
            route: Route::Token,
            elapsed: o.elapsed,
            warnings: o.warnings,
        }
    }
}

/// The password path's state, one per process next to the [`Authenticator`].
pub struct PasswordCheck {
    /// Drawn at random when the process starts; never leaves it.
    key: hmac::Key,
    verdicts: VerdictCache,
    limiter: RateBound,
    endpoint: TokenEndpoint,
    clock: Clock,
}

impl PasswordCheck {
    pub fn new(s: &Settings, clock: Clock) -> Result<PasswordCheck, ConfigError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new()).map_err(|_| {
            ConfigError::Incomplete { path: s.path.clone(), reason: "no random key for the password cache".into() }
        })?;
        let ttls_zero = s.password_cache_ttl.is_zero() && s.password_cache_negative_ttl.is_zero();
        let max_entries = if ttls_zero { 0 } else { s.cache_max_entries };
        Ok(PasswordCheck {
            key,
            verdicts: VerdictCache::new(max_entries, clock.clone()),
            limiter: RateBound::new(s.password_max_requests_per_minute, clock.clone()),
            endpoint: TokenEndpoint::new(s, clock.clone()),
            clock,
        })
    }

    /// The cache key of (user, password): HMAC-SHA256 under this process's key, so it says nothing
    /// about the password to anyone without the key (a plain hash could be checked against guesses).
    pub fn key(&self, user: &str, password: &[u8]) -> Key {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"dovecot-oauth2 password\0");
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The key of a login user's request window (a different message than any password key).
    fn user_key(&self, s: &Settings, user: &str) -> Key {
        let user = s.username_format.apply(user);
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"dovecot-oauth2 user\0");
        ctx.update(user.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The warm path: a fresh cached verdict for this grant login, without entering the runtime.
    /// None when the login must go on to [`PasswordCheck::verify`] (the token route has its own).
    pub fn cached(&self, auth: &Authenticator, user: &str, password: &[u8]) -> Option<PasswordOutcome> {
        let s = auth.settings();
        if route(s, password)? != Route::Grant || check_input(user, password).is_err() {
            return None;
        }
        let started = Instant::now();
        let entry = self.verdicts.fresh(&self.key(user, password))?;
        let verdict = match &entry.verdict {
            Ok(identity) => Verdict::Accept(identity.fields.clone()),
            Err(r) => Verdict::Reject(r.clone()),
        };
        auth.record_login(&verdict, Some(Source::Cache));
        Some(PasswordOutcome {
            verdict,
            source: Some(Source::Cache),
            route: Route::Grant,
            elapsed: started.elapsed(),
            warnings: Vec::new(),
        })
    }

    /// Checks one PLAIN/LOGIN password for `user`.
    pub async fn verify(&self, auth: &Authenticator, user: &str, password: &[u8]) -> PasswordOutcome {
        let started = Instant::now();
        let s = auth.settings();
        let Some(route) = route(s, password) else {
            let why = "PLAIN/LOGIN passwords are not checked: set use_grant_password = yes (or \
                       accept_token_as_password = yes), or take plain and login out of this passdb's mechanisms";
            return self.finish(auth, started, Route::Grant, Err((Unavailable::PasswordsOff(why).into(), None)));
        };
        if route == Route::Token {
            trace::note(|| "password: shaped like a token, checked as one (accept_token_as_password)".into());
            return PasswordOutcome::from_token(auth.verify(user, password).await);
        }
        if let Err(r) = check_input(user, password) {
            return self.finish(auth, started, route, Err((r.into(), None)));
        }
        let key = self.key(user, password);
        let decided = match self.verdicts.get_or_load(key, |_| self.load(auth, user, password)).await {
            Ok((entry, source, _)) => {
                trace::note(|| match source {
                    Source::Provider => format!("password cache: miss; verdict kept {} s", entry.ttl.as_secs()),
                    _ => format!("password cache: hit, verdict {} s old", self.clock.since(entry.created).as_secs()),
                });
                match &entry.verdict {
                    Ok(identity) => Ok((identity.fields.clone(), source)),
                    Err(r) => Err((r.clone().into(), Some(source))),
                }
            }
            Err(u) => Err((u.into(), Some(Source::Provider))),
        };
        self.finish(auth, started, route, decided)
    }

    fn finish(&self, auth: &Authenticator, started: Instant, route: Route, decided: Decided) -> PasswordOutcome {
        let (verdict, source) = match decided {
            Ok((fields, source)) => (Verdict::Accept(fields), Some(source)),
            Err((e, source)) => (Verdict::from(Err(e)), source),
        };
        auth.record_login(&verdict, source);
        PasswordOutcome { verdict, source, route, elapsed: started.elapsed(), warnings: Vec::new() }
    }

    /// One provider round: the grant, then the returned token through the token path. Refusals become
    /// negative entries; temporary failures are not cached.
    async fn load(&self, auth: &Authenticator, user: &str, password: &[u8]) -> Result<Entry, Unavailable> {
        let s = auth.settings();
        self.limiter.admit(self.user_key(s, user))?;
        let url = self.endpoint.url(auth.http()).await?;
        let created = self.clock.now();
        let negative = |r: Rejection| Ok(Entry::new(Err(r), s.password_cache_negative_ttl, Duration::ZERO, created));
        let granted = match grant::exchange(auth.http(), s, &url, user, password).await {
            Ok(g) => g,
            Err(AuthError::Rejected(r)) => return negative(r),
            Err(AuthError::Unavailable(u)) => return Err(u),
        };
        let checked = auth.check_token(user, granted.access_token.as_bytes()).await?;
        let identity = match checked.verdict {
            Ok(identity) => identity,
            Err(r) => return negative(r),
        };
        // Never reuse an acceptance past the returned token's expiry: the provider's own bound on it.
        let now = self.clock.unix();
        let exp = identity
            .expires_at
            .or_else(|| Token::parse(granted.access_token.as_bytes(), usize::MAX).ok()?.unverified_jwt_exp())
            .or_else(|| granted.expires_in.map(|e| now.saturating_add(e)));
        let ttl = match exp {
            Some(exp) => s.password_cache_ttl.min(Duration::from_secs(exp.saturating_sub(now))),
            None => s.password_cache_ttl,
        };
        Ok(Entry::new(Ok(identity), ttl, Duration::ZERO, created))
    }
}

/// Which check a password goes to; None when neither is switched on.
fn route(s: &Settings, password: &[u8]) -> Option<Route> {
    match (s.use_grant_password, s.accept_token_as_password) {
        (_, true) if !s.use_grant_password || looks_like_jwt(password) => Some(Route::Token),
        (true, _) => Some(Route::Grant),
        (false, _) => None,
    }
}

/// Three base64url parts whose first decodes to a JSON object with `alg`: no app password looks so.
fn looks_like_jwt(password: &[u8]) -> bool {
    use base64::Engine as _;
    let mut parts = password.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if payload.is_empty() || sig.is_empty() || header.len() > 4096 {
        return false;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .is_some_and(|h| h.get("alg").is_some())
}

/// Refuses what no provider should see: an empty user or password, or an oversized password.
fn check_input(user: &str, password: &[u8]) -> Result<(), Rejection> {
    if user.is_empty() {
        return Err(Rejection::Malformed("empty user name"));
    }
    if password.is_empty() {
        return Err(Rejection::Malformed("empty password"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Rejection::TooLarge(password.len(), MAX_PASSWORD_BYTES));
    }
    Ok(())
}

/// At most `per_minute` provider requests per login user in any 60 s (a sliding window), per process.
struct RateBound {
    per_minute: u32,
    windows: quick_cache::sync::Cache<Key, Arc<Mutex<VecDeque<Instant>>>>,
    clock: Clock,
}

impl RateBound {
    fn new(per_minute: u32, clock: Clock) -> RateBound {
        RateBound { per_minute, windows: quick_cache::sync::Cache::new(RATE_USERS), clock }
    }

    fn admit(&self, user: Key) -> Result<(), Unavailable> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let window = self
            .windows
            .get_or_insert_with(&user, || Ok::<_, ()>(Arc::new(Mutex::new(VecDeque::new()))))
            .unwrap_or_default();
        let mut sent = window.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        while sent.front().is_some_and(|t| now.saturating_duration_since(*t) >= RATE_WINDOW) {
            sent.pop_front();
        }
        if sent.len() >= self.per_minute as usize {
            trace::note(|| format!("password: {} provider requests for this user in the last minute", sent.len()));
            return Err(Unavailable::PasswordRateLimited { limit: self.per_minute });
        }
        sent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Canned, TestServer};
    use sha2::{Digest, Sha256};
    use std::path::Path;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    const ALICE: &str = "alice@example.test";
    const USERINFO_ALICE: &str = r#"{"email":"alice@example.test"}"#;

    /// A provider with a token endpoint and a userinfo endpoint.
    async fn provider(token: Canned, userinfo: Canned) -> TestServer {
        TestServer::routes(&[("/token", token), ("/userinfo", userinfo)]).await
    }

    fn granted(token: &str) -> Canned {
        Canned::json(200, &format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#))
    }

    struct Fixture {
        auth: Authenticator,
        check: PasswordCheck,
        clock: Clock,
    }

    impl Fixture {
        fn new(srv: &TestServer, extra: &str) -> Fixture {
            let text = format!(
                "introspection_url = {}\nuse_grant_password = yes\ngrant_url = {}\nclient_id = dovecot\n\
                 client_secret = s3cret\n{extra}",
                srv.url("/userinfo"),
                srv.url("/token")
            );
            let s = Settings::parse(Path::new("t.conf"), &text).unwrap();
            let clock = Clock::manual();
            let check = PasswordCheck::new(&s, clock.clone()).unwrap();
            Fixture { auth: Authenticator::with_clock(s, clock.clone()).unwrap(), check, clock }
        }

        async fn login(&self, user: &str, password: &[u8]) -> PasswordOutcome {
            self.check.verify(&self.auth, user, password).await
        }
    }

    fn accepted(o: &PasswordOutcome) -> bool {
        matches!(o.verdict, Verdict::Accept(_))
    }

    #[test]
    fn an_accepted_password_grant_validates_the_returned_token_like_an_xoauth2_token() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "");
            let o = f.login(ALICE, b"app-password").await;
            assert!(accepted(&o), "{:?}", o.verdict);
            assert_eq!((o.route, o.source), (Route::Grant, Some(Source::Provider)));
            let userinfo = srv.requests().into_iter().find(|r| r.starts_with("GET /userinfo")).unwrap();
            assert!(userinfo.to_lowercase().contains("authorization: bearer at-1"), "{userinfo}");
        });
    }

    #[test]
    fn a_token_for_another_user_is_refused_even_if_the_provider_granted_it() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, r#"{"email":"bob@example.test"}"#)).await;
            let o = Fixture::new(&srv, "").login(ALICE, b"bobs-app-password").await;
            assert!(matches!(o.verdict, Verdict::Reject(Rejection::WrongUser { .. })), "{:?}", o.verdict);
        });
    }

    #[test]
    fn invalid_grant_is_authentication_failed_and_the_log_line_holds_no_password() {
        rt().block_on(async {
            let srv =
                provider(Canned::json(400, r#"{"error":"invalid_grant"}"#), Canned::json(200, USERINFO_ALICE)).await;
            let o = Fixture::new(&srv, "").login(ALICE, b"wrong-secret").await;
            assert_eq!(o.verdict, Verdict::Reject(Rejection::PasswordRefused("invalid_grant".into())));
            let line = o.log_line().unwrap();
            assert_eq!(
                line,
                "dovecot-oauth2: authentication failed: provider refused the password (invalid_grant) (password grant)"
            );
            assert_eq!(srv.count("/userinfo"), 0);
        });
    }

    #[test]
    fn invalid_client_is_a_temporary_failure_with_an_admin_line() {
        rt().block_on(async {
            let srv =
                provider(Canned::json(401, r#"{"error":"invalid_client"}"#), Canned::json(200, USERINFO_ALICE)).await;
            let o = Fixture::new(&srv, "").login(ALICE, b"pw").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::GrantRefused { .. })), "{:?}", o.verdict);
            assert!(o.log_line().unwrap().contains("check client_id, client_secret"));
        });
    }

    #[test]
    fn a_provider_5xx_is_a_temporary_failure_and_is_not_cached() {
        rt().block_on(async {
            let srv = provider(Canned::json(503, "{}"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "");
            assert!(matches!(f.login(ALICE, b"pw").await.verdict, Verdict::TempFail(Unavailable::Status { .. })));
            srv.set("/token", granted("at-1"));
            assert!(accepted(&f.login(ALICE, b"pw").await));
        });
    }

    #[test]
    fn an_unreachable_provider_is_a_temporary_failure() {
        rt().block_on(async {
            let port = TestServer::closed_port();
            let s = Settings::parse(
                Path::new("t.conf"),
                &format!(
                    "introspection_url = http://127.0.0.1:{port}/u\nuse_grant_password = yes\n\
                     grant_url = http://127.0.0.1:{port}/token\nclient_id = d\n"
                ),
            )
            .unwrap();
            let check = PasswordCheck::new(&s, Clock::manual()).unwrap();
            let auth = Authenticator::new(s).unwrap();
            let o = check.verify(&auth, ALICE, b"pw").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::Unreachable { .. })), "{:?}", o.verdict);
        });
    }

    #[test]
    fn a_token_endpoint_timeout_is_a_temporary_failure() {
        rt().block_on(async {
            let srv = provider(granted("at").delayed(Duration::from_secs(5)), Canned::json(200, USERINFO_ALICE)).await;
            let o = Fixture::new(&srv, "timeout_msecs = 200\n").login(ALICE, b"pw").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::Timeout { .. })), "{:?}", o.verdict);
        });
    }

    #[test]
    fn a_refused_password_costs_one_provider_request_per_negative_ttl() {
        rt().block_on(async {
            let srv =
                provider(Canned::json(400, r#"{"error":"invalid_grant"}"#), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "password_cache_negative_ttl_secs = 60\n");
            for _ in 0..5 {
                assert!(matches!(f.login(ALICE, b"guess").await.verdict, Verdict::Reject(_)));
            }
            assert_eq!(srv.count("/token"), 1);
            let o = f.login(ALICE, b"guess").await;
            assert_eq!(o.source, Some(Source::Cache));
            assert!(o.log_line().unwrap().ends_with("(password grant, cached verdict)"));
            f.clock.advance(Duration::from_secs(60));
            f.login(ALICE, b"guess").await;
            assert_eq!(srv.count("/token"), 2);
        });
    }

    #[test]
    fn an_accepted_password_is_reused_for_its_ttl_then_asked_again() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "password_cache_ttl_secs = 120\n");
            assert!(accepted(&f.login(ALICE, b"app-pw").await));
            f.clock.advance(Duration::from_secs(119));
            let o = f.login(ALICE, b"app-pw").await;
            assert_eq!((accepted(&o), o.source), (true, Some(Source::Cache)));
            assert_eq!(srv.count("/token"), 1);
            // Revoked at the provider meanwhile: refused once the entry has expired.
            srv.set("/token", Canned::json(400, r#"{"error":"invalid_grant"}"#));
            f.clock.advance(Duration::from_secs(1));
            assert!(matches!(f.login(ALICE, b"app-pw").await.verdict, Verdict::Reject(Rejection::PasswordRefused(_))));
            assert_eq!(srv.count("/token"), 2);
        });
    }

    #[test]
    fn an_acceptance_is_not_reused_past_the_tokens_expiry() {
        rt().block_on(async {
            let srv = provider(
                Canned::json(200, r#"{"access_token":"at-1","expires_in":30}"#),
                Canned::json(200, USERINFO_ALICE),
            )
            .await;
            let f = Fixture::new(&srv, "password_cache_ttl_secs = 300\n");
            assert!(accepted(&f.login(ALICE, b"app-pw").await));
            f.clock.advance(Duration::from_secs(29));
            assert_eq!(f.login(ALICE, b"app-pw").await.source, Some(Source::Cache));
            f.clock.advance(Duration::from_secs(1));
            assert_eq!(f.login(ALICE, b"app-pw").await.source, Some(Source::Provider));
        });
    }

    #[test]
    fn the_positive_ttl_is_bounded_by_the_exp_the_token_check_reports() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, "{}")).await;
            let f = Fixture::new(&srv, "password_cache_ttl_secs = 300\n");
            let exp = f.clock.unix() + 10;
            srv.set("/userinfo", Canned::json(200, &format!(r#"{{"email":"{ALICE}","exp":{exp}}}"#)));
            assert!(accepted(&f.login(ALICE, b"app-pw").await));
            f.clock.advance(Duration::from_secs(10));
            assert_eq!(f.login(ALICE, b"app-pw").await.source, Some(Source::Provider));
        });
    }

    #[test]
    fn a_burst_of_distinct_guesses_for_one_user_is_bounded_per_minute_then_temporary() {
        rt().block_on(async {
            let srv =
                provider(Canned::json(400, r#"{"error":"invalid_grant"}"#), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "password_max_requests_per_minute = 3\n");
            for i in 0..3 {
                let o = f.login(ALICE, format!("guess-{i}").as_bytes()).await;
                assert!(matches!(o.verdict, Verdict::Reject(_)), "{i}");
            }
            let o = f.login(ALICE, b"guess-3").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::PasswordRateLimited { limit: 3 })));
            assert!(o.log_line().unwrap().contains("password_max_requests_per_minute"));
            assert_eq!(srv.count("/token"), 3);
            // Another user is not affected, nor is the same user spelled differently treated as another.
            assert!(matches!(f.login("bob@example.test", b"guess").await.verdict, Verdict::Reject(_)));
            assert!(matches!(f.login("ALICE@example.test", b"x").await.verdict, Verdict::TempFail(_)));
            // A sliding minute: the oldest request leaves the window after 60 s.
            f.clock.advance(Duration::from_secs(60));
            assert!(matches!(f.login(ALICE, b"guess-4").await.verdict, Verdict::Reject(_)));
            assert_eq!(srv.count("/token"), 5);
        });
    }

    #[test]
    fn cached_verdicts_are_answered_even_when_the_user_is_rate_bound() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "password_max_requests_per_minute = 1\n");
            assert!(accepted(&f.login(ALICE, b"app-pw").await));
            assert!(matches!(f.login(ALICE, b"guess").await.verdict, Verdict::TempFail(_)));
            assert!(accepted(&f.login(ALICE, b"app-pw").await));
        });
    }

    #[test]
    fn the_cache_key_is_an_hmac_under_a_per_process_random_key_not_a_plain_hash() {
        let s = Settings::parse(Path::new("t"), "introspection_url = https://i/u\n").unwrap();
        let one = PasswordCheck::new(&s, Clock::manual()).unwrap();
        let two = PasswordCheck::new(&s, Clock::manual()).unwrap();
        let k = one.key(ALICE, b"pw");
        assert_eq!(k, one.key(ALICE, b"pw"), "stable within a process");
        assert_ne!(k, two.key(ALICE, b"pw"), "another process, another key");
        assert_ne!(k, one.key("bob@example.test", b"pw"));
        assert_ne!(one.key("ab", b"c"), one.key("a", b"bc"), "user and password cannot be shifted");
        for plain in [
            Sha256::digest(b"alice@example.testpw").to_vec(),
            Sha256::digest(b"pw").to_vec(),
            crate::cache::VerdictCache::key(ALICE, b"pw").to_vec(),
        ] {
            assert_ne!(k.to_vec(), plain);
        }
    }

    #[test]
    fn the_warm_path_answers_a_fresh_verdict_without_the_runtime() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "");
            assert!(f.check.cached(&f.auth, ALICE, b"app-pw").is_none());
            f.login(ALICE, b"app-pw").await;
            let o = f.check.cached(&f.auth, ALICE, b"app-pw").unwrap();
            assert_eq!((accepted(&o), o.source), (true, Some(Source::Cache)));
            assert!(f.check.cached(&f.auth, "bob@example.test", b"app-pw").is_none());
            assert_eq!(f.auth.stats().accepted, 2);
        });
    }

    #[test]
    fn empty_and_oversized_passwords_never_reach_the_provider() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "");
            assert!(matches!(f.login(ALICE, b"").await.verdict, Verdict::Reject(Rejection::Malformed(_))));
            let big = vec![b'x'; MAX_PASSWORD_BYTES + 1];
            assert!(matches!(f.login(ALICE, &big).await.verdict, Verdict::Reject(Rejection::TooLarge(..))));
            assert!(matches!(f.login("", b"pw").await.verdict, Verdict::Reject(Rejection::Malformed(_))));
            assert!(srv.requests().is_empty());
        });
    }

    #[test]
    fn without_grant_or_token_passwords_a_password_is_a_temporary_failure_saying_how_to_enable_them() {
        rt().block_on(async {
            let s = Settings::parse(Path::new("t"), "introspection_url = https://i/u\n").unwrap();
            let check = PasswordCheck::new(&s, Clock::manual()).unwrap();
            let auth = Authenticator::new(s).unwrap();
            let o = check.verify(&auth, ALICE, b"pw").await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::PasswordsOff(_))));
            assert!(o.log_line().unwrap().contains("use_grant_password = yes"));
        });
    }

    #[test]
    fn with_accept_token_as_password_a_jwt_shaped_password_is_checked_as_a_token_not_granted() {
        rt().block_on(async {
            let srv = provider(granted("at-1"), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "accept_token_as_password = yes\n");
            // {"alg":"RS256"}.{"x":1}.sig
            let jwt = b"eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln";
            let o = f.login(ALICE, jwt).await;
            assert_eq!(o.route, Route::Token);
            assert!(accepted(&o), "{:?}", o.verdict);
            assert_eq!(srv.count("/token"), 0);
            let userinfo = srv.requests().pop().unwrap();
            assert!(userinfo.contains("eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln"), "{userinfo}");
            // An app password still goes to the grant.
            assert_eq!(f.login(ALICE, b"app-pw").await.route, Route::Grant);
            assert_eq!(srv.count("/token"), 1);
        });
    }

    #[test]
    fn accept_token_as_password_alone_checks_every_password_as_a_token() {
        rt().block_on(async {
            let srv = provider(granted("x"), Canned::json(200, USERINFO_ALICE)).await;
            let s = Settings::parse(
                Path::new("t"),
                &format!("introspection_url = {}\naccept_token_as_password = yes\n", srv.url("/userinfo")),
            )
            .unwrap();
            let check = PasswordCheck::new(&s, Clock::manual()).unwrap();
            let auth = Authenticator::new(s).unwrap();
            let o = check.verify(&auth, ALICE, b"opaque-token").await;
            assert_eq!((o.route, accepted(&o)), (Route::Token, true));
            assert_eq!(srv.count("/token"), 0);
        });
    }

    #[test]
    fn jwt_shape_needs_three_parts_and_a_header_with_alg() {
        assert!(looks_like_jwt(b"eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln"));
        assert!(!looks_like_jwt(b"eyJ4IjoxfQ.eyJ4IjoxfQ.c2ln"), "no alg");
        assert!(!looks_like_jwt(b"a.b.c"));
        assert!(!looks_like_jwt(b"correct.horse.battery.staple"));
        assert!(!looks_like_jwt(b"app-password"));
    }

    #[test]
    fn concurrent_logins_with_one_password_make_one_grant() {
        rt().block_on(async {
            let srv =
                provider(granted("at-1").delayed(Duration::from_millis(50)), Canned::json(200, USERINFO_ALICE)).await;
            let f = Fixture::new(&srv, "");
            let (a, b, c) = tokio::join!(f.login(ALICE, b"pw"), f.login(ALICE, b"pw"), f.login(ALICE, b"pw"));
            assert!(accepted(&a) && accepted(&b) && accepted(&c));
            assert_eq!(srv.count("/token"), 1);
        });
    }
}
