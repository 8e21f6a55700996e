//! Local validation of JWT access tokens (`introspection_mode = local`): the header is checked, the key
//! is chosen by `kid` among the keys of the token's issuer, the signature is checked with an algorithm
//! that key allows (never one the token alone asks for), then the claims go through the same rules as
//! every other mode ([`claims::check`]).
//!
//! Issuer rule: with `issuers` set, exactly those `iss` values are accepted; without it, the issuers
//! announced by the `openid_configuration_url` documents. `iss` is required either way.

use crate::claims::{self, Claims, Identity};
use crate::config::Settings;
use crate::errors::{AuthError, Rejection};
use crate::http::Http;
use crate::jwks::KeyStore;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Map, Value};

/// A JWS compact token, split and decoded but not yet trusted.
#[derive(Debug)]
pub struct Jwt<'a> {
    header: Map<String, Value>,
    claims: Claims,
    /// `header.payload`: what the signature covers.
    signed: &'a str,
    signature: &'a str,
}

/// What a token looks like before any key is involved.
#[derive(Debug)]
pub enum Shape<'a> {
    /// Three parts with a JSON header: a JWT, well formed or not.
    Jwt(Result<Jwt<'a>, Rejection>),
    /// Anything else. With a reason when it had three parts (a broken JWT, or an opaque token with
    /// two dots: only a provider can tell).
    Opaque(Option<&'static str>),
}

fn b64_json(part: &str) -> Option<Map<String, Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

pub fn shape(token: &str) -> Shape<'_> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Shape::Opaque(None);
    };
    let Some(header_json) = b64_json(header) else {
        return Shape::Opaque(Some("JWT header is not base64url-encoded JSON"));
    };
    let Some(claims) = b64_json(payload) else {
        return Shape::Jwt(Err(Rejection::Malformed("JWT payload is not base64url-encoded JSON")));
    };
    if base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Shape::Jwt(Err(Rejection::Malformed("JWT signature is not base64url")));
    }
    let signed = &token[..header.len() + 1 + payload.len()];
    Shape::Jwt(Ok(Jwt { header: header_json, claims, signed, signature }))
}

/// A value from the token as logs may show it: short, no control characters.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The algorithm the header asks for, if it is one a provider's public key may have signed with.
fn check_header(h: &Map<String, Value>) -> Result<Algorithm, Rejection> {
    let Some(Value::String(alg)) = h.get("alg") else {
        return Err(Rejection::Malformed("JWT header has no alg"));
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(Rejection::Unsigned);
    }
    // HS*: the "secret" would be the provider's public key, which anyone can read (alg confusion).
    if alg.to_ascii_uppercase().starts_with("HS") {
        return Err(Rejection::HmacAlgorithm(shown(alg)));
    }
    let parsed: Algorithm = alg.parse().map_err(|_| Rejection::UnsupportedAlgorithm(shown(alg)))?;
    if parsed.family() == AlgorithmFamily::Hmac {
        return Err(Rejection::HmacAlgorithm(shown(alg)));
    }
    match h.get("typ") {
        None => {}
        Some(Value::String(t))
            if ["jwt", "at+jwt", "application/jwt", "application/at+jwt"]
                .contains(&t.to_ascii_lowercase().as_str()) => {}
        Some(Value::String(t)) => return Err(Rejection::WrongType(shown(t))),
        Some(other) => return Err(Rejection::WrongType(shown(&other.to_string()))),
    }
    // RFC 7515 4.1.11: extensions marked critical must be understood; this module implements none.
    if let Some(crit) = h.get("crit") {
        return Err(Rejection::CriticalHeader(shown(&crit.to_string())));
    }
    Ok(parsed)
}

