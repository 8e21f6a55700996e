//! idp-stub: a loopback identity-provider stub fast enough not to be the bottleneck.
//!
//!   idp-stub gen   --count N --users U --out FILE [--prefix P]      opaque tokens (user<TAB>token)
//!   idp-stub mint  --count N --users U --out FILE --jwks-out FILE [--alg RS256] [--issuer I]
//!                  [--audience A] [--ttl-secs S]                     signed JWT access tokens
//!   idp-stub serve --tokens FILE[,FILE...] [--latency-ms 0] [--jwks FILE] [--issuer I]
//!                  [--port 0] [--port-file FILE] [--max-seconds 3600]
//!
//! serve answers, on 127.0.0.1 only, HTTP/1.1 with keep-alive:
//!   GET  /userinfo          Authorization: Bearer <token> -> 200 {"sub","email"} | 401
//!   POST /introspect        token=<token> (RFC 7662) -> {"active":true,"email","exp",...} | {"active":false}
//!   GET  /.well-known/openid-configuration, GET /jwks
//!   POST /instant           token=<token> -> {"active":true,"username","exp","scope"} | {"active":false}:
//!                           the shape of dovecot-oauth2d's reply, never delayed, not a provider request
//!                           (the "instant stub" a Dovecot 2.4 ceiling points its oauth2 client at)
//!   GET  /__stats           request counters (JSON), with the distinct tokens asked about at the
//!                           provider endpoints and the most requests for one token;
//!   POST /__reset           zeroes them
//!   POST /__revoke          token=<token>: userinfo answers 401 and introspection inactive from now on
//!   POST /__latency         ms=<n>: change the fixed latency
//!   POST /__quit            exit (also exits by itself after --max-seconds)
//! The fixed latency is added to every provider endpoint (userinfo, introspect, discovery, JWKS).

use dovecot_oauth2_benches::{bench_user, jwks, load_tokens, unix_now, Args, SigningKey};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const DEFAULT_ISSUER: &str = "https://idp.bench.test";
const DEFAULT_AUDIENCE: &str = "urn:dovecot";

fn main() {
    let mut argv = std::env::args().skip(1);
    let cmd = argv.next().unwrap_or_default();
    let res = match cmd.as_str() {
        "gen" => Args::parse(argv, &[]).and_then(|a| gen(&a)),
        "mint" => Args::parse(argv, &[]).and_then(|a| mint(&a)),
        "serve" => Args::parse(argv, &[]).and_then(|a| serve(&a)),
        _ => Err("usage: idp-stub gen|mint|serve [options] (see the source header)".into()),
    };
    if let Err(e) = res {
        eprintln!("idp-stub: {e}");
        std::process::exit(2);
    }
}

