//! The listeners and HTTP/1.1 (hyper): authentication of every request, routing, and the bounds that
//! keep one client from degrading the others: connections, requests in flight, header and body size,
//! time to send headers and body, time to a verdict.

use super::form;
use super::introspect::{self, Reply};
use super::log;
use super::metrics;
use super::state::{Generation, Shared};
use crate::config::Settings;
use crate::errors::Verdict;
use crate::escape::shown;
use crate::lookup::Outcome;
use crate::token::fingerprint;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The daemon's fixed bounds (README, "dovecot-oauth2d").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, both listeners together; beyond: a canned 503 and close.
    pub max_connections: usize,
    /// Introspections being decided at once; beyond: 503 at once (Dovecot: temporary failure).
    pub max_in_flight: usize,
    /// Time to send a request's headers, and the longest idle time of a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Request line and headers together.
    pub max_header_bytes: usize,
    /// Time to send a request body once the headers are in.
    pub body_read_timeout: Duration,
}

pub const LIMITS: Limits = Limits {
    max_connections: 1024,
    max_in_flight: 512,
    header_read_timeout: Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
    body_read_timeout: Duration::from_secs(10),
};

/// The largest `POST /introspect` body: a `max_token_bytes` token percent-encoded throughout, plus
/// room for `token_type_hint` and other parameters.
pub fn body_limit(s: &Settings) -> usize {
    3 * s.max_token_bytes + 1024
}

/// How long a verdict may take before the request is answered 503: enough for a discovery document,
/// a key set and an introspection request, each bounded by `timeout_msecs`. The check itself goes on
/// and its verdict is cached.
pub fn verdict_deadline(s: &Settings) -> Duration {
    s.timeout * 3 + Duration::from_secs(2)
}

/// How long SIGTERM waits for requests in flight.
pub fn stop_grace(s: &Settings) -> Duration {
    s.timeout + Duration::from_secs(2)
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `listen`: introspection, health, and metrics unless `metrics_listen` is set.
    Main { metrics: bool },
    /// `metrics_listen`: health and metrics.
    Metrics,
}

pub struct App {
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    pub in_flight: Arc<Semaphore>,
    /// Tasks writing the canned "too many connections" reply (bounded too).
    refusing: Arc<Semaphore>,
    auth_log: LogLimiter,
    busy_log: LogLimiter,
    accept_log: LogLimiter,
}

impl App {
    pub fn new(shared: Arc<Shared>, limits: Limits) -> App {
        App {
            shared,
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            refusing: Arc::new(Semaphore::new(64)),
            auth_log: LogLimiter::new(Duration::from_secs(10)),
            busy_log: LogLimiter::new(Duration::from_secs(10)),
            accept_log: LogLimiter::new(Duration::from_secs(10)),
        }
    }
}

/// At most one line per interval for events a client can repeat at will (bad credentials, floods),
/// with the count of those not logged.
pub(super) struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub(super) fn new(every: Duration) -> LogLimiter {
        LogLimiter { every, state: Mutex::new((None, 0)) }
    }

    /// Some(suppressed since the last line) when a line may be written now.
    pub(super) fn allow(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match st.0 {
            Some(last) if now.duration_since(last) < self.every => {
                st.1 += 1;
                None
            }
            _ => {
                let suppressed = st.1;
                *st = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

pub(super) fn more(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like it not logged)")
    }
}

/// Resolves once the daemon is stopping.
pub(super) async fn stopping(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stopping too.
    let _ = stop.wait_for(|s| *s).await;
}

/// A bound listener: TCP, or a unix socket (removed again when the daemon stops).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// The address as the startup line names it (the port a `:0` listener got).
    pub fn shown(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    async fn accept(&self) -> std::io::Result<(Stream, Arc<str>)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Tcp(s), peer.to_string().into()))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let peer = match s.peer_cred() {
                    Ok(c) => format!("the unix socket (uid {}, pid {})", c.uid(), c.pid().unwrap_or(0)),
                    Err(_) => "the unix socket".into(),
                };
                Ok((Stream::Unix(s), peer.into()))
            }
        }
    }
}

