//! A loopback HTTP/1.1 server for the engine's unit tests: canned replies (one for every path, or one
//! per path, replaceable while running), optional delay and headers, a record of the requests it saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct Canned {
    status: u16,
    body: String,
    delay: Duration,
    headers: Vec<(String, String)>,
}

impl Canned {
    pub fn json(status: u16, body: &str) -> Canned {
        Canned { status, body: body.to_string(), delay: Duration::ZERO, headers: Vec::new() }
    }
    pub fn delayed(mut self, d: Duration) -> Canned {
        self.delay = d;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// The replies: by exact path (query ignored), else the default, else 404.
#[derive(Default)]
struct Replies {
    default: Option<Canned>,
    by_path: HashMap<String, Canned>,
}

impl Replies {
    fn for_request(&self, req: &str) -> Canned {
        let path = req.split_whitespace().nth(1).unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path);
        self.by_path.get(path).or(self.default.as_ref()).cloned().unwrap_or_else(|| Canned::json(404, "{}"))
    }
}

pub struct TestServer {
    port: u16,
    replies: Arc<Mutex<Replies>>,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TestServer {
    pub async fn start(reply: Canned) -> TestServer {
        TestServer::serve(Replies { default: Some(reply), by_path: HashMap::new() }).await
    }

    /// A server answering each listed path with its own reply (404 elsewhere).
    pub async fn routes(routes: &[(&str, Canned)]) -> TestServer {
        let by_path = routes.iter().map(|(p, c)| (p.to_string(), c.clone())).collect();
        TestServer::serve(Replies { default: None, by_path }).await
    }

    /// Replaces (or adds) the reply for `path`, as a provider rotating its keys would.
    pub fn set(&self, path: &str, reply: Canned) {
        self.replies.lock().unwrap().by_path.insert(path.to_string(), reply);
    }

    /// How many requests asked for `path` (query ignored).
    pub fn count(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.split_whitespace().nth(1).is_some_and(|p| p.split('?').next() == Some(path)))
            .count()
    }

    async fn serve(replies: Replies) -> TestServer {
        let replies = Arc::new(Mutex::new(replies));
        let replies2 = replies.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let replies = replies2.clone();
                let seen = seen2.clone();
                let conn = tokio::spawn(async move {
                    loop {
                        let Some(req) = read_request(&mut sock).await else { return };
                        let reply = replies.lock().unwrap().for_request(&req);
                        seen.lock().unwrap().push(req);
                        tokio::time::sleep(reply.delay).await;
                        let extra: String = reply.headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                        let resp = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{}",
                            reply.status,
                            reply.body.len(),
                            reply.body
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        TestServer { port, replies, seen, task, conns }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting and drops every open connection, as a provider going down would.
    pub async fn stop(self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.task.abort();
        let _ = self.task.await;
    }

    /// A loopback port with nothing listening.
    pub fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some(String::from_utf8_lossy(&buf[..end + 4 + len]).to_string());
        }
    }
}

/// A signing key made for a test, its public JWK, and token minting (including tokens no honest
/// provider would mint: any header, any claims).
pub struct TestKey {
    pub alg: jsonwebtoken::Algorithm,
    pub kid: String,
    enc: jsonwebtoken::EncodingKey,
    /// The public JWK, with `kid` and `alg`.
    pub jwk: serde_json::Value,
}

/// RSA generation is slow; the tests share two keys per process.
fn rsa_der(which: usize) -> Vec<u8> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    static KEYS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        (0..2)
            .map(|_| {
                let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
                k.to_pkcs1_der().unwrap().as_bytes().to_vec()
            })
            .collect()
    })[which]
        .clone()
}

impl TestKey {
    fn new(alg: jsonwebtoken::Algorithm, kid: &str, enc: jsonwebtoken::EncodingKey) -> TestKey {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        TestKey { alg, kid: kid.to_string(), enc, jwk: serde_json::to_value(jwk).unwrap() }
    }

    /// RSA key number `which` (0 or 1) of this process, for an RS*/PS* algorithm.
    pub fn rsa(alg: jsonwebtoken::Algorithm, kid: &str, which: usize) -> TestKey {
        TestKey::new(alg, kid, jsonwebtoken::EncodingKey::from_rsa_der(&rsa_der(which)))
    }

    pub fn es256(kid: &str) -> TestKey {
        use p256::pkcs8::EncodePrivateKey;
        let der = p256::SecretKey::random(&mut rand::thread_rng()).to_pkcs8_der().unwrap();
        TestKey::new(jsonwebtoken::Algorithm::ES256, kid, jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()))
    }

    pub fn es384(kid: &str) -> TestKey {
        use p384::pkcs8::EncodePrivateKey;
        let der = p384::SecretKey::random(&mut rand::thread_rng()).to_pkcs8_der().unwrap();
        TestKey::new(jsonwebtoken::Algorithm::ES384, kid, jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()))
    }

    pub fn ed25519(kid: &str) -> TestKey {
        // jsonwebtoken wants the 48-byte PKCS#8 v1 form (no public key), which ed25519-dalek does not write.
        let seed = ed25519_dalek::SigningKey::generate(&mut rand::thread_rng()).to_bytes();
        let mut der =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(&seed);
        TestKey::new(jsonwebtoken::Algorithm::EdDSA, kid, jsonwebtoken::EncodingKey::from_ed_der(&der))
    }

    /// The usual header: this key's alg and kid, typ JWT.
    pub fn header(&self) -> serde_json::Value {
        serde_json::json!({"alg": format!("{:?}", self.alg), "kid": self.kid, "typ": "JWT"})
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_with(&self.header(), claims)
    }

    /// Signs with this key whatever the header says.
    pub fn sign_with(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signed = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let sig = jsonwebtoken::crypto::sign(signed.as_bytes(), &self.enc, self.alg).unwrap();
        format!("{signed}.{sig}")
    }
}

pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWK Set document of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}