fn gen(a: &Args) -> Result<(), String> {
    use rand::Rng;
    let count: usize = a.num("count", 1000)?;
    let users: usize = a.num("users", 1000)?;
    let prefix = a.get("prefix").unwrap_or("bt");
    let mut rng = rand::thread_rng();
    let mut out = std::io::BufWriter::new(std::fs::File::create(a.req("out")?).map_err(|e| e.to_string())?);
    for i in 0..count {
        let r: u128 = rng.gen();
        writeln!(out, "{}\t{prefix}_{i:07}_{r:032x}", bench_user(i % users)).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

fn mint(a: &Args) -> Result<(), String> {
    let count: usize = a.num("count", 1000)?;
    let users: usize = a.num("users", 1000)?;
    let ttl: u64 = a.num("ttl-secs", 7200)?;
    let alg = a.get("alg").unwrap_or("RS256");
    let issuer = a.get("issuer").unwrap_or(DEFAULT_ISSUER);
    let aud = a.get("audience").unwrap_or(DEFAULT_AUDIENCE);
    let key = SigningKey::generate(alg);
    let now = unix_now();
    // RSA signing is slow: use both cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunks: Vec<Vec<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let key = &key;
                s.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let u = bench_user(i % users);
                            format!("{u}\t{}", key.mint(issuer, aud, &u, i, now, ttl))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(a.req("out")?).map_err(|e| e.to_string())?);
    for i in 0..count {
        writeln!(out, "{}", chunks[i % threads][i / threads]).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    std::fs::write(a.req("jwks-out")?, jwks(&[&key])).map_err(|e| e.to_string())
}

#[derive(Default)]
struct Counters {
    userinfo: AtomicU64,
    introspect: AtomicU64,
    discovery: AtomicU64,
    jwks: AtomicU64,
    unknown_token: AtomicU64,
    revoked_hits: AtomicU64,
    instant: AtomicU64,
    other: AtomicU64,
    connections: AtomicU64,
}

struct State {
    tokens: HashMap<String, String>,
    revoked: Mutex<HashSet<String>>,
    /// Provider requests (userinfo, introspect) per token since the last reset.
    asked: Mutex<HashMap<String, u32>>,
    latency_ms: AtomicU64,
    jwks: String,
    issuer: String,
    base_url: String,
    counters: Counters,
    quit: tokio::sync::Notify,
}

fn serve(a: &Args) -> Result<(), String> {
    let mut tokens = HashMap::new();
    for f in a.req("tokens")?.split(',').filter(|f| !f.is_empty()) {
        for (u, t) in load_tokens(Path::new(f)).map_err(|e| format!("{f}: {e}"))? {
            tokens.insert(t, u);
        }
    }
    let jwks = match a.get("jwks") {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?,
        None => r#"{"keys":[]}"#.to_string(),
    };
    let latency: u64 = a.num("latency-ms", 0)?;
    let port: u16 = a.num("port", 0)?;
    let max_secs: u64 = a.num("max-seconds", 3600)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state = Arc::new(State {
            tokens,
            revoked: Mutex::new(HashSet::new()),
            asked: Mutex::new(HashMap::new()),
            latency_ms: AtomicU64::new(latency),
            jwks,
            issuer: a.get("issuer").unwrap_or(DEFAULT_ISSUER).to_string(),
            base_url: format!("http://{addr}"),
            counters: Counters::default(),
            quit: tokio::sync::Notify::new(),
        });
        if let Some(pf) = a.get("port-file") {
            let tmp = format!("{pf}.tmp");
            std::fs::write(&tmp, addr.port().to_string()).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, pf).map_err(|e| e.to_string())?;
        }
        println!("idp-stub listening on {addr} with {} tokens, latency {latency} ms", state.tokens.len());
        let accept = {
            let state = state.clone();
            async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else { continue };
                    let _ = sock.set_nodelay(true);
                    state.counters.connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(conn(sock, state.clone()));
                }
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = state.quit.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(max_secs)) => { eprintln!("idp-stub: --max-seconds reached"); }
        }
        Ok::<(), String>(())
    })
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn conn(sock: TcpStream, state: Arc<State>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::with_capacity(16 * 1024, r);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut content_length = 0usize;
        let mut bearer = None;
        let mut close = http10;
        loop {
            let mut h = String::new();
            match r.read_line(&mut h).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.parse().unwrap_or(0),
                    "authorization" if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") => {
                        bearer = Some(v[7..].trim().to_string());
                    }
                    "connection" => {
                        if v.eq_ignore_ascii_case("close") {
                            close = true;
                        } else if v.eq_ignore_ascii_case("keep-alive") {
                            close = false;
                        }
                    }
                    _ => {}
                }
            }
        }
        if content_length > 1 << 20 {
            return;
        }
        let mut body = vec![0u8; content_length];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let path = target.split('?').next().unwrap_or("").to_string();
        let (status, json) = route(&state, &method, &path, bearer.as_deref(), &body).await;
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Other",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: max-age=3600\r\n{}\r\n",
            json.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(json.as_bytes());
        if w.write_all(&out).await.is_err() || close {
            return;
        }
    }
}