/// An accepted connection.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The next connection `accept` gives; `None` once the daemon is stopping. A failed accept (out of
/// file descriptors and the like) is said, at most once per interval, and retried after a pause
/// instead of spinning.
pub(super) async fn next_accepted<T, Fut>(
    accept: impl Fn() -> Fut,
    stop: &mut watch::Receiver<bool>,
    accept_log: &LogLimiter,
    what: &str,
) -> Option<T>
where
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        let accepted = tokio::select! {
            r = accept() => r,
            _ = stopping(stop) => return None,
        };
        match accepted {
            Ok(c) => return Some(c),
            Err(e) => {
                if let Some(n) = accept_log.allow() {
                    log::error(&format!("{what}cannot accept a connection: {e}{}", more(n)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection with the daemon's header bounds until it ends; once the daemon
/// is stopping, until the request in progress is answered (the caller bounds that wait).
pub(super) async fn serve_http1<S, F, Fut>(stream: S, limits: &Limits, handler: F, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .half_close(false)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), hyper::service::service_fn(handler));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

/// Accepts connections until `stop` turns true.
pub async fn accept_loop(app: Arc<App>, role: Role, listener: Listener, mut stop: watch::Receiver<bool>) {
    while let Some((stream, peer)) = next_accepted(|| listener.accept(), &mut stop, &app.accept_log, "").await {
        match app.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, stop) = (app.clone(), stop.clone());
                match stream {
                    Stream::Tcp(s) => {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve_connection(app, role, s, peer, permit, stop));
                    }
                    Stream::Unix(s) => {
                        tokio::spawn(serve_connection(app, role, s, peer, permit, stop));
                    }
                }
            }
            Err(_) => refuse_connection(&app, stream, &peer),
        }
    }
}

const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 40\r\nconnection: close\r\n\r\ntemporary failure: too many connections\n";

fn refuse_connection(app: &App, stream: Stream, peer: &str) {
    app.shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
    if let Some(n) = app.busy_log.allow() {
        log::warning(&format!(
            "refused a connection from {peer}: too many connections open ({} at most at once){}",
            app.limits.max_connections,
            more(n)
        ));
    }
    if let Ok(permit) = app.refusing.clone().try_acquire_owned() {
        tokio::spawn(async move {
            let write = async {
                match stream {
                    Stream::Tcp(mut s) => s.write_all(TOO_MANY_CONNECTIONS).await,
                    Stream::Unix(mut s) => s.write_all(TOO_MANY_CONNECTIONS).await,
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
            drop(permit);
        });
    }
}

/// Keeps the open-connections gauge right however a connection ends.
struct Open<'a>(&'a Shared);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection<S>(
    app: Arc<App>,
    role: Role,
    stream: S,
    peer: Arc<str>,
    permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    app.shared.counters.connections_open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&app.shared);
    let handler = {
        let app = app.clone();
        move |req| handle(app.clone(), role, peer.clone(), req)
    };
    serve_http1(stream, &app.limits, handler, stop).await;
    drop(permit);
}

/// One answer, with what the connection should do after it.
struct Answer {
    reply: Reply,
    headers: Vec<(&'static str, &'static str)>,
    /// Close the connection after this answer (the request body was not read, or the client erred).
    close: bool,
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Answer {
        Answer { reply, headers: Vec::new(), close: false }
    }
}

impl Answer {
    fn closing(reply: Reply) -> Answer {
        Answer { reply, headers: Vec::new(), close: true }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Answer {
        self.headers.push((name, value));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(self.reply.body)));
        *r.status_mut() =
            hyper::StatusCode::from_u16(self.reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.reply.content_type));
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            h.insert(name, HeaderValue::from_static(value));
        }
        if self.close {
            h.insert("connection", HeaderValue::from_static("close"));
        }
        r
    }
}

/// RFC 6749 5.2's error reply, for requests that are not introspection requests at all (never sent
/// for a token: a refused token is `{"active":false}`).
fn invalid_request(why: &str) -> Reply {
    let body = serde_json::json!({"error": "invalid_request", "error_description": why});
    Reply::json(400, body.to_string())
}

async fn handle(
    app: Arc<App>,
    role: Role,
    peer: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = route(&app, role, &peer, req).await;
    app.shared.counters.response(answer.reply.status);
    Ok(answer.into_response())
}

