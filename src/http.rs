//! One HTTP client per process: keep-alive pooled, rustls, bounded in time and size, no redirects,
//! no proxy but the one `http_proxy` names (never one from the environment), a circuit breaker per
//! provider host, and name lookups whose
//! threads are joined before the module can be unloaded.

use crate::breaker::{Breaker, Pass};
use crate::clock::Clock;
use crate::config::Settings;
use crate::errors::{ConfigError, Unavailable};
use crate::stats::Stats;
use crate::trace;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Http {
    client: reqwest::Client,
    max_body: usize,
    timeout: Duration,
    breaker: Breaker,
    stats: Arc<Stats>,
    lookups: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// A provider reply, body already read within the size cap.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub elapsed: Duration,
    /// The `Cache-Control` header, for how long fetched signing keys may be kept.
    pub cache_control: Option<String>,
}

/// What a request asks the provider, which decides what its failure says about the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Nothing about a token (discovery document, key set): no answer, a 5xx, 429, redirect or an
    /// unusable reply all say the provider is unwell and count against it.
    Provider,
    /// About one token: only a transport failure (no connection, TLS, timeout) counts. Any answer,
    /// even a 5xx, shows the provider is reachable; a token can make a provider fail (some answer 500
    /// to garbage), and one client's tokens must not lock every other user out.
    Token,
    /// About a token whose earlier acceptance is stale (`stale_if_error_secs`): sent even while the
    /// circuit is open, since only this token's own answer can tell a revocation from an outage.
    StaleToken,
}

