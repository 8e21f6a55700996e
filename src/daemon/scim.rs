//! The SCIM listener (`scim_listen`): its own port, reachable from the identity provider's host, so
//! it never shares the introspection listener's credentials. Every request carries the bearer token
//! (`scim_token`, compared in constant time) before its body is read; bodies, connections, header
//! and body time are bounded; TLS with rustls when `scim_tls_cert`/`scim_tls_key` are set. The
//! requests themselves are [`crate::scim::service`]'s, run on the blocking pool (they write files).

use super::log;
use super::server::{more, next_accepted, read_body, serve_http1, Body, LogLimiter, LIMITS, MAX_DRAINED_BYTES};
use crate::escape::shown;
use crate::scim::error::ScimError;
use crate::scim::service::{Reply, Request, Service};
use crate::scim::settings::ScimSettings;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::Response;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// The largest request body: a user is at most 64 KiB; a PATCH with many operations stays far below.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 64;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const PREFIX: &str = "/scim/v2";

pub struct ScimApp {
    service: Arc<Service>,
    token: Vec<u8>,
    tls: Option<TlsAcceptor>,
    public_url: Option<String>,
    connections: Arc<Semaphore>,
    auth_log: LogLimiter,
}

/// Reads the PEM certificate chain and key into a rustls acceptor (errors name the file).
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("scim_tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("scim_tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("scim_tls_cert {}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("scim_tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("scim_tls_cert/scim_tls_key: {e}"))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl ScimApp {
    pub fn new(settings: &ScimSettings, service: Arc<Service>) -> Result<ScimApp, String> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        Ok(ScimApp {
            service,
            token: settings.token.0.as_bytes().to_vec(),
            tls,
            public_url: settings.public_url.clone(),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            auth_log: LogLimiter::new(Duration::from_secs(10)),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the `Authorization` header is `Bearer <scim_token>`.
    fn authorized(&self, header: Option<&HeaderValue>) -> Result<(), &'static str> {
        let value = header.ok_or("no Authorization header")?.as_bytes();
        let scheme_len = "Bearer ".len();
        if value.len() < scheme_len || !value[..scheme_len].eq_ignore_ascii_case(b"Bearer ") {
            return Err("the Authorization header is not a bearer token");
        }
        let given = value[scheme_len..].trim_ascii();
        if bool::from(given.ct_eq(&self.token)) {
            Ok(())
        } else {
            Err("wrong bearer token")
        }
    }

    /// The base URL for `location`: `scim_public_url`, else scheme and `Host` (only host name
    /// characters are taken from it; anything else falls back to the listener's address).
    fn base(&self, host: Option<&HeaderValue>, local: &str) -> String {
        if let Some(u) = &self.public_url {
            return u.clone();
        }
        let host = host
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or(local);
        format!("{}://{host}{PREFIX}", self.scheme())
    }
}

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(app: Arc<ScimApp>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let local = listener.local_addr().map_or_else(|_| "localhost".into(), |a| a.to_string());
    let local: Arc<str> = local.into();
    let accept_log = LogLimiter::new(Duration::from_secs(10));
    while let Some((stream, peer)) = next_accepted(|| listener.accept(), &mut stop, &accept_log, "scim: ").await {
        let Ok(permit) = app.connections.clone().try_acquire_owned() else {
            if let Some(n) = accept_log.allow() {
                log::warning(&format!(
                    "scim: refused a connection from {peer}: {MAX_CONNECTIONS} connections open{}",
                    more(n)
                ));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, stop, local) = (app.clone(), stop.clone(), local.clone());
        tokio::spawn(async move {
            let peer: Arc<str> = peer.to_string().into();
            match &app.tls {
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve(app.clone(), tls, peer, local, stop).await,
                    Ok(Err(e)) => {
                        if let Some(n) = app.auth_log.allow() {
                            log::warning(&format!("scim: TLS handshake with {peer} failed: {e}{}", more(n)));
                        }
                    }
                    Err(_) => {}
                },
                None => serve(app.clone(), stream, peer, local, stop).await,
            }
            drop(permit);
        });
    }
}

async fn serve<S>(app: Arc<ScimApp>, stream: S, peer: Arc<str>, local: Arc<str>, stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = {
        let app = app.clone();
        move |req| handle(app.clone(), peer.clone(), local.clone(), req)
    };
    serve_http1(stream, &LIMITS, handler, stop).await;
}

fn respond(reply: Reply, close: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    if reply.status != 204 {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/scim+json"));
    }
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    for (name, value) in [("location", reply.location), ("etag", reply.etag)] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
    if reply.status == 401 {
        h.insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"dovecot-oauth2d SCIM\""));
    }
    if reply.status == 429 {
        h.insert("retry-after", HeaderValue::from_static("60"));
    }
    if close {
        h.insert("connection", HeaderValue::from_static("close"));
    }
    r
}

async fn handle(
    app: Arc<ScimApp>,
    peer: Arc<str>,
    local: Arc<str>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let refuse = |e: ScimError| Ok(respond(e.into(), true));
    if let Err(why) = app.authorized(req.headers().get(AUTHORIZATION)) {
        if let Some(n) = app.auth_log.allow() {
            log::warning(&format!("scim: refused {method} {} from {peer}: {why}{}", shown(&path), more(n)));
        }
        return refuse(ScimError::new(401, None, "a valid bearer token is required"));
    }
    let Some(rest) = path.strip_prefix(PREFIX).filter(|r| r.is_empty() || r.starts_with('/')) else {
        return refuse(ScimError::not_found(format!("SCIM is served under {PREFIX}")));
    };
    let rest = rest.to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let base = app.base(req.headers().get(HOST), &local);
    let if_match = req.headers().get("if-match").and_then(|v| v.to_str().ok()).map(str::to_string);
    let announced = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // A body a little over the limit is read to its end and dropped, so the client sees the 413
    // (not a reset while it is still sending); a much larger one is refused at once.
    if announced.is_some_and(|n| n > (MAX_BODY_BYTES + MAX_DRAINED_BYTES) as u64) {
        log::warning(&format!("scim: refused {method} {} from {peer}: body over {MAX_BODY_BYTES} bytes", shown(&path)));
        return refuse(ScimError::new(413, None, format!("the request body is over {MAX_BODY_BYTES} bytes")));
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body(), MAX_BODY_BYTES)).await {
        Ok(Body::Complete(b)) => b,
        Ok(Body::TooLarge { drained }) => {
            log::warning(&format!(
                "scim: refused {method} {} from {peer}: body over {MAX_BODY_BYTES} bytes",
                shown(&path)
            ));
            let e = ScimError::new(413, None, format!("the request body is over {MAX_BODY_BYTES} bytes"));
            return Ok(respond(e.into(), !drained));
        }
        Ok(Body::Broken) => return refuse(ScimError::invalid_syntax("the request body could not be read")),
        Err(_) => return refuse(ScimError::new(408, None, "the request body took too long")),
    };
    let service = app.service.clone();
    let m = method.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let request =
            Request { method: &m, path: &rest, query: &query, body: &body, if_match: if_match.as_deref(), base: &base };
        service.handle(&request)
    })
    .await
    .unwrap_or_else(|_| ScimError::internal("internal error (see the daemon's log)").into());
    if let Some(note) = &reply.note {
        let line = format!("scim: {method} {} from {peer}: {note}", shown(&path));
        if reply.status < 400 {
            log::info(&line);
        } else if reply.status >= 500 {
            log::error(&line);
        } else {
            log::warning(&line);
        }
    }
    Ok(respond(reply, false))
}