async fn route(app: &Arc<App>, role: Role, peer: &str, req: Request<Incoming>) -> Answer {
    let generation = app.shared.current();
    // Every request authenticates first, before its body is read or its path looked at.
    let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if let Err(refusal) = generation.config.credentials.check(authorization) {
        if let Some(n) = app.auth_log.allow() {
            log::warning(&format!(
                "refused {} {} from {peer}: {refusal}{}",
                req.method(),
                shown(req.uri().path()),
                more(n)
            ));
        }
        return unauthorized();
    }
    let metrics_here = matches!(role, Role::Metrics | Role::Main { metrics: true });
    let introspect_here = matches!(role, Role::Main { .. });
    match req.uri().path() {
        "/introspect" if introspect_here => match *req.method() {
            Method::POST => introspect(app, &generation, req).await,
            _ => Answer::closing(Reply::text(405, "use POST\n")).header("allow", "POST"),
        },
        "/health" => match *req.method() {
            Method::GET => Reply::text(200, "ok\n").into(),
            _ => Answer::closing(Reply::text(405, "use GET\n")).header("allow", "GET"),
        },
        "/metrics" if metrics_here => match *req.method() {
            Method::GET => {
                Reply { status: 200, content_type: metrics::CONTENT_TYPE, body: app.shared.metrics() }.into()
            }
            _ => Answer::closing(Reply::text(405, "use GET\n")).header("allow", "GET"),
        },
        _ => Answer::closing(Reply::text(404, "not found\n")),
    }
}

/// RFC 6749's `invalid_client`. Dovecot reads a 4xx body like a 200 one, so it must never look active:
/// 2.3 then answers a temporary failure ("No username returned": an admin's mistake, not the user's).
fn unauthorized() -> Answer {
    let body = serde_json::json!({"error": "invalid_client"}).to_string();
    Answer::closing(Reply::json(401, body)).header("www-authenticate", "Basic realm=\"dovecot-oauth2d\"")
}

async fn introspect(app: &Arc<App>, generation: &Arc<Generation>, req: Request<Incoming>) -> Answer {
    let settings = generation.auth.settings();
    let limit = body_limit(settings);
    if !form::is_form(req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes)) {
        return Answer::closing(invalid_request("the body must be application/x-www-form-urlencoded"));
    }
    let announced = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Answer::closing(Reply::text(413, format!("request body over {limit} bytes\n")));
    }
    let context = dovecot_context(&req);
    let body = match tokio::time::timeout(app.limits.body_read_timeout, read_body(req.into_body(), limit)).await {
        Ok(Body::Complete(bytes)) => bytes,
        Ok(Body::TooLarge { drained }) => {
            let reply = Reply::text(413, format!("request body over {limit} bytes\n"));
            return if drained { reply.into() } else { Answer::closing(reply) };
        }
        Ok(Body::Broken) => return Answer::closing(Reply::text(400, "the request body could not be read\n")),
        Err(_) => return Answer::closing(Reply::text(408, "the request body took too long\n")),
    };
    let request = match form::parse(&body) {
        Ok(r) => r,
        Err(e) => return Answer::closing(invalid_request(&e.to_string())),
    };
    let Ok(permit) = app.in_flight.clone().try_acquire_owned() else {
        app.shared.counters.requests_refused_busy.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = app.busy_log.allow() {
            log::warning(&format!(
                "temporary failure: too many introspections in flight ({} at most at once) (token {}){}",
                app.limits.max_in_flight,
                fingerprint(request.token.as_bytes()),
                more(n)
            ));
        }
        return Reply::text(503, "temporary failure: too many requests in flight\n").into();
    };
    let token = request.token.into_bytes();
    let shown_token = fingerprint(&token);
    let auth = generation.auth.clone();
    // Its own task: the verdict is reached (and cached, for the other logins waiting on it) even if
    // this client goes away; the permit bounds how many run.
    let check = tokio::spawn(async move {
        let outcome = auth.introspect(&token).await;
        drop(permit);
        outcome
    });
    let deadline = verdict_deadline(settings);
    let outcome = match tokio::time::timeout(deadline, check).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            log::error(&format!("internal error while checking token {shown_token}: {e}{context}"));
            return Reply::text(500, "internal error\n").into();
        }
        Err(_) => {
            log::warning(&format!(
                "temporary failure: no verdict within {} s (token {shown_token}){context}",
                deadline.as_secs()
            ));
            return Reply::text(503, "temporary failure: no verdict in time\n").into();
        }
    };
    log_outcome(&generation.auth, &outcome, &context);
    introspect::reply(&outcome).into()
}

/// A request body as read.
pub(super) enum Body {
    Complete(Bytes),
    /// Over the limit; `drained` when the rest was read (and dropped) to its end, so the client sees
    /// the 413 on a clean connection instead of a reset.
    TooLarge {
        drained: bool,
    },
    Broken,
}

/// How much of an oversized body is read and dropped, at most, before giving up on it.
pub(super) const MAX_DRAINED_BYTES: usize = 1024 * 1024;

