//! Signing keys for local JWT validation (`introspection_mode = local`).
//!
//! Each configured source, an OIDC discovery document (`openid_configuration_url`: its `issuer` and
//! `jwks_uri`) or a bare JWK Set (`jwks_url`), is fetched on the first login that needs it, never at
//! load, and its keys serve every later login of the process. A source is fetched again when its keys
//! are older than their allowed age, or when a token names a key id we do not hold (the provider
//! rotated its keys); never more often than `jwks_refetch_min_interval_secs`, so made-up key ids
//! cannot turn logins into a flood of requests. A failed fetch keeps the keys already held.
//!
//! Refreshes run inline, in the login that finds the keys stale: the engine's runtime only runs while
//! a login is being verified, so a background task would stall between logins with a connection open.

use crate::clock::Clock;
use crate::config::Settings;
use crate::errors::Unavailable;
use crate::http::{redact_url, Http};
use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use curve25519_dalek::edwards::CompressedEdwardsY;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long keys are kept when the provider sends no `Cache-Control: max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The bounds put on the provider's max-age: not refetched on every login, not kept for days.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(86_400);
/// RSA keys below this size are not used (RFC 7518 3.3).
const MIN_RSA_BITS: usize = 2048;

/// A public key and the algorithms it may verify: decided by the key (kty, crv, alg), never by a token.
#[derive(Debug)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// For messages: "RSA", "EC P-256", "OKP Ed25519".
    pub key_type: &'static str,
    /// The key parsed once for each algorithm it may verify. jsonwebtoken's `crypto::verify` rebuilds
    /// an RSA key (and its Montgomery context) from n and e on every call: a fifth of a local validation.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl VerifyKey {
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms().any(|a| a == alg)
    }

    /// Whether `signature` (raw bytes) signs `message` under this key with `alg`; false for an `alg`
    /// the key does not allow.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers.iter().any(|(a, key)| *a == alg && key.verify_sig(message, signature).is_ok())
    }
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The key parsed for `alg` with aws-lc's parameters for it (RFC 7518: ECDSA signatures are r||s);
/// an error if the material does not make a key of that kind.
fn parse_for(alg: Algorithm, key: &DecodingKey) -> Result<ParsedPublicKey, String> {
    let unusable = |e: aws_lc_rs::error::KeyRejected| format!("unusable key material: {e}");
    match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            let params = rsa_parameters(alg).ok_or_else(|| format!("{alg:?} is not an RSA algorithm"))?;
            signature::RsaPublicKeyComponents { n: &n[..], e: &e[..] }.to_parsed_public_key(params).map_err(unusable)
        }
        // EC points and Ed25519 keys (jsonwebtoken gives RSA JWKs as n and e, above).
        DecodingKeyKind::SecretOrDer(bytes) => {
            let params: &'static dyn VerificationAlgorithm = match alg {
                Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                Algorithm::EdDSA => &signature::ED25519,
                _ => return Err(format!("{alg:?} does not fit an EC or OKP key")),
            };
            ParsedPublicKey::new(params, bytes).map_err(unusable)
        }
    }
}

/// Which issuers a source's keys verify tokens of: never any other.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A discovery document: the `issuer` it announces.
    Discovery,
    /// A bare key set: the issuers the settings bind to it.
    Jwks { issuers: Vec<String> },
}

struct Source {
    kind: Kind,
    url: String,
    state: Mutex<State>,
    /// Held while fetching, so concurrent logins wait for one fetch instead of each making their own.
    fetching: tokio::sync::Mutex<()>,
}

impl Source {
    fn serves(&self, iss: &str) -> bool {
        match &self.kind {
            Kind::Discovery => self.state.lock().unwrap().issuer.as_deref() == Some(iss),
            Kind::Jwks { issuers } => issuers.iter().any(|i| i == iss),
        }
    }

    fn never_fetched(&self) -> Option<Unavailable> {
        let st = self.state.lock().unwrap();
        st.fetched_at.is_none().then(|| Unavailable::NoKeys {
            url: redact_url(&self.url),
            reason: st.last_error.as_ref().map_or("not fetched yet".into(), |e| e.to_string()),
        })
    }
}

#[derive(Default)]
struct State {
    keys: Vec<Arc<VerifyKey>>,
    /// Keys of the set that are not used, with why: a token naming one gets that reason.
    skipped: Vec<(Option<String>, String)>,
    /// The discovery document's `issuer` (discovery sources only).
    issuer: Option<String>,
    fetched_at: Option<Instant>,
    max_age: Duration,
    attempted_at: Option<Instant>,
    last_error: Option<Unavailable>,
}

/// Why a source is fetched now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Never fetched, or its keys are past their age.
    Due,
    /// A token names a key id the source did not have.
    UnknownKey,
}

/// Why the key store has no key for a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoKey {
    /// No source is bound to the token's issuer (and every discovery document has been read).
    #[error("no key source is bound to this issuer")]
    UnboundIssuer,
    /// The key the token names is in its issuer's set but is not used, with why.
    #[error("signing key is not usable: {0}")]
    Unusable(String),
    /// No key of the issuer's sources has the token's `kid`, even after fetching them again.
    #[error("no signing key with this kid for this issuer")]
    UnknownKid,
    /// A source that may hold the key has never been read.
    #[error("{0}")]
    Unavailable(Unavailable),
}

/// The keys of every configured source, shared by the process.
pub struct KeyStore {
    sources: Vec<Source>,
    min_interval: Duration,
    max_age_cap: Duration,
    /// Failed refreshes while older keys stay in use: worth a log line, not a failed login.
    notes: Mutex<Vec<String>>,
    clock: Clock,
}

impl KeyStore {
    pub fn new(s: &Settings, clock: Clock) -> KeyStore {
        let source = |kind, url: &str| Source {
            kind,
            url: url.to_string(),
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        };
        let mut sources: Vec<Source> = s.openid_configuration_url.iter().map(|u| source(Kind::Discovery, u)).collect();
        // Entries naming one key set share it: one fetch, bound to each of their issuers.
        for entry in &s.jwks_url {
            let same = sources.iter_mut().find(|src| src.url == entry.url && matches!(src.kind, Kind::Jwks { .. }));
            match same {
                Some(Source { kind: Kind::Jwks { issuers }, .. }) => issuers.push(entry.issuer.clone()),
                _ => sources.push(source(Kind::Jwks { issuers: vec![entry.issuer.clone()] }, &entry.url)),
            }
        }
        KeyStore {
            sources,
            min_interval: s.jwks_refetch_min_interval,
            max_age_cap: s.jwks_max_age,
            notes: Mutex::new(Vec::new()),
            clock,
        }
    }

    /// The keys that may verify a token of issuer `iss` naming `kid` (every key of the issuer when it
    /// names none): only keys of the sources bound to `iss`, never any other source's. Sources are
    /// fetched here as needed: when due, and once more when the issuer's keys lack `kid`.
    pub async fn keys_for(&self, http: &Http, iss: &str, kid: Option<&str>) -> Result<Vec<Arc<VerifyKey>>, NoKey> {
        self.refresh_due(http).await;
        let mut bound = self.bound_to(iss);
        if bound.is_empty() {
            // A discovery document not read yet may be the one announcing this issuer.
            return Err(self.unread_discovery().map_or(NoKey::UnboundIssuer, NoKey::Unavailable));
        }
        let mut keys = self.keys_of(&bound, kid);
        if keys.is_empty() {
            // The provider may have rotated its keys since we fetched them.
            for &i in &bound {
                self.refresh(http, i, Why::UnknownKey).await;
            }
            bound = self.bound_to(iss);
            keys = self.keys_of(&bound, kid);
        }
        if !keys.is_empty() {
            return Ok(keys);
        }
        // A source never read (one bound to the issuer, or a document that may announce it) may hold it.
        let unread = bound.iter().find_map(|&i| self.sources[i].never_fetched()).or_else(|| self.unread_discovery());
        if let Some(u) = unread {
            return Err(NoKey::Unavailable(u));
        }
        if bound.is_empty() {
            return Err(NoKey::UnboundIssuer);
        }
        match kid.and_then(|kid| self.skipped_reason(&bound, kid)) {
            Some(why) => Err(NoKey::Unusable(why)),
            None => Err(NoKey::UnknownKid),
        }
    }

    /// Fetches every source never fetched or whose keys are past their age (each rate limited).
    async fn refresh_due(&self, http: &Http) {
        for (i, src) in self.sources.iter().enumerate() {
            let due = {
                let st = src.state.lock().unwrap();
                st.fetched_at.is_none_or(|t| self.clock.since(t) >= st.max_age)
            };
            if due {
                self.refresh(http, i, Why::Due).await;
            }
        }
    }

    async fn refresh(&self, http: &Http, i: usize, why: Why) {
        let src = &self.sources[i];
        let _one_at_a_time = src.fetching.lock().await;
        {
            let mut st = src.state.lock().unwrap();
            // While the provider fails, keys held are fine: do not make a login wait for a timeout
            // more than once a minute.
            let failing_with_keys = st.last_error.is_some() && st.fetched_at.is_some();
            let interval = if failing_with_keys { self.min_interval.max(MIN_MAX_AGE) } else { self.min_interval };
            if st.attempted_at.is_some_and(|t| self.clock.since(t) < interval) {
                return;
            }
            // Another login may have fetched while this one waited for the lock.
            if why == Why::Due && st.fetched_at.is_some_and(|t| self.clock.since(t) < st.max_age) {
                return;
            }
            st.attempted_at = Some(self.clock.now());
        }
        // A stale pooled connection is retried once by Http::send.
        let result = fetch(http, src.kind == Kind::Discovery, &src.url, self.max_age_cap).await;
        let mut st = src.state.lock().unwrap();
        match result {
            Ok(f) => {
                st.keys = f.keys;
                st.skipped = f.skipped;
                st.issuer = f.issuer;
                st.max_age = f.max_age;
                st.fetched_at = Some(self.clock.now());
                st.last_error = None;
            }
            Err(e) => {
                if let Some(t) = st.fetched_at {
                    self.notes.lock().unwrap().push(format!(
                        "cannot refresh signing keys from {} ({e}); still using the {} keys fetched {} s ago",
                        redact_url(&src.url),
                        st.keys.len(),
                        self.clock.since(t).as_secs()
                    ));
                }
                st.last_error = Some(e);
            }
        }
    }

    /// The sources whose keys may verify tokens of `iss`.
    fn bound_to(&self, iss: &str) -> Vec<usize> {
        (0..self.sources.len()).filter(|&i| self.sources[i].serves(iss)).collect()
    }

    /// The keys of `sources` named `kid`, or all their keys when the token names none.
    fn keys_of(&self, sources: &[usize], kid: Option<&str>) -> Vec<Arc<VerifyKey>> {
        let mut out = Vec::new();
        for &i in sources {
            let st = self.sources[i].state.lock().unwrap();
            out.extend(st.keys.iter().filter(|k| kid.is_none() || k.kid.as_deref() == kid).cloned());
        }
        out
    }

    /// Why `kid` is in one of `sources`' key sets but not used (wrong `use`, weak RSA...), if it is.
    fn skipped_reason(&self, sources: &[usize], kid: &str) -> Option<String> {
        sources.iter().find_map(|&i| {
            let st = self.sources[i].state.lock().unwrap();
            st.skipped.iter().find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, why)| why.clone())
        })
    }

    /// Why a discovery document has not told its issuer yet, if one has not.
    fn unread_discovery(&self) -> Option<Unavailable> {
        self.sources.iter().filter(|s| s.kind == Kind::Discovery).find_map(Source::never_fetched)
    }

    /// Notes collected since the last call, for the log.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap())
    }
}

struct Fetched {
    issuer: Option<String>,
    keys: Vec<Arc<VerifyKey>>,
    skipped: Vec<(Option<String>, String)>,
    max_age: Duration,
}

/// Fetches a source: a discovery document and the key set it names, or a key set.
async fn fetch(http: &Http, discovery: bool, url: &str, cap: Duration) -> Result<Fetched, Unavailable> {
    let (issuer, jwks_url) = if discovery {
        let (doc, _) = get_json(http, url).await?;
        let bad = |reason: &str| Unavailable::BadReply { url: redact_url(url), reason: reason.into() };
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| bad("discovery document has no issuer"))?;
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| bad("discovery document has no http(s) jwks_uri"))?;
        (Some(issuer.to_string()), jwks.to_string())
    } else {
        (None, url.to_string())
    };
    let (set, cache_control) = get_json(http, &jwks_url).await?;
    let Some(Value::Array(list)) = set.get("keys") else {
        return Err(Unavailable::BadReply {
            url: redact_url(&jwks_url),
            reason: "not a JWK Set (no keys array)".into(),
        });
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for v in list {
        match parse_jwk(v) {
            Ok(k) => keys.push(Arc::new(k)),
            Err(why) => skipped.push((v.get("kid").and_then(Value::as_str).map(str::to_string), why)),
        }
    }
    if keys.is_empty() {
        let why: Vec<&str> = skipped.iter().map(|(_, w)| w.as_str()).collect();
        return Err(Unavailable::BadReply {
            url: redact_url(&jwks_url),
            reason: format!("no usable signing key in the set ({})", why.join("; ")),
        });
    }
    Ok(Fetched { issuer, keys, skipped, max_age: max_age(cache_control.as_deref()).min(cap) })
}

async fn get_json(http: &Http, url: &str) -> Result<(Map<String, Value>, Option<String>), Unavailable> {
    let reply = http.send(http.client().get(url).header("accept", "application/json"), url).await?;
    if reply.status != 200 {
        return Err(Unavailable::Status { url: redact_url(url), status: reply.status });
    }
    match serde_json::from_slice(&reply.body) {
        Ok(Value::Object(map)) => Ok((map, reply.cache_control)),
        Ok(_) => Err(Unavailable::BadReply { url: redact_url(url), reason: "not a JSON object".into() }),
        Err(e) => Err(Unavailable::BadReply { url: redact_url(url), reason: format!("not JSON: {e}") }),
    }
}

/// One JWK of a set, or why it is not used for verifying tokens.
pub fn parse_jwk(v: &Value) -> Result<VerifyKey, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let kid = obj.get("kid").and_then(Value::as_str).map(str::to_string);
    if let Some(u) = obj.get("use") {
        if u != "sig" {
            return Err(format!("use is {u}, not sig"));
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        if !ops.as_array().is_some_and(|ops| ops.iter().any(|o| o == "verify")) {
            return Err("key_ops does not include verify".into());
        }
    }
    let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let (key_type, family): (&'static str, &[Algorithm]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (
            "RSA",
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
        ),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => ("EC P-256", &[Algorithm::ES256]),
            EllipticCurve::P384 => ("EC P-384", &[Algorithm::ES384]),
            _ => return Err(format!("EC curve {:?} is not supported", p.curve)),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => ("OKP Ed25519", &[Algorithm::EdDSA]),
            _ => return Err(format!("OKP curve {:?} is not supported", p.curve)),
        },
        // A shared secret published as a "public" key would let anyone sign tokens.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are never used".into()),
        _ => return Err("key type is not RSA, EC or OKP".into()),
    };
    let algorithms = match obj.get("alg").and_then(Value::as_str) {
        None => family.to_vec(),
        // RFC 9864's fully-specified name for EdDSA over Ed25519.
        Some("Ed25519") if key_type == "OKP Ed25519" => vec![Algorithm::EdDSA],
        Some(a) => {
            let alg: Algorithm = a.parse().map_err(|_| format!("alg {a} is not a supported signature algorithm"))?;
            if !family.contains(&alg) {
                return Err(format!("alg {a} does not fit a {key_type} key"));
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    let size_ok = match (key_type, key.kind()) {
        ("RSA", DecodingKeyKind::RsaModulusExponent { n, .. }) => rsa_bits(n) >= MIN_RSA_BITS,
        ("EC P-256", DecodingKeyKind::SecretOrDer(point)) => point.len() == 65,
        ("EC P-384", DecodingKeyKind::SecretOrDer(point)) => point.len() == 97,
        ("OKP Ed25519", DecodingKeyKind::SecretOrDer(x)) => x.len() == 32,
        _ => false,
    };
    if !size_ok {
        return Err(match key.kind() {
            DecodingKeyKind::RsaModulusExponent { n, .. } => {
                format!("RSA key of {} bits is under {MIN_RSA_BITS}", rsa_bits(n))
            }
            _ => format!("{key_type} key has the wrong length"),
        });
    }
    if let ("OKP Ed25519", DecodingKeyKind::SecretOrDer(x)) = (key_type, key.kind()) {
        check_ed25519_point(x)?;
    }
    let verifiers = algorithms.iter().map(|&alg| Ok((alg, parse_for(alg, &key)?))).collect::<Result<_, String>>()?;
    Ok(VerifyKey { kid, key_type, verifiers })
}

/// Refuses Ed25519 public keys no private key can have: aws-lc checks none of this, and with a
/// small-order key (the identity point, say) a signature verifies for any message. The point must
/// decode (RFC 8032 5.1.3), be written canonically (y < p, so one key has one encoding), have no
/// small-order part (an honest key is a multiple of the prime-order base point).
fn check_ed25519_point(x: &[u8]) -> Result<(), String> {
    let bytes: [u8; 32] = x.try_into().map_err(|_| "OKP Ed25519 key has the wrong length")?;
    let encoded = CompressedEdwardsY(bytes);
    let point = encoded.decompress().ok_or("OKP Ed25519 key is not a point of the curve")?;
    if point.compress() != encoded {
        return Err("OKP Ed25519 key is not canonically encoded (y >= p)".into());
    }
    if point.is_small_order() {
        return Err("OKP Ed25519 key is a small-order point, for which signatures can be forged".into());
    }
    if !point.is_torsion_free() {
        return Err("OKP Ed25519 key has a small-order component, which no private key gives".into());
    }
    Ok(())
}

fn rsa_bits(n: &[u8]) -> usize {
    let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
    n.first().map_or(0, |b| (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize))
}

/// The provider's `Cache-Control` as a key lifetime, kept within [60 s, 24 h]; 1 h without max-age.
fn max_age(cache_control: Option<&str>) -> Duration {
    let mut age: Option<u64> = None;
    for directive in cache_control.unwrap_or("").split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            age = Some(0);
        } else if let Some(v) = d.strip_prefix("max-age=") {
            if let Ok(n) = v.trim_matches('"').parse::<u64>() {
                age = Some(age.map_or(n, |a| a.min(n)));
            }
        }
    }
    age.map_or(DEFAULT_MAX_AGE, |n| Duration::from_secs(n).clamp(MIN_MAX_AGE, MAX_MAX_AGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{jwks, Canned, TestKey, TestServer};
    use serde_json::json;

    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn cache_control_max_age_is_kept_within_a_minute_and_a_day() {
        assert_eq!(max_age(None), DEFAULT_MAX_AGE);
        assert_eq!(max_age(Some("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(max_age(Some("max-age=5")), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=9999999")), MAX_MAX_AGE);
        assert_eq!(max_age(Some("no-store")), MIN_MAX_AGE);
        assert_eq!(max_age(Some("public")), DEFAULT_MAX_AGE);
    }

    #[test]
    fn ec_key_allows_only_its_curves_algorithm() {
        let k = parse_jwk(&json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "e"})).unwrap();
        assert_eq!(k.algorithms().collect::<Vec<_>>(), vec![Algorithm::ES256]);
        assert_eq!(k.kid.as_deref(), Some("e"));
    }

    #[test]
    fn key_whose_alg_does_not_fit_its_type_is_skipped() {
        let e = parse_jwk(&json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "alg": "RS256"})).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        assert!(parse_jwk(&json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"})).unwrap_err().contains("oct"));
        assert!(parse_jwk(&json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "use": "enc"})).is_err());
        assert!(
            parse_jwk(&json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "key_ops": ["encrypt"]})).is_err()
        );
    }

    #[test]
    fn weak_rsa_key_is_skipped() {
        use base64::Engine as _;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xffu8; 128]);
        let e = parse_jwk(&json!({"kty": "RSA", "n": n, "e": "AQAB"})).unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
    }

    fn ed25519_jwk(x: &[u8]) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": crate::testutil::b64url(x), "kid": "weak"})
    }

    #[test]
    fn small_order_ed25519_keys_are_skipped() {
        // The eight points of order dividing 8, the identity first: with one of them as the public
        // key, a signature that verifies for any message is easy to make.
        for point in curve25519_dalek::constants::EIGHT_TORSION {
            let e = parse_jwk(&ed25519_jwk(point.compress().as_bytes())).unwrap_err();
            assert!(e.contains("small-order"), "{e}");
        }
    }

    #[test]
    fn non_canonical_ed25519_key_encodings_are_skipped() {
        // y + p for y < 19: the point of y, written with y out of range (RFC 8032 5.1.3: y < p).
        let mut p = [0xffu8; 32];
        (p[0], p[31]) = (0xed, 0x7f);
        let mut large_order = 0;
        for y in 0..19u8 {
            let mut encoded = p;
            encoded[0] += y;
            let point = curve25519_dalek::edwards::CompressedEdwardsY(encoded).decompress();
            large_order += point.is_some_and(|pt| !pt.is_small_order()) as usize;
            assert!(parse_jwk(&ed25519_jwk(&encoded)).is_err(), "y = p + {y}");
        }
        // Some of them are points of large order: refused for their encoding alone.
        assert!(large_order > 0);
    }

    #[test]
    fn ed25519_key_with_a_small_order_component_is_skipped() {
        let honest = curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
        assert!(parse_jwk(&ed25519_jwk(honest.compress().as_bytes())).is_ok());
        let mixed = honest + curve25519_dalek::constants::EIGHT_TORSION[1];
        assert!(parse_jwk(&ed25519_jwk(mixed.compress().as_bytes())).unwrap_err().contains("small-order component"));
    }

    #[test]
    fn ed25519_key_that_is_not_a_point_is_skipped() {
        // y = 2: (y^2 - 1) / (d y^2 + 1) has no square root mod p.
        let mut encoded = [0u8; 32];
        encoded[0] = 2;
        assert!(curve25519_dalek::edwards::CompressedEdwardsY(encoded).decompress().is_none());
        assert!(parse_jwk(&ed25519_jwk(&encoded)).unwrap_err().contains("not a point"));
    }

    fn store_for(jwks_url: &str) -> (KeyStore, Http) {
        let text = format!("introspection_mode = local\njwks_url = {jwks_url}=https://idp\n");
        let s = Settings::parse(std::path::Path::new("t.conf"), &text).unwrap();
        (KeyStore::new(&s, Clock::manual()), Http::new(&s, Default::default(), Clock::manual()).unwrap())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn providers_cache_control_sets_how_long_keys_are_kept() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = TestServer::routes(&[(
                "/k",
                Canned::json(200, &jwks(&[&k])).header("Cache-Control", "public, max-age=120"),
            )])
            .await;
            let (store, http) = store_for(&srv.url("/k"));
            store.refresh_due(&http).await;
            assert_eq!(store.sources[0].state.lock().unwrap().max_age, Duration::from_secs(120));
            assert_eq!(store.keys_for(&http, "https://idp", Some("e1")).await.unwrap().len(), 1);
        });
    }

    #[test]
    fn keys_past_their_age_are_fetched_again_and_fresh_ones_are_not() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = TestServer::routes(&[("/k", Canned::json(200, &jwks(&[&k])))]).await;
            let (store, http) = store_for(&srv.url("/k"));
            store.refresh_due(&http).await;
            store.refresh_due(&http).await;
            assert_eq!(srv.count("/k"), 1);
            // No Cache-Control: kept for an hour.
            store.clock.advance(DEFAULT_MAX_AGE - Duration::from_secs(1));
            store.refresh_due(&http).await;
            assert_eq!(srv.count("/k"), 1);
            store.clock.advance(Duration::from_secs(1));
            store.refresh_due(&http).await;
            assert_eq!(srv.count("/k"), 2);
        });
    }

    #[test]
    fn entries_naming_one_key_set_share_it_and_bind_only_their_issuers() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = TestServer::routes(&[("/k", Canned::json(200, &jwks(&[&k])))]).await;
            let url = srv.url("/k");
            let text = format!("introspection_mode = local\njwks_url = {url}=https://one {url}=https://two\n");
            let s = Settings::parse(std::path::Path::new("t.conf"), &text).unwrap();
            let (store, http) =
                (KeyStore::new(&s, Clock::manual()), Http::new(&s, Default::default(), Clock::manual()).unwrap());
            assert_eq!(store.sources.len(), 1);
            assert_eq!(store.keys_for(&http, "https://one", Some("e1")).await.unwrap().len(), 1);
            assert_eq!(store.keys_for(&http, "https://two", None).await.unwrap().len(), 1);
            assert_eq!(store.keys_for(&http, "https://three", Some("e1")).await.unwrap_err(), NoKey::UnboundIssuer);
            assert_eq!(store.keys_for(&http, "https://one", Some("e2")).await.unwrap_err(), NoKey::UnknownKid);
            assert_eq!(srv.count("/k"), 1);
        });
    }

    #[test]
    fn key_set_without_a_usable_key_is_an_unusable_reply() {
        rt().block_on(async {
            let srv =
                TestServer::routes(&[("/k", Canned::json(200, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#))]).await;
            let (store, http) = store_for(&srv.url("/k"));
            store.refresh_due(&http).await;
            let u = store.sources[0].never_fetched().unwrap();
            assert!(u.to_string().contains("no usable signing key"), "{u}");
        });
    }

    #[test]
    fn rsa_bit_length_ignores_leading_zeros() {
        assert_eq!(rsa_bits(&[0, 0x01, 0]), 9);
        assert_eq!(rsa_bits(&[0x80; 256]), 2048);
    }
}