/// Verifies a JWT for a login (or for the token alone, [`claims::Login::Token`]). Key fetches happen here, lazily; a `jku`, `x5u` or embedded `jwk`
/// in the header is never used: keys only come from the configured sources.
pub async fn validate(
    keys: &KeyStore,
    http: &Http,
    s: &Settings,
    jwt: &Jwt<'_>,
    login: claims::Login<'_>,
    now: u64,
) -> Result<Identity, AuthError> {
    let alg = check_header(&jwt.header)?;
    let kid = match jwt.header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(Rejection::Malformed("JWT kid is not a string").into()),
    };
    let Some(Value::String(iss)) = jwt.claims.get("iss") else {
        return Err(Rejection::MissingClaim("iss").into());
    };
    // Pinned issuers refuse a stranger's token before any key is fetched.
    if !s.issuers.is_empty() && !s.issuers.contains(iss) {
        return Err(Rejection::WrongIssuer(shown(iss)).into());
    }
    keys.refresh_due(http).await;
    if s.issuers.is_empty() && !keys.discovered_issuers().contains(iss) {
        // A discovery document not read yet may be the one announcing this issuer.
        if let Some(u) = keys.undiscovered() {
            return Err(u.into());
        }
        return Err(Rejection::WrongIssuer(shown(iss)).into());
    }
    let sources = keys.sources_for(iss)?;
    let mut candidates = keys.keys(&sources, kid);
    if candidates.is_empty() {
        // The provider may have rotated its keys since we fetched them.
        keys.refresh_for_unknown_key(http, &sources).await;
        candidates = keys.keys(&sources, kid);
    }
    if candidates.is_empty() {
        if let Some(u) = keys.never_fetched(&sources) {
            return Err(u.into());
        }
        let kid = kid.unwrap_or("(none named)");
        if let Some(why) = keys.skipped_reason(&sources, kid) {
            return Err(Rejection::Invalid(format!("signing key '{}' is not usable: {why}", shown(kid))).into());
        }
        return Err(Rejection::UnknownKey(shown(kid)).into());
    }
    let usable: Vec<_> = candidates.iter().filter(|k| k.allows(alg)).collect();
    if usable.is_empty() {
        return Err(Rejection::KeyAlgorithmMismatch {
            kid: shown(kid.unwrap_or("(any)")),
            key_type: candidates[0].key_type.to_string(),
            alg: format!("{alg:?}"),
        }
        .into());
    }
    let signature =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.signature).map_err(|_| Rejection::BadSignature)?;
    let verified = usable.iter().any(|k| k.verifies(alg, jwt.signed.as_bytes(), &signature));
    if !verified {
        return Err(Rejection::BadSignature.into());
    }
    // A locally checked token cannot be revoked: it must say when it ends (RFC 9068 requires exp).
    if !matches!(jwt.claims.get("exp"), Some(Value::Number(_))) {
        return Err(Rejection::MissingClaim("exp").into());
    }
    Ok(claims::check_login(s, &jwt.claims, login, now)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn two_dot_opaque_token_is_opaque_with_a_reason() {
        assert!(matches!(shape("abc.def.ghi"), Shape::Opaque(Some(_))));
        assert!(matches!(shape("opaque-token"), Shape::Opaque(None)));
        assert!(matches!(shape("a.b"), Shape::Opaque(None)));
    }

    #[test]
    fn payload_that_is_not_json_is_malformed() {
        let t = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64("not json"));
        assert!(matches!(shape(&t), Shape::Jwt(Err(Rejection::Malformed(_)))));
    }

    #[test]
    fn payload_that_is_not_base64url_is_malformed() {
        let t = format!("{}.e30+.c2ln", b64(r#"{"alg":"RS256"}"#));
        assert!(matches!(shape(&t), Shape::Jwt(Err(Rejection::Malformed(_)))));
    }

    #[test]
    fn header_checks_take_nothing_but_public_key_algorithms() {
        let h = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(check_header(&h(serde_json::json!({"alg": "none"}))), Err(Rejection::Unsigned));
        assert_eq!(
            check_header(&h(serde_json::json!({"alg": "HS256"}))),
            Err(Rejection::HmacAlgorithm("HS256".into()))
        );
        assert!(matches!(
            check_header(&h(serde_json::json!({"alg": "ES512"}))),
            Err(Rejection::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(check_header(&h(serde_json::json!({}))), Err(Rejection::Malformed(_))));
        assert_eq!(check_header(&h(serde_json::json!({"alg": "PS384", "typ": "at+JWT"}))), Ok(Algorithm::PS384));
    }
}

/// Local validation end to end through [`Authenticator`], against a loopback provider serving
/// discovery and keys generated by the test.
#[cfg(test)]
mod local_tests {
    use crate::cache::Source;
    use crate::config::Settings;
    use crate::errors::{Rejection, Unavailable, Verdict};
    use crate::lookup::{unix_now, Authenticator};
    use crate::testutil::{b64url, jwks, Canned, TestKey, TestServer};
    use jsonwebtoken::Algorithm;
    use serde_json::{json, Value};
    use std::path::Path;
    use std::time::Duration;

    const DISCOVERY: &str = "/.well-known/openid-configuration";

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A provider publishing `keys` through discovery; its issuer is its base URL.
    async fn provider(keys: &[&TestKey]) -> TestServer {
        let srv = TestServer::routes(&[]).await;
        srv.set(
            DISCOVERY,
            Canned::json(200, &json!({"issuer": srv.url(""), "jwks_uri": srv.url("/jwks")}).to_string()),
        );
        srv.set("/jwks", Canned::json(200, &jwks(keys)));
        srv
    }

    fn local(srv: &TestServer, extra: &str) -> Authenticator {
        let text = format!(
            "introspection_mode = local\nopenid_configuration_url = {}\naudience = mail\n{extra}",
            srv.url(DISCOVERY)
        );
        Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap()
    }

    /// Claims a real access token for alice would carry.
    fn claims(srv: &TestServer) -> Value {
        let now = unix_now();
        json!({"iss": srv.url(""), "aud": "mail", "email": "alice@example.test", "sub": "1",
               "scope": "openid mail", "iat": now, "exp": now + 300})
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    async fn verdict(a: &Authenticator, token: &str) -> Verdict {
        a.verify("alice@example.test", token.as_bytes()).await.verdict
    }

    fn rejected(v: &Verdict) -> &Rejection {
        match v {
            Verdict::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn jwt_from_the_discovered_issuer_is_accepted_and_later_logins_make_no_request() {
        rt().block_on(async {
            let k = TestKey::rsa(Algorithm::RS256, "r1", 0);
            let srv = provider(&[&k]).await;
            let a = local(&srv, "");
            let o = a.verify("alice@example.test", k.sign(&claims(&srv)).as_bytes()).await;
            assert_eq!(o.verdict, Verdict::Accept(vec![]));
            assert!(o.local && o.accept_line("alice@example.test").contains("checked locally"));
            let other = k.sign(&with(claims(&srv), "jti", json!("2")));
            assert_eq!(verdict(&a, &other).await, Verdict::Accept(vec![]));
            assert_eq!((srv.count(DISCOVERY), srv.count("/jwks")), (1, 1));
        });
    }

    #[test]
    fn keys_are_not_fetched_before_the_first_login() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let _a = local(&srv, "");
            assert!(srv.requests().is_empty());
        });
    }

    #[test]
    fn every_supported_algorithm_verifies() {
        rt().block_on(async {
            let keys = vec![
                TestKey::rsa(Algorithm::RS256, "rs256", 0),
                TestKey::rsa(Algorithm::RS384, "rs384", 0),
                TestKey::rsa(Algorithm::RS512, "rs512", 0),
                TestKey::rsa(Algorithm::PS256, "ps256", 1),
                TestKey::rsa(Algorithm::PS384, "ps384", 1),
                TestKey::rsa(Algorithm::PS512, "ps512", 1),
                TestKey::es256("es256"),
                TestKey::es384("es384"),
                TestKey::ed25519("eddsa"),
            ];
            let srv = provider(&keys.iter().collect::<Vec<_>>()).await;
            let a = local(&srv, "");
            for k in &keys {
                assert_eq!(verdict(&a, &k.sign(&claims(&srv))).await, Verdict::Accept(vec![]), "{}", k.kid);
            }
        });
    }

    #[test]
    fn unsigned_alg_none_token_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let t =
                format!("{}.{}.", b64url(br#"{"alg":"none","kid":"e1"}"#), b64url(claims(&srv).to_string().as_bytes()));
            assert_eq!(rejected(&verdict(&local(&srv, ""), &t).await), &Rejection::Unsigned);
        });
    }

    #[test]
    fn hmac_token_signed_with_the_providers_public_key_is_rejected() {
        rt().block_on(async {
            let k = TestKey::rsa(Algorithm::RS256, "r1", 0);
            let srv = provider(&[&k]).await;
            // The attacker's "secret" is the public JWK anyone can download.
            let secret = jsonwebtoken::EncodingKey::from_secret(k.jwk.to_string().as_bytes());
            let signed =
                format!("{}.{}", b64url(br#"{"alg":"HS256","kid":"r1"}"#), b64url(claims(&srv).to_string().as_bytes()));
            let sig = jsonwebtoken::crypto::sign(signed.as_bytes(), &secret, Algorithm::HS256).unwrap();
            let e = verdict(&local(&srv, ""), &format!("{signed}.{sig}")).await;
            assert_eq!(rejected(&e), &Rejection::HmacAlgorithm("HS256".into()));
        });
    }

    #[test]
    fn jwk_of_another_key_type_than_the_tokens_alg_is_rejected() {
        rt().block_on(async {
            let ec = TestKey::es256("k");
            let rsa = TestKey::rsa(Algorithm::RS256, "k", 0);
            let srv = provider(&[&ec]).await;
            // Signed by an RSA key, named as the provider's EC key.
            let e = verdict(&local(&srv, ""), &rsa.sign(&claims(&srv))).await;
            assert!(
                matches!(rejected(&e), Rejection::KeyAlgorithmMismatch { key_type, .. } if key_type == "EC P-256"),
                "{e:?}"
            );
        });
    }

    #[test]
    fn algorithm_comes_from_the_jwk_alg_not_from_the_token() {
        rt().block_on(async {
            let rs = TestKey::rsa(Algorithm::RS256, "r1", 0);
            let ps = TestKey::rsa(Algorithm::PS256, "r1", 0);
            let srv = provider(&[&rs]).await;
            // Same RSA key, but the JWK says RS256: a PS256 token is not accepted with it.
            let e = verdict(&local(&srv, ""), &ps.sign(&claims(&srv))).await;
            assert!(matches!(rejected(&e), Rejection::KeyAlgorithmMismatch { .. }), "{e:?}");
        });
    }

    #[test]
    fn payload_edited_after_signing_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let t = k.sign(&with(claims(&srv), "email", json!("mallory@example.test")));
            let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
            parts[1] = b64url(claims(&srv).to_string().as_bytes());
            assert_eq!(rejected(&verdict(&local(&srv, ""), &parts.join(".")).await), &Rejection::BadSignature);
        });
    }

    #[test]
    fn signature_by_another_key_under_a_known_kid_is_rejected() {
        rt().block_on(async {
            let real = TestKey::ed25519("k");
            let forged = TestKey::ed25519("k");
            let srv = provider(&[&real]).await;
            assert_eq!(
                rejected(&verdict(&local(&srv, ""), &forged.sign(&claims(&srv))).await),
                &Rejection::BadSignature
            );
        });
    }

    #[test]
    fn expired_token_is_rejected_after_the_leeway() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "leeway_secs = 60\n");
            let now = unix_now();
            assert_eq!(
                verdict(&a, &k.sign(&with(claims(&srv), "exp", json!(now - 30)))).await,
                Verdict::Accept(vec![])
            );
            let e = verdict(&a, &k.sign(&with(claims(&srv), "exp", json!(now - 120)))).await;
            assert!(matches!(rejected(&e), Rejection::Expired(_)), "{e:?}");
        });
    }

    #[test]
    fn not_yet_valid_token_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), &k.sign(&with(claims(&srv), "nbf", json!(unix_now() + 600)))).await;
            assert!(matches!(rejected(&e), Rejection::NotYetValid(_)), "{e:?}");
        });
    }

    #[test]
    fn token_issued_in_the_future_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), &k.sign(&with(claims(&srv), "iat", json!(unix_now() + 600)))).await;
            assert!(matches!(rejected(&e), Rejection::IssuedInFuture(_)), "{e:?}");
        });
    }

    #[test]
    fn token_without_exp_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), &k.sign(&without(claims(&srv), "exp"))).await;
            assert_eq!(rejected(&e), &Rejection::MissingClaim("exp"));
        });
    }

    #[test]
    fn token_from_another_issuer_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), &k.sign(&with(claims(&srv), "iss", json!("https://evil.test")))).await;
            assert_eq!(rejected(&e), &Rejection::WrongIssuer("https://evil.test".into()));
        });
    }

    #[test]
    fn token_without_iss_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), &k.sign(&without(claims(&srv), "iss"))).await;
            assert_eq!(rejected(&e), &Rejection::MissingClaim("iss"));
        });
    }

    #[test]
    fn pinned_issuers_replace_the_discovered_one_and_refuse_before_any_fetch() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "issuers = https://idp.example.test\n");
            assert!(matches!(rejected(&verdict(&a, &k.sign(&claims(&srv))).await), Rejection::WrongIssuer(_)));
            assert!(srv.requests().is_empty());
            let pinned = k.sign(&with(claims(&srv), "iss", json!("https://idp.example.test")));
            assert_eq!(verdict(&a, &pinned).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn wrong_or_missing_audience_is_rejected_and_an_array_may_match() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "");
            let e = verdict(&a, &k.sign(&with(claims(&srv), "aud", json!("account")))).await;
            assert!(matches!(rejected(&e), Rejection::WrongAudience(_)), "{e:?}");
            let e = verdict(&a, &k.sign(&without(claims(&srv), "aud"))).await;
            assert!(matches!(rejected(&e), Rejection::WrongAudience(_)), "{e:?}");
            let ok = k.sign(&with(claims(&srv), "aud", json!(["account", "mail"])));
            assert_eq!(verdict(&a, &ok).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn every_configured_scope_is_required_from_the_space_separated_claim() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "scope = mail imap\n");
            assert_eq!(rejected(&verdict(&a, &k.sign(&claims(&srv))).await), &Rejection::MissingScope("imap".into()));
            let ok = k.sign(&with(claims(&srv), "scope", json!("openid imap mail")));
            assert_eq!(verdict(&a, &ok).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn token_of_another_user_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), &k.sign(&with(claims(&srv), "email", json!("bob@example.test")))).await;
            assert!(matches!(rejected(&e), Rejection::WrongUser { .. }), "{e:?}");
        });
    }

    #[test]
    fn username_attribute_and_pass_attrs_read_the_jwt_claims() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "username_attribute = preferred_username\npass_attrs = quota=%{oauth2:quota:1G}\n");
            let t = k.sign(&with(claims(&srv), "preferred_username", json!("Alice@Example.test")));
            assert_eq!(verdict(&a, &t).await, Verdict::Accept(vec![("quota".into(), "1G".into())]));
        });
    }

    #[test]
    fn rfc9068_at_jwt_type_is_accepted_and_other_types_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "");
            let at = k.sign_with(&json!({"alg": "ES256", "kid": "e1", "typ": "at+jwt"}), &claims(&srv));
            assert_eq!(verdict(&a, &at).await, Verdict::Accept(vec![]));
            let bare = k.sign_with(&json!({"alg": "ES256", "kid": "e1"}), &claims(&srv));
            assert_eq!(verdict(&a, &bare).await, Verdict::Accept(vec![]));
            let id_like = k.sign_with(&json!({"alg": "ES256", "kid": "e1", "typ": "dpop+jwt"}), &claims(&srv));
            assert_eq!(rejected(&verdict(&a, &id_like).await), &Rejection::WrongType("dpop+jwt".into()));
        });
    }

    #[test]
    fn critical_header_extensions_are_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let t = k.sign_with(&json!({"alg": "ES256", "kid": "e1", "crit": ["b64"], "b64": false}), &claims(&srv));
            assert!(matches!(rejected(&verdict(&local(&srv, ""), &t).await), Rejection::CriticalHeader(_)));
        });
    }

    #[test]
    fn key_embedded_in_the_token_header_is_never_used() {
        rt().block_on(async {
            let real = TestKey::es256("e1");
            let attacker = TestKey::es256("mine");
            let srv = provider(&[&real]).await;
            let header = json!({"alg": "ES256", "kid": "mine", "jwk": attacker.jwk, "jku": srv.url("/attacker-jwks")});
            let e = verdict(&local(&srv, ""), &attacker.sign_with(&header, &claims(&srv))).await;
            assert_eq!(rejected(&e), &Rejection::UnknownKey("mine".into()));
            assert_eq!(srv.count("/attacker-jwks"), 0);
        });
    }

    #[test]
    fn malformed_base64_or_json_in_a_jwt_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "");
            let good = k.sign(&claims(&srv));
            let parts: Vec<&str> = good.split('.').collect();
            for bad in [
                format!("{}.{}.{}", parts[0], "%%%", parts[2]).replace('%', "+"),
                format!("{}.{}.{}", parts[0], b64url(b"{not json"), parts[2]),
                format!("{}.{}.{}", parts[0], parts[1], "a+b/"),
                format!("{}.{}.{}", b64url(b"[1]"), parts[1], parts[2]),
            ] {
                assert!(matches!(rejected(&verdict(&a, &bad).await), Rejection::Malformed(_)), "{bad}");
            }
        });
    }

    #[test]
    fn token_over_max_token_bytes_is_rejected_before_any_key_work() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let t = k.sign(&with(claims(&srv), "pad", json!("x".repeat(200))));
            let e = verdict(&local(&srv, "max_token_bytes = 128\n"), &t).await;
            assert!(matches!(rejected(&e), Rejection::TooLarge(_, 128)));
            assert!(srv.requests().is_empty());
        });
    }

    #[test]
    fn opaque_token_without_introspection_url_is_rejected_with_a_clear_reason() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, ""), "opaque-access-token").await;
            assert_eq!(rejected(&e), &Rejection::Opaque);
            assert!(e.clone() != Verdict::Accept(vec![]));
            assert_eq!(rejected(&e).to_string(), "opaque token and no introspection_url for non-JWT tokens");
        });
    }

    #[test]
    fn opaque_token_goes_to_the_userinfo_style_introspection_url() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            // `audience` applies to every mode: this userinfo reply must name it too.
            srv.set("/userinfo", Canned::json(200, r#"{"email":"alice@example.test","aud":"mail"}"#));
            let a = local(&srv, &format!("introspection_url = {}\n", srv.url("/userinfo")));
            let o = a.verify("alice@example.test", b"opaque-token").await;
            assert_eq!(o.verdict, Verdict::Accept(vec![]));
            assert!(!o.local);
            let req = srv.requests().into_iter().find(|r| r.starts_with("GET /userinfo")).unwrap();
            assert!(req.to_lowercase().contains("authorization: bearer opaque-token"), "{req}");
            assert_eq!(srv.count("/jwks"), 0);
        });
    }

    #[test]
    fn opaque_token_goes_to_rfc7662_introspection_when_client_id_is_set() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            srv.set("/introspect", Canned::json(200, r#"{"active":true,"email":"alice@example.test","aud":"mail"}"#));
            let a = local(
                &srv,
                &format!("introspection_url = {}\nclient_id = dovecot\nclient_secret = s\n", srv.url("/introspect")),
            );
            assert_eq!(verdict(&a, "opaque-token").await, Verdict::Accept(vec![]));
            let req = srv.requests().into_iter().find(|r| r.contains("/introspect")).unwrap();
            assert!(
                req.starts_with("POST /introspect") && req.ends_with("token=opaque-token&token_type_hint=access_token"),
                "{req}"
            );
        });
    }

    #[test]
    fn rotated_key_is_fetched_on_its_first_token_and_accepted() {
        rt().block_on(async {
            let old = TestKey::es256("2024");
            let new = TestKey::rsa(Algorithm::RS256, "2025", 1);
            let srv = provider(&[&old]).await;
            let a = local(&srv, "jwks_refetch_min_interval_secs = 1\n");
            assert_eq!(verdict(&a, &old.sign(&claims(&srv))).await, Verdict::Accept(vec![]));
            srv.set("/jwks", Canned::json(200, &jwks(&[&new])));
            // Providers rotate long after our first fetch; here, just past the refetch interval.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(verdict(&a, &new.sign(&claims(&srv))).await, Verdict::Accept(vec![]));
            assert_eq!(srv.count("/jwks"), 2);
        });
    }

    #[test]
    fn unknown_kid_after_a_refetch_is_rejected() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let stranger = TestKey::es256("e2");
            let srv = provider(&[&k]).await;
            let e = verdict(&local(&srv, "jwks_refetch_min_interval_secs = 0\n"), &stranger.sign(&claims(&srv))).await;
            assert_eq!(rejected(&e), &Rejection::UnknownKey("e2".into()));
            assert_eq!(srv.count("/jwks"), 2);
        });
    }

    #[test]
    fn flood_of_forged_kids_refetches_at_most_once_per_interval() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "jwks_refetch_min_interval_secs = 1\n");
            assert_eq!(verdict(&a, &k.sign(&claims(&srv))).await, Verdict::Accept(vec![]));
            tokio::time::sleep(Duration::from_millis(1100)).await;
            for i in 0..50 {
                let forged = k.sign_with(&json!({"alg": "ES256", "kid": format!("forged-{i}")}), &claims(&srv));
                assert!(matches!(rejected(&verdict(&a, &forged).await), Rejection::UnknownKey(_)));
            }
            // The first login's fetch, then one refetch for the first unknown kid.
            assert_eq!(srv.count("/jwks"), 2);
            assert_eq!(verdict(&a, &k.sign(&with(claims(&srv), "jti", json!("x")))).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn refetch_is_allowed_again_after_the_interval() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "jwks_refetch_min_interval_secs = 1\n");
            let forged = |i: u32| k.sign_with(&json!({"alg": "ES256", "kid": format!("f{i}")}), &claims(&srv));
            verdict(&a, &forged(1)).await;
            assert_eq!(srv.count("/jwks"), 1);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            verdict(&a, &forged(2)).await;
            assert_eq!(srv.count("/jwks"), 2);
        });
    }

    #[test]
    fn provider_down_after_keys_were_fetched_still_accepts_new_tokens() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "");
            assert_eq!(verdict(&a, &k.sign(&claims(&srv))).await, Verdict::Accept(vec![]));
            let later = k.sign(&with(claims(&srv), "jti", json!("later")));
            srv.stop().await;
            let o = a.verify("alice@example.test", later.as_bytes()).await;
            assert_eq!(o.verdict, Verdict::Accept(vec![]));
            assert_eq!(o.source, Some(Source::Provider));
        });
    }

    #[test]
    fn failed_refetch_keeps_the_keys_and_is_reported_as_a_warning() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "jwks_refetch_min_interval_secs = 0\n");
            assert_eq!(verdict(&a, &k.sign(&claims(&srv))).await, Verdict::Accept(vec![]));
            srv.set("/jwks", Canned::json(503, "{}"));
            let stranger = TestKey::es256("e2");
            let o = a.verify("alice@example.test", stranger.sign(&claims(&srv)).as_bytes()).await;
            assert_eq!(rejected(&o.verdict), &Rejection::UnknownKey("e2".into()));
            assert!(o.warnings.iter().any(|w| w.contains("still using the 1 keys")), "{:?}", o.warnings);
            let again = k.sign(&with(claims(&srv), "jti", json!("x")));
            assert_eq!(verdict(&a, &again).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn no_keys_ever_fetched_is_a_temporary_failure() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let port = TestServer::closed_port();
            let text =
                format!("introspection_mode = local\nopenid_configuration_url = http://127.0.0.1:{port}{DISCOVERY}\n");
            let a = Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
            let t = k.sign(&json!({"iss": "x", "email": "alice@example.test", "exp": unix_now() + 60}));
            let o = a.verify("alice@example.test", t.as_bytes()).await;
            assert!(matches!(o.verdict, Verdict::TempFail(Unavailable::NoKeys { .. })), "{:?}", o.verdict);
        });
    }

    #[test]
    fn jwks_url_with_pinned_issuers_down_from_the_start_is_a_temporary_failure() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let port = TestServer::closed_port();
            let text =
                format!("introspection_mode = local\njwks_url = http://127.0.0.1:{port}/jwks\nissuers = https://idp\n");
            let a = Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
            let t = k.sign(&json!({"iss": "https://idp", "email": "alice@example.test", "exp": unix_now() + 60}));
            assert!(matches!(verdict(&a, &t).await, Verdict::TempFail(Unavailable::NoKeys { .. })));
        });
    }

    #[test]
    fn jwks_url_with_pinned_issuers_accepts_without_discovery() {
        rt().block_on(async {
            let k = TestKey::ed25519("e1");
            let srv = TestServer::routes(&[("/keys", Canned::json(200, &jwks(&[&k])))]).await;
            let text = format!("introspection_mode = local\njwks_url = {}\nissuers = https://idp\n", srv.url("/keys"));
            let a = Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
            let t = k.sign(&json!({"iss": "https://idp", "email": "alice@example.test", "exp": unix_now() + 60}));
            assert_eq!(verdict(&a, &t).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn token_without_kid_is_checked_against_the_issuers_keys() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let t = k.sign_with(&json!({"alg": "ES256"}), &claims(&srv));
            assert_eq!(verdict(&local(&srv, ""), &t).await, Verdict::Accept(vec![]));
        });
    }

    #[test]
    fn each_tenants_keys_only_verify_its_own_issuer() {
        rt().block_on(async {
            let ka = TestKey::es256("a");
            let kb = TestKey::es256("b");
            let (a_srv, b_srv) = (provider(&[&ka]).await, provider(&[&kb]).await);
            let text = format!(
                "introspection_mode = local\naudience = mail\nopenid_configuration_url = {} {}\n",
                a_srv.url(DISCOVERY),
                b_srv.url(DISCOVERY)
            );
            let a = Authenticator::new(Settings::parse(Path::new("t.conf"), &text).unwrap()).unwrap();
            assert_eq!(verdict(&a, &ka.sign(&claims(&a_srv))).await, Verdict::Accept(vec![]));
            assert_eq!(verdict(&a, &kb.sign(&claims(&b_srv))).await, Verdict::Accept(vec![]));
            // Tenant A's key signing a token that claims tenant B's issuer.
            let e = verdict(&a, &ka.sign(&claims(&b_srv))).await;
            assert_eq!(rejected(&e), &Rejection::UnknownKey("a".into()));
        });
    }

    #[test]
    fn accepted_token_is_served_from_cache_until_its_exp() {
        rt().block_on(async {
            let k = TestKey::es256("e1");
            let srv = provider(&[&k]).await;
            let a = local(&srv, "leeway_secs = 0\n");
            let t = k.sign(&with(claims(&srv), "exp", json!(unix_now() + 1)));
            assert_eq!(verdict(&a, &t).await, Verdict::Accept(vec![]));
            assert_eq!(a.verify("alice@example.test", t.as_bytes()).await.source, Some(Source::Cache));
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let o = a.verify("alice@example.test", t.as_bytes()).await;
            assert_eq!(o.source, Some(Source::Provider));
            assert!(matches!(rejected(&o.verdict), Rejection::Expired(_)));
        });
    }
}
