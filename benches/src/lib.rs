//! Shared pieces of the benchmark tools: the token file and JWT signing keys.
//!
//! Token file: one login per line, `user<TAB>token`. The stub answers for exactly these tokens; the
//! load generator logs in with them.

use base64::Engine as _;
use std::io::{BufRead, BufReader};
use std::path::Path;

pub fn load_tokens(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::with_capacity(1 << 20, f).lines() {
        let line = line?;
        if let Some((u, t)) = line.split_once('\t') {
            out.push((u.to_string(), t.to_string()));
        }
    }
    Ok(out)
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The user name of benchmark user `i` (the runner puts the same names in Dovecot's userdb).
pub fn bench_user(i: usize) -> String {
    format!("u{i:05}@bench.test")
}

/// A signing key of one algorithm, its public JWK and token minting.
pub struct SigningKey {
    pub alg: jsonwebtoken::Algorithm,
    pub kid: String,
    enc: jsonwebtoken::EncodingKey,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    fn new(alg: jsonwebtoken::Algorithm, kid: &str, enc: jsonwebtoken::EncodingKey) -> SigningKey {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_string());
        SigningKey { alg, kid: kid.to_string(), enc, jwk: serde_json::to_value(jwk).expect("jwk json") }
    }

    /// A fresh key for `alg` (RS256/RS384/RS512/PS256 use one 2048-bit RSA key; ES256, ES384, EdDSA).
    pub fn generate(alg: &str) -> SigningKey {
        use jsonwebtoken::{Algorithm, EncodingKey};
        let mut rng = rand::thread_rng();
        let kid = format!("bench-{}", alg.to_ascii_lowercase());
        match alg {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                let k = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa keygen");
                let der = k.to_pkcs1_der().expect("der");
                SigningKey::new(alg.parse().expect("alg"), &kid, EncodingKey::from_rsa_der(der.as_bytes()))
            }
            "ES256" => {
                use p256::pkcs8::EncodePrivateKey;
                let der = p256::SecretKey::random(&mut rng).to_pkcs8_der().expect("der");
                SigningKey::new(Algorithm::ES256, &kid, EncodingKey::from_ec_der(der.as_bytes()))
            }
            "ES384" => {
                use p384::pkcs8::EncodePrivateKey;
                let der = p384::SecretKey::random(&mut rng).to_pkcs8_der().expect("der");
                SigningKey::new(Algorithm::ES384, &kid, EncodingKey::from_ec_der(der.as_bytes()))
            }
            "EdDSA" => {
                // jsonwebtoken wants the 48-byte PKCS#8 v1 form (no public key).
                let seed = ed25519_dalek::SigningKey::generate(&mut rng).to_bytes();
                let mut der = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
                ];
                der.extend_from_slice(&seed);
                SigningKey::new(Algorithm::EdDSA, &kid, EncodingKey::from_ed_der(&der))
            }
            other => panic!("unsupported algorithm {other}"),
        }
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": format!("{:?}", self.alg), "kid": self.kid, "typ": "at+jwt"});
        let signed = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let sig = jsonwebtoken::crypto::sign(signed.as_bytes(), &self.enc, self.alg).expect("sign");
        format!("{signed}.{sig}")
    }

    /// An access token for `user` as a provider would mint it.
    pub fn mint(&self, issuer: &str, audience: &str, user: &str, serial: usize, now: u64, ttl: u64) -> String {
        self.sign(&serde_json::json!({
            "iss": issuer,
            "sub": user,
            "aud": audience,
            "email": user,
            "scope": "openid email",
            "client_id": "mail-client",
            "iat": now,
            "exp": now + ttl,
            "jti": format!("bench-{serial}"),
        }))
    }
}

pub fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Minimal `--key value` argument parsing (no dependency for it).
pub struct Args {
    pairs: Vec<(String, String)>,
    pub flags: Vec<String>,
}

impl Args {
    pub fn parse(args: impl Iterator<Item = String>, flags: &[&str]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut fl = Vec::new();
        let mut it = args.peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else { return Err(format!("unexpected argument {a}")) };
            if let Some((k, v)) = name.split_once('=') {
                pairs.push((k.to_string(), v.to_string()));
            } else if flags.contains(&name) {
                fl.push(name.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                pairs.push((name.to_string(), v));
            }
        }
        Ok(Args { pairs, flags: fl })
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    pub fn req(&self, k: &str) -> Result<&str, String> {
        self.get(k).ok_or_else(|| format!("--{k} is required"))
    }
    pub fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, String> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v}")),
        }
    }
    pub fn flag(&self, k: &str) -> bool {
        self.flags.iter().any(|f| f == k)
    }
}

/// A running `idp-stub serve` (for the microbenchmarks and the profiling helper), stopped on drop.
pub struct StubProcess {
    child: std::process::Child,
    pub port: u16,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("o2bench-{tag}-{}-{}", std::process::id(), unix_now()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl StubProcess {
    /// Starts the stub binary with `tokens` (user, token) and the public keys of `keys`.
    pub fn start(exe: &Path, tokens: &[(String, String)], keys: &[&SigningKey]) -> StubProcess {
        let dir = TempDir::new("stub");
        let tf = dir.0.join("tokens.tsv");
        let body: String = tokens.iter().map(|(u, t)| format!("{u}\t{t}\n")).collect();
        std::fs::write(&tf, body).expect("token file");
        let jf = dir.0.join("jwks.json");
        std::fs::write(&jf, jwks(keys)).expect("jwks file");
        let pf = dir.0.join("port");
        let child = std::process::Command::new(exe)
            .args(["serve", "--tokens"])
            .arg(&tf)
            .arg("--jwks")
            .arg(&jf)
            .arg("--port-file")
            .arg(&pf)
            .args(["--max-seconds", "1800"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start idp-stub");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let port = loop {
            if let Ok(s) = std::fs::read_to_string(&pf) {
                break s.trim().parse().expect("port");
            }
            assert!(std::time::Instant::now() < deadline, "idp-stub did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        StubProcess { child, port, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for StubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An engine for `settings` text (written to a settings file in a temp dir, as Dovecot's would be).
pub fn engine(settings: &str) -> dovecot_oauth2::Engine {
    let s = dovecot_oauth2::Settings::parse(Path::new("bench.conf"), settings).expect("settings");
    dovecot_oauth2::Engine::new(s).expect("engine")
}
