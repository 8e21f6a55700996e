//! One HTTP client per process: keep-alive pooled, rustls, bounded in time and size, no redirects,
//! no proxy from the environment, a circuit breaker per provider host, and name lookups whose
//! threads are joined before the module can be unloaded.

use crate::breaker::Breaker;
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
fn breaker_key(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
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
            .dns_resolver(Arc::new(ThreadResolver { pending: lookups.clone() }))
            .tls_danger_accept_invalid_certs(s.tls_allow_invalid_cert);
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

    /// Sends a request and reads at most `max_response_bytes` of its body, all within `timeout`.
    /// `shown_url` is what errors name: the configured URL without credentials or query.
    pub async fn send(&self, req: reqwest::RequestBuilder, shown_url: &str) -> Result<Reply, Unavailable> {
        let url = redact_url(shown_url);
        let host = breaker_key(&url).to_string();
        if let Err(open) = self.breaker.admit(&host) {
            trace::note(|| format!("provider {host}: circuit open, not asked ({} failures in a row)", open.failures));
            return Err(Unavailable::CircuitOpen {
                host,
                failures: open.failures,
                retry_in_secs: open.retry_in.as_secs().max(1),
            });
        }
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
        // 4xx answers mean the provider is up (it judged the token or our credentials); only silence,
        // 5xx, 429, redirects and unusable replies count against it.
        let failed = match &result {
            Ok(r) => r.status >= 500 || r.status == 429 || (300..400).contains(&r.status),
            Err(_) => true,
        };
        self.stats.provider_request(started.elapsed(), failed);
        if failed {
            if self.breaker.failure(&host) {
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

/// A URL as logs may show it: no `user:password@`, no query string.
pub fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => no_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_url_drops_credentials_and_query() {
        assert_eq!(redact_url("https://id:secret@idp.test/introspect?x=1"), "https://idp.test/introspect");
        assert_eq!(redact_url("https://idp.test/tokeninfo?access_token="), "https://idp.test/tokeninfo");
        assert_eq!(redact_url("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }
}