/// Reads a body of at most `limit` bytes; holds no more than that in memory.
pub(super) async fn read_body(mut body: Incoming, limit: usize) -> Body {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Body::Broken };
        let Some(data) = frame.data_ref() else { continue };
        seen += data.len();
        if seen <= limit {
            kept.extend_from_slice(data);
        } else if seen > limit + MAX_DRAINED_BYTES {
            return Body::TooLarge { drained: false };
        }
    }
    if seen > limit {
        Body::TooLarge { drained: true }
    } else {
        Body::Complete(Bytes::from(kept))
    }
}

/// What Dovecot says about the login when `send_auth_headers = yes` on its side (the client's address
/// and the service), for the log lines; escaped.
fn dovecot_context(req: &Request<Incoming>) -> String {
    let header = |name: &str| {
        req.headers().get(name).map(|v| shown(&String::from_utf8_lossy(v.as_bytes()))).filter(|v| !v.is_empty())
    };
    let mut parts = Vec::new();
    if let Some(service) = header("x-dovecot-auth-service") {
        parts.push(format!("service={service}"));
    }
    if let Some(remote) = header("x-dovecot-auth-remote") {
        parts.push(format!("remote={remote}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(" "))
    }
}

/// One line per refusal and temporary failure (as the engine words it), warnings, and acceptances
/// when `debug = yes`.
fn log_outcome(auth: &crate::lookup::Authenticator, outcome: &Outcome, context: &str) {
    for w in &outcome.warnings {
        log::warning(&format!("{w}{context}"));
    }
    let engine_line = |line: String| line.strip_prefix("dovecot-oauth2: ").map(str::to_string).unwrap_or(line);
    match &outcome.verdict {
        Verdict::Accept(_) => {
            if auth.settings().debug {
                let user = outcome.introspection.as_ref().map_or("?", |i| &i.username);
                log::info(&format!("{}{context}", engine_line(outcome.accept_line(&shown(user)))));
            }
        }
        Verdict::Reject(_) => {
            if let Some(line) = outcome.log_line() {
                log::info(&format!("{}{context}", engine_line(line)));
            }
        }
        Verdict::TempFail(_) => {
            if let Some(line) = outcome.log_line() {
                log::warning(&format!("{}{context}", engine_line(line)));
            }
        }
    }
    if let Some(line) = auth.stats_due_line() {
        log::info(&engine_line(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::DaemonConfig;
    use crate::lookup::Authenticator;
    use crate::testutil::{Canned, TestServer};
    use tokio::io::AsyncReadExt;

    const AUTH: &str = "Authorization: Basic ZG92ZWNvdDpzM2NyZXQtczNjcmV0LXMzY3JldA==\r\n"; // dovecot:s3cret-s3cret-s3cret

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A daemon front end on a loopback port, with `limits`, asking the provider at `provider_url`.
    async fn start(limits: Limits, provider_url: &str) -> (u16, watch::Sender<bool>) {
        let text = format!(
            "introspection_url = {provider_url}\nlisten_client_id = dovecot\nlisten_client_secret = s3cret-s3cret-s3cret\n"
        );
        let s = Settings::parse(std::path::Path::new("t.conf"), &text).unwrap();
        let config = DaemonConfig::from_settings(&s).unwrap();
        let generation = Generation { auth: Arc::new(Authenticator::new(s).unwrap()), config };
        let app = Arc::new(App::new(Arc::new(Shared::new("t.conf".into(), generation)), limits));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(app, Role::Main { metrics: true }, Listener::Tcp(listener), stopped));
        (port, stop)
    }

    /// Sends `request` on a new connection and reads until the daemon closes it.
    async fn exchange(port: u16, request: impl AsRef<str>) -> String {
        let request = request.as_ref();
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn introspect_request(token: &str) -> String {
        let body = format!("token={token}");
        format!(
            "POST /introspect HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/x-www-form-urlencoded\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn a_connection_beyond_the_limit_gets_a_canned_503_and_the_others_stay_served() {
        rt().block_on(async {
            let limits = Limits { max_connections: 2, ..LIMITS };
            let (port, _stop) = start(limits, "http://127.0.0.1:9/u").await;
            let idle1 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let idle2 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let third = exchange(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(third.starts_with("HTTP/1.1 503") && third.contains("too many connections"), "{third}");
            drop((idle1, idle2));
            // The slots free up once those connections are gone.
            let mut answer = String::new();
            for _ in 0..200 {
                answer = exchange(port, &format!("GET /health HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: close\r\n\r\n"))
                    .await;
                if answer.starts_with("HTTP/1.1 200") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        });
    }

    #[test]
    fn an_introspection_beyond_the_in_flight_limit_is_a_503_at_once() {
        rt().block_on(async {
            let srv =
                TestServer::start(Canned::json(200, r#"{"email":"a@x"}"#).delayed(Duration::from_millis(500))).await;
            let (port, _stop) = start(Limits { max_in_flight: 1, ..LIMITS }, &srv.url("/u")).await;
            let first = tokio::spawn(exchange(port, introspect_request("slow-token")));
            while srv.requests().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let second = exchange(port, &introspect_request("other-token")).await;
            assert!(second.starts_with("HTTP/1.1 503") && second.contains("too many requests in flight"), "{second}");
            let first = first.await.unwrap();
            assert!(
                first.starts_with("HTTP/1.1 200") && first.ends_with(r#"{"active":true,"username":"a@x"}"#),
                "{first}"
            );
        });
    }

    #[test]
    fn a_client_that_sends_no_headers_is_disconnected_after_the_header_timeout() {
        rt().block_on(async {
            let limits = Limits { header_read_timeout: Duration::from_millis(100), ..LIMITS };
            let (port, _stop) = start(limits, "http://127.0.0.1:9/u").await;
            let slow = exchange(port, "POST /introspect HTTP/1.1\r\nHost: x\r\n").await;
            assert!(!slow.starts_with("HTTP/1.1 200"), "closed without an answer or with an error: {slow}");
            let idle = exchange(port, "").await;
            assert_eq!(idle, "", "an idle connection is closed too");
        });
    }

    #[test]
    fn a_unix_socket_serves_dovecots_proxy_form_request() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"Alice@X"}"#)).await;
            let text = format!(
                "introspection_url = {}\nlisten_client_id = dovecot\nlisten_client_secret = s3cret-s3cret-s3cret\n",
                srv.url("/u")
            );
            let s = Settings::parse(std::path::Path::new("t.conf"), &text).unwrap();
            let config = DaemonConfig::from_settings(&s).unwrap();
            let generation = Generation { auth: Arc::new(Authenticator::new(s).unwrap()), config };
            let app = Arc::new(App::new(Arc::new(Shared::new("t.conf".into(), generation)), LIMITS));
            let path = std::env::temp_dir().join(format!("o2d-sock-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = Listener::Unix(UnixListener::bind(&path).unwrap(), path.clone());
            let (_stop, stopped) = watch::channel(false);
            tokio::spawn(accept_loop(app, Role::Main { metrics: true }, listener, stopped));
            // Dovecot 2.4 with http_client_proxy_socket_path: an absolute-form target, Host: localhost.
            let body = "token=abc";
            let request = format!(
                "POST http://localhost/introspect HTTP/1.1\r\nHost: localhost\r\n{AUTH}\
                 Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut sock = UnixStream::connect(&path).await.unwrap();
            sock.write_all(request.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut out)).await;
            let out = String::from_utf8_lossy(&out);
            assert!(out.starts_with("HTTP/1.1 200") && out.ends_with(r#"{"active":true,"username":"alice@x"}"#), "{out}");
            std::fs::remove_file(&path).unwrap();
        });
    }

    #[test]
    fn stopping_ends_the_accept_loop() {
        rt().block_on(async {
            let (port, stop) = start(LIMITS, "http://127.0.0.1:9/u").await;
            stop.send(true).unwrap();
            let mut refused = false;
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                    refused = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(refused, "the listener is closed once stopping");
        });
    }

    #[test]
    fn the_body_limit_holds_a_fully_percent_encoded_token_of_the_largest_size() {
        let s = Settings::parse(std::path::Path::new("t"), "introspection_url = http://i/u\nmax_token_bytes = 100\n")
            .unwrap();
        let body = format!("token={}&token_type_hint=access_token", "%2B".repeat(100));
        assert!(body.len() <= body_limit(&s));
    }

    #[test]
    fn the_verdict_deadline_leaves_time_for_three_provider_requests() {
        let s = Settings::parse(std::path::Path::new("t"), "introspection_url = http://i/u\ntimeout_msecs = 1000\n")
            .unwrap();
        assert!(verdict_deadline(&s) > Duration::from_secs(3));
    }

    #[test]
    fn repeated_events_are_logged_once_per_interval_with_a_count() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let l0 = LogLimiter::new(Duration::ZERO);
        assert_eq!((l0.allow(), l0.allow()), (Some(0), Some(0)));
    }

    #[test]
    fn the_canned_busy_reply_has_a_correct_length() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
    }
}