/// getaddrinfo (so /etc/hosts and nsswitch apply as for Dovecot) on a short-lived thread, so a hung
/// DNS server is bounded by the request timeout. Unlike tokio's blocking pool, every such thread is
/// known and joined when the client is dropped, which happens before Dovecot can unload the module.
struct ThreadResolver {
    pending: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl reqwest::dns::Resolve for ThreadResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<Vec<SocketAddr>>>();
        let spawned = std::thread::Builder::new().name("oauth2-dns".into()).stack_size(256 * 1024).spawn(move || {
            let _ = tx.send((host.as_str(), 0).to_socket_addrs().map(Iterator::collect));
        });
        match spawned {
            Ok(handle) => {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.retain(|h| !h.is_finished());
                pending.push(handle);
            }
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        }
        Box::pin(async move {
            let addrs = rx.await.map_err(|_| std::io::Error::other("name lookup thread ended"))??;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let pending = std::mem::take(&mut *self.lookups.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in pending {
            let _ = handle.join();
        }
    }
}

/// The part of a URL that identifies the provider for the circuit breaker: host and port.
fn breaker_key(url: &str) -> String {
    match shown_parts(url) {
        Some(u) => format!("{}:{}", u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        None => NOT_SHOWN.to_string(),
    }
}

impl Http {
    pub fn new(s: &Settings, stats: Arc<Stats>, clock: Clock) -> Result<Http, ConfigError> {
        let lookups = Arc::new(Mutex::new(Vec::new()));
        let bad =
            |key: &str, reason: String| ConfigError::Invalid { path: s.path.clone(), line: 0, key: key.into(), reason };
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("dovecot-oauth2/", env!("CARGO_PKG_VERSION")))
            .timeout(s.timeout)
            .connect_timeout(s.connect_timeout)
            .pool_idle_timeout(s.max_idle_time)
            .pool_max_idle_per_host(s.max_parallel_connections)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            // Never HTTP_PROXY, ALL_PROXY and the like from the environment: the token and our client
            // credentials go where the settings file says, and nowhere else.
            .no_proxy()
            .dns_resolver(Arc::new(ThreadResolver { pending: lookups.clone() }))
            .tls_danger_accept_invalid_certs(s.tls_allow_invalid_cert);
        if let Some(proxy) = &s.http_proxy {
            b = b.proxy(reqwest::Proxy::all(proxy).map_err(|_| bad("http_proxy", "is not a usable proxy URL".into()))?);
        }
        let mut roots = Vec::new();
        if let Some(file) = &s.tls_ca_cert_file {
            let pem = std::fs::read(file).map_err(|e| bad("tls_ca_cert_file", format!("{}: {e}", file.display())))?;
            roots.extend(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad("tls_ca_cert_file", format!("{}: {e}", file.display())))?,
            );
        }
        if let Some(dir) = &s.tls_ca_cert_dir {
            let entries =
                std::fs::read_dir(dir).map_err(|e| bad("tls_ca_cert_dir", format!("{}: {e}", dir.display())))?;
            for entry in entries.flatten() {
                if let Ok(pem) = std::fs::read(entry.path()) {
                    roots.extend(reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default());
                }
            }
        }
        if !roots.is_empty() {
            b = b.tls_certs_merge(roots);
        }
        if let (Some(cert), Some(key)) = (&s.tls_cert_file, &s.tls_key_file) {
            let mut pem = std::fs::read(cert).map_err(|e| bad("tls_cert_file", format!("{}: {e}", cert.display())))?;
            pem.extend(std::fs::read(key).map_err(|e| bad("tls_key_file", format!("{}: {e}", key.display())))?);
            b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| bad("tls_cert_file", e.to_string()))?);
        }
        let client = b.build().map_err(|e| bad("tls_ca_cert_file", e.to_string()))?;
        let breaker = Breaker::new(s.circuit_breaker_failures, s.circuit_breaker_backoff, clock);
        Ok(Http { client, max_body: s.max_response_bytes, timeout: s.timeout, breaker, stats, lookups })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The circuit breakers, for a read-only view (the daemon's metrics).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Sends a request that carries no token (a discovery document, a key set) and reads at most
    /// `max_response_bytes` of its body, all within `timeout`. `shown_url` is what errors name: the
    /// configured URL, shown without credentials or query.
    pub async fn send(&self, req: reqwest::RequestBuilder, shown_url: &str) -> Result<Reply, Unavailable> {
        self.send_as(req, shown_url, Ask::Provider).await
    }

    /// [`Http::send`] for a request of the given kind, which decides how its outcome counts for the
    /// circuit breaker.
    pub async fn send_as(&self, req: reqwest::RequestBuilder, shown_url: &str, ask: Ask) -> Result<Reply, Unavailable> {
        let url = redact_url(shown_url);
        let host = breaker_key(shown_url);
        let pass = if ask == Ask::StaleToken {
            Pass::Bypass
        } else {
            match self.breaker.admit(&host) {
                Ok(pass) => pass,
                Err(open) => {
                    trace::note(|| {
                        format!("provider {host}: circuit open, not asked ({} failures in a row)", open.failures)
                    });
                    return Err(Unavailable::CircuitOpen {
                        host,
                        failures: open.failures,
                        retry_in_secs: open.retry_in.as_secs().max(1),
                    });
                }
            }
        };
        let request =
            req.build().map_err(|e| Unavailable::Internal(format!("request to {url}: {}", e.without_url())))?;
        let method = request.method().clone();
        let retry = request.try_clone();
        let started = Instant::now();
        let mut result = self.exchange(request, &url, started).await;
        // The runtime only runs during a login, so a pooled keep-alive connection the provider closed
        // meanwhile (idle timeout, restart) is only noticed when reused: it fails at once ("connection
        // closed before message completed"). One retry, on a new connection, within the same time
        // budget; timeouts are not retried (the budget is spent).
        if let (Err(Unavailable::Unreachable { .. }), Some(again)) = (&result, retry) {
            if started.elapsed() < self.timeout / 2 {
                trace::note(|| format!("{method} {url}: connection failed, retrying once on a new connection"));
                result = self.exchange(again, &url, started).await;
            }
        }
        // For the counters: 4xx answers mean the provider is up (it judged the token or our
        // credentials); silence, 5xx, 429, redirects and unusable replies are failures.
        let failed = match &result {
            Ok(r) => r.status >= 500 || r.status == 429 || (300..400).contains(&r.status),
            Err(_) => true,
        };
        self.stats.provider_request(started.elapsed(), failed);
        // For the breaker: the provider's health, which a client's token must not decide.
        let unhealthy = match ask {
            Ask::Provider => failed,
            Ask::Token | Ask::StaleToken => result.as_ref().is_err_and(Unavailable::is_transport),
        };
        if unhealthy {
            if self.breaker.failure(&host, pass) {
                trace::note(|| format!("provider {host}: circuit opened after this failure"));
            }
        } else {
            self.breaker.success(&host);
        }
        trace::note(|| match &result {
            Ok(r) => {
                format!("{method} {url} -> HTTP {} ({} bytes) in {} ms", r.status, r.body.len(), r.elapsed.as_millis())
            }
            Err(e) => format!("{method} {url} -> {e}"),
        });
        result
    }

    async fn exchange(&self, request: reqwest::Request, url: &str, started: Instant) -> Result<Reply, Unavailable> {
        let url = url.to_string();
        let work = async {
            let mut resp = self.client.execute(request).await.map_err(|e| classify(e, &url, self.timeout))?;
            let status = resp.status().as_u16();
            let cache_control =
                resp.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).map(str::to_string);
            if resp.content_length().is_some_and(|n| n > self.max_body as u64) {
                return Err(Unavailable::BadReply {
                    url: url.clone(),
                    reason: format!("body over {} bytes", self.max_body),
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, &url, self.timeout))? {
                if body.len() + chunk.len() > self.max_body {
                    return Err(Unavailable::BadReply {
                        url: url.clone(),
                        reason: format!("body over {} bytes", self.max_body),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Reply { status, body, elapsed: started.elapsed(), cache_control })
        };
        match tokio::time::timeout(self.timeout.saturating_sub(started.elapsed()), work).await {
            Ok(r) => r,
            Err(_) => Err(Unavailable::Timeout { url, msecs: self.timeout.as_millis() as u64 }),
        }
    }
}

fn classify(e: reqwest::Error, url: &str, timeout: Duration) -> Unavailable {
    // The URL may carry the token (tokeninfo, get mode): never let reqwest print it.
    let e = e.without_url();
    if e.is_timeout() {
        return Unavailable::Timeout { url: url.into(), msecs: timeout.as_millis() as u64 };
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    Unavailable::Unreachable { url: url.into(), reason }
}

/// What is shown instead of a URL that cannot be shown without risking a secret in it.
pub const NOT_SHOWN: &str = "(URL not shown: it does not parse)";

/// `url` parsed, if it is a URL whose every part after the host may be shown: an `@` there means
/// credentials with an unescaped `/`, `?` or `#` made the parser see a different host, so what looks
/// like host, port or path may be part of a password.
fn shown_parts(url: &str) -> Option<url::Url> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed[url::Position::BeforePath..].contains('@') || !parsed.has_host() {
        return None;
    }
    Some(parsed)
}

/// A URL as logs may show it: parsed by a URL parser, then without `user:password@`, query and
/// fragment (a token or secret may be in any of them). A URL that does not parse is not shown at all.
pub fn redact_url(url: &str) -> String {
    let Some(mut u) = shown_parts(url) else { return NOT_SHOWN.to_string() };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.into()
}

/// Why a URL from the settings cannot be used, in words that never echo it (it may hold credentials).
pub fn check_url(url: &str) -> Result<(), &'static str> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Err("is not a valid URL (percent-encode '/', '?', '#' and '@' in credentials as %2F, %3F, %23, %40)");
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL");
    }
    if shown_parts(url).is_none() {
        return Err("has an '@' after the host (percent-encode '/', '?', '#' and '@' in credentials as %2F, %3F, \
                    %23, %40)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Credentials an admin might paste unescaped: '/', '?', '#' and '@' in the user or password.
    const UNESCAPED: &[(&str, &[&str])] = &[
        ("https://dovecot:se/cr#et@idp.test/introspect", &["se/cr", "cr#et", "dovecot:se"]),
        ("https://dovecot:pa?ss@idp.test/introspect", &["pa?ss", "dovecot:pa"]),
        ("https://dove/cot:secret@idp.test/introspect", &["secret", "dove/cot", "cot:"]),
        ("https://dovecot:123/456@idp.test/introspect", &["123/456", "dovecot:123", "456@"]),
        ("https://dovecot:123#456@idp.test/introspect", &["123#456", "dovecot:123", "456@"]),
        ("https://dovecot:123?456@idp.test/introspect", &["123?456", "dovecot:123", "456@"]),
        ("https://dovecot:s3\\cret@idp.test/introspect", &["s3\\cret", "dovecot:s3"]),
    ];

    #[test]
    fn redacted_url_drops_credentials_query_and_fragment() {
        assert_eq!(redact_url("https://id:secret@idp.test/introspect?x=1"), "https://idp.test/introspect");
        assert_eq!(redact_url("https://idp.test/tokeninfo?access_token="), "https://idp.test/tokeninfo");
        assert_eq!(redact_url("https://d%2Fo:s%3Fe%23c%40@idp.test/i#frag"), "https://idp.test/i");
        assert_eq!(redact_url("http://127.0.0.1:9"), "http://127.0.0.1:9/");
    }

    #[test]
    fn a_url_whose_credentials_do_not_parse_is_never_shown_in_part() {
        for (url, secrets) in UNESCAPED {
            let shown = redact_url(url);
            for secret in *secrets {
                assert!(!shown.contains(secret), "{url} shown as {shown}");
            }
        }
        assert_eq!(redact_url("not a url"), NOT_SHOWN);
    }

    #[test]
    fn a_settings_url_with_unescaped_credentials_is_refused_without_echoing_it() {
        for (url, secrets) in UNESCAPED {
            for (key, value) in [("introspection_url", url.to_string()), ("tokeninfo_url", format!("\"{url}\""))] {
                let text = format!("introspection_mode = post\n{key} = {value}\n");
                let e = Settings::parse(Path::new("t.conf"), &text).expect_err(url).to_string();
                assert!(e.starts_with("settings file t.conf line 2: "), "{e}");
                for secret in *secrets {
                    assert!(!e.contains(secret), "{url}: {e}");
                }
            }
        }
    }

    #[test]
    fn settings_urls_are_checked_by_a_url_parser() {
        assert_eq!(check_url("https://idp.test/userinfo"), Ok(()));
        assert_eq!(check_url("https://d%2Fo:s%3Fe%23c%40@idp.test:8443/i?x=1"), Ok(()));
        assert_eq!(check_url("http://[::1]:8080/u"), Ok(()));
        assert!(check_url("ftp://idp.test/u").unwrap_err().contains("http:// or https://"));
        assert!(check_url("https://").is_err());
        assert!(check_url("https://idp.test:99999/u").is_err());
        assert!(check_url("idp.test/userinfo").is_err());
    }

    #[test]
    fn an_error_naming_a_url_never_shows_its_credentials_or_query_whoever_built_it() {
        let u = "https://dovecot:s3cret@idp.test/introspect?access_token=tok#f";
        let errors = [
            Unavailable::Unreachable { url: u.into(), reason: "refused".into() },
            Unavailable::Timeout { url: u.into(), msecs: 1 },
            Unavailable::Status { url: u.into(), status: 500 },
            Unavailable::BadReply { url: u.into(), reason: "not JSON".into() },
            Unavailable::NoKeys { url: u.into(), reason: "down".into() },
        ];
        for e in errors {
            let shown = e.to_string();
            assert!(shown.contains("https://idp.test/introspect"), "{shown}");
            assert!(!shown.contains("s3cret") && !shown.contains("tok") && !shown.contains("dovecot"), "{shown}");
        }
    }

    /// A listener that answers every request as a provider accepting the token would, and counts the
    /// connections it gets: what a proxy would see of our requests.
    fn proxy_stub() -> (u16, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    head.push_str(&line);
                    line.clear();
                }
                seen2.lock().unwrap().push(head);
                let body = r#"{"email":"a@x"}"#;
                let _ = write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            }
        });
        (port, seen)
    }