async fn route(state: &State, method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    let c = &state.counters;
    let provider = matches!(path, "/userinfo" | "/introspect" | "/jwks" | "/.well-known/openid-configuration");
    if provider {
        let ms = state.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    let lookup = |t: &str| -> Option<&String> {
        *state.asked.lock().unwrap().entry(t.to_string()).or_insert(0) += 1;
        let user = state.tokens.get(t);
        if user.is_none() {
            c.unknown_token.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if state.revoked.lock().unwrap().contains(t) {
            c.revoked_hits.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        user
    };
    match (method, path) {
        ("GET", "/userinfo") | ("POST", "/userinfo") => {
            c.userinfo.fetch_add(1, Ordering::Relaxed);
            match bearer.and_then(lookup) {
                Some(u) => (200, serde_json::json!({"sub": u, "email": u, "email_verified": true}).to_string()),
                None => (401, r#"{"error":"invalid_token"}"#.into()),
            }
        }
        ("POST", "/introspect") => {
            c.introspect.fetch_add(1, Ordering::Relaxed);
            match form_value(body, "token").as_deref().and_then(lookup) {
                Some(u) => (
                    200,
                    serde_json::json!({
                        "active": true, "sub": u, "email": u, "username": u, "client_id": "mail-client",
                        "scope": "openid email", "token_type": "Bearer", "iss": state.issuer,
                        "iat": unix_now(), "exp": unix_now() + 3600,
                    })
                    .to_string(),
                ),
                None => (200, r#"{"active":false}"#.into()),
            }
        }
        ("POST", "/instant") => {
            c.instant.fetch_add(1, Ordering::Relaxed);
            match form_value(body, "token").as_deref().and_then(|t| state.tokens.get(t)) {
                Some(u) => (
                    200,
                    serde_json::json!({"active": true, "username": u, "exp": unix_now() + 3600, "scope": "openid email"})
                        .to_string(),
                ),
                None => (200, r#"{"active":false}"#.into()),
            }
        }
        ("GET", "/.well-known/openid-configuration") => {
            c.discovery.fetch_add(1, Ordering::Relaxed);
            let b = &state.base_url;
            (
                200,
                serde_json::json!({
                    "issuer": state.issuer, "jwks_uri": format!("{b}/jwks"),
                    "userinfo_endpoint": format!("{b}/userinfo"),
                    "introspection_endpoint": format!("{b}/introspect"),
                })
                .to_string(),
            )
        }
        ("GET", "/jwks") => {
            c.jwks.fetch_add(1, Ordering::Relaxed);
            (200, state.jwks.clone())
        }
        ("GET", "/__stats") => {
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let provider = l(&c.userinfo) + l(&c.introspect) + l(&c.discovery) + l(&c.jwks);
            let (distinct, most) = {
                let asked = state.asked.lock().unwrap();
                (asked.len(), asked.values().copied().max().unwrap_or(0))
            };
            (
                200,
                serde_json::json!({
                    "userinfo": l(&c.userinfo), "introspect": l(&c.introspect), "discovery": l(&c.discovery),
                    "jwks": l(&c.jwks), "provider_requests": provider, "unknown_token": l(&c.unknown_token),
                    "revoked_hits": l(&c.revoked_hits), "other": l(&c.other), "connections": l(&c.connections),
                    "instant": l(&c.instant), "distinct_tokens": distinct, "most_requests_for_one_token": most,
                    "latency_ms": state.latency_ms.load(Ordering::Relaxed), "tokens": state.tokens.len(),
                })
                .to_string(),
            )
        }
        ("POST", "/__reset") => {
            for a in [
                &c.userinfo,
                &c.introspect,
                &c.discovery,
                &c.jwks,
                &c.unknown_token,
                &c.revoked_hits,
                &c.instant,
                &c.other,
                &c.connections,
            ] {
                a.store(0, Ordering::Relaxed);
            }
            state.asked.lock().unwrap().clear();
            (200, "{}".into())
        }
        ("POST", "/__revoke") => match form_value(body, "token") {
            Some(t) => {
                state.revoked.lock().unwrap().insert(t);
                (200, "{}".into())
            }
            None => (404, "{}".into()),
        },
        ("POST", "/__latency") => match form_value(body, "ms").and_then(|v| v.parse().ok()) {
            Some(ms) => {
                state.latency_ms.store(ms, Ordering::Relaxed);
                (200, "{}".into())
            }
            None => (404, "{}".into()),
        },
        ("POST", "/__quit") => {
            state.quit.notify_one();
            (200, "{}".into())
        }
        _ => {
            c.other.fetch_add(1, Ordering::Relaxed);
            (404, r#"{"error":"not_found"}"#.into())
        }
    }
}