    /// The environment variables reqwest (through hyper-util) would take a proxy from.
    const PROXY_VARS: &[&str] = &["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

    #[test]
    fn proxies_named_in_the_environment_are_never_used() {
        const CHILD: &str = "DOVECOT_OAUTH2_TEST_PROXY_TARGET";
        if let Ok(target) = std::env::var(CHILD) {
            // In the child: one login, which only a proxy could accept (the target port is closed).
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let text = format!("introspection_url = {target}\ntimeout_msecs = 5000\n");
            let a = crate::lookup::Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
            let o = rt.block_on(a.verify("a@x", b"tok"));
            assert!(matches!(o.verdict, crate::Verdict::TempFail(Unavailable::Unreachable { .. })), "{:?}", o.verdict);
            return;
        }
        // Environment variables are process-wide and tests run on threads: each variable is tried in a
        // child process (this test binary, running only this test).
        let (port, seen) = proxy_stub();
        for var in PROXY_VARS {
            let scheme = if var.to_ascii_lowercase().starts_with("https") { "https" } else { "http" };
            let target = format!("{scheme}://127.0.0.1:{}/userinfo", crate::testutil::TestServer::closed_port());
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child.args(["--exact", "http::tests::proxies_named_in_the_environment_are_never_used", "--nocapture"]);
            for v in PROXY_VARS.iter().chain(&["NO_PROXY", "no_proxy", "REQUEST_METHOD"]) {
                child.env_remove(v);
            }
            let out = child.env(var, format!("http://127.0.0.1:{port}")).env(CHILD, &target).output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.lines().find(|l| l.contains("Accept") || l.contains("TempFail")).unwrap_or(&said);
            assert!(out.status.success(), "{var}: {said}");
            assert_eq!(seen.lock().unwrap().as_slice(), &[] as &[String], "{var}: the proxy was used");
        }
    }

    #[test]
    fn an_explicit_http_proxy_setting_is_used_with_its_credentials() {
        let (port, seen) = proxy_stub();
        let text = format!(
            "introspection_url = http://provider.invalid/userinfo\nhttp_proxy = http://px:s3cret@127.0.0.1:{port}\n"
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let a = crate::lookup::Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
        let o = rt.block_on(a.verify("a@x", b"tok"));
        assert_eq!(o.verdict, crate::Verdict::Accept(vec![]));
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("GET http://provider.invalid/userinfo HTTP/1.1"), "{seen:?}");
        // base64("px:s3cret")
        assert!(seen[0].to_ascii_lowercase().contains("proxy-authorization: basic chg6cznjcmv0"), "{seen:?}");
    }

    #[test]
    fn an_http_proxy_setting_that_is_not_a_url_is_refused_without_echo() {
        let e = Settings::parse(
            Path::new("t.conf"),
            "introspection_url = https://i/u\nhttp_proxy = http://px:se/cr@p:3128\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2: http_proxy: "), "{e}");
        assert!(!e.contains("se/cr"), "{e}");
    }

    #[test]
    fn the_breaker_knows_a_provider_by_host_and_port() {
        assert_eq!(breaker_key("https://u:p@IDP.test/x?y"), "idp.test:443");
        assert_eq!(breaker_key("http://127.0.0.1:8080/u"), "127.0.0.1:8080");
        assert_eq!(breaker_key("http://idp.test/u"), "idp.test:80");
    }
}
