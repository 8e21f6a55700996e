//! The password grant: one request to the provider's token endpoint with a user's password (RFC 6749
//! section 4.3, or Authentik's `client_credentials` variant), and what its answer means for the login.
//!
//! Only the provider judges the password: `invalid_grant` (and the few codes providers use alike) is a
//! refusal; a refusal of *our* client (`invalid_client`, a grant the client may not use, a bad scope)
//! is the admin's problem and a temporary failure with a line saying what to fix; 5xx, 429, timeouts and
//! silence are temporary failures. The form body holding the password is wiped when the HTTP client
//! drops it, and so is the reply holding the returned token; neither is ever logged or traced.

use crate::clock::Clock;
use crate::config::{GrantClientAuth, Settings};
use crate::errors::{AuthError, Rejection, Unavailable};
use crate::escape::shown_max;
use crate::http::{redact_url, Ask, Http, Reply};
use crate::trace;
use serde_json::{Map, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::{Zeroize, Zeroizing};

/// How long a token endpoint learnt from discovery is used before the document is read again.
const DISCOVERED_ENDPOINT_MAX_AGE: Duration = Duration::from_secs(3600);

/// What the token endpoint granted: the access token (wiped when dropped) and its announced lifetime.
pub struct Granted {
    pub access_token: Zeroizing<String>,
    /// `expires_in`, when the provider said.
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Granted({} bytes, expires_in {:?})", self.access_token.len(), self.expires_in)
    }
}

/// The token endpoint: `grant_url`, else the `token_endpoint` of the first `openid_configuration_url`,
/// read on first use and again after an hour (or after a failed read).
pub struct TokenEndpoint {
    configured: Option<String>,
    discovery: Option<String>,
    found: Mutex<Option<(String, Instant)>>,
    clock: Clock,
}

impl TokenEndpoint {
    pub fn new(s: &Settings, clock: Clock) -> TokenEndpoint {
        TokenEndpoint {
            configured: s.grant_url.clone(),
            discovery: s.openid_configuration_url.first().cloned(),
            found: Mutex::new(None),
            clock,
        }
    }

    pub async fn url(&self, http: &Http) -> Result<String, Unavailable> {
        if let Some(url) = &self.configured {
            return Ok(url.clone());
        }
        let Some(doc_url) = &self.discovery else {
            return Err(Unavailable::PasswordsOff("no grant_url and no openid_configuration_url"));
        };
        if let Some((url, at)) = &*self.found.lock().unwrap_or_else(|p| p.into_inner()) {
            if self.clock.since(*at) < DISCOVERED_ENDPOINT_MAX_AGE {
                return Ok(url.clone());
            }
        }
        let reply = http.send(http.client().get(doc_url).header("accept", "application/json"), doc_url).await?;
        let shown = redact_url(doc_url);
        let bad = |reason: &str| Unavailable::BadReply { url: shown.clone(), reason: reason.into() };
        if reply.status != 200 {
            return Err(Unavailable::Status { url: shown, status: reply.status });
        }
        let doc: Value = serde_json::from_slice(&reply.body).map_err(|_| bad("discovery document is not JSON"))?;
        let url = doc
            .get("token_endpoint")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| bad("discovery document has no http(s) token_endpoint"))?
            .to_string();
        trace::note(|| format!("token endpoint from discovery: {}", redact_url(&url)));
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some((url.clone(), self.clock.now()));
        Ok(url)
    }
}

/// Asks `url` to grant a token for `login_user` with `password`.
pub async fn exchange(
    http: &Http,
    s: &Settings,
    url: &str,
    login_user: &str,
    password: &[u8],
) -> Result<Granted, AuthError> {
    let username = s.grant_username_format.apply(login_user);
    trace::note(|| {
        format!(
            "password grant: grant_type={} username={} client_auth={}",
            s.grant_type.as_str(),
            shown_max(&username, 128),
            match s.grant_client_auth {
                GrantClientAuth::Post => "post",
                GrantClientAuth::Basic => "basic",
            }
        )
    });
    let body = form(s, &username, password);
    let mut req = http
        .client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(reqwest::Body::from(bytes::Bytes::from_owner(body)));
    if s.grant_client_auth == GrantClientAuth::Basic {
        if let Some(id) = &s.client_id {
            let secret = s.client_secret.as_deref().map(encoded);
            req = req.basic_auth(encoded(id), secret);
        }
    }
    // About one user's credential: as for a token, only no answer counts against the provider (a
    // guessed password must not open the circuit for everyone).
    let mut reply = http.send_as(req, url, Ask::Token).await?;
    classify(&mut reply, url, password)
}

/// The form body: what RFC 6749 asks for, in a buffer wiped when the HTTP client is done with it.
fn form(s: &Settings, username: &str, password: &[u8]) -> Zeroizing<Vec<u8>> {
    let scope = s.grant_scope.as_ref().unwrap_or(&s.scope).join(" ");
    let mut fields: Vec<(&str, &[u8])> = vec![
        ("grant_type", s.grant_type.as_str().as_bytes()),
        ("username", username.as_bytes()),
        ("password", password),
    ];
    if !scope.is_empty() {
        fields.push(("scope", scope.as_bytes()));
    }
    if let Some(id) = &s.client_id {
        // A public client (no secret) names itself in the body whatever grant_client_auth says.
        if s.grant_client_auth == GrantClientAuth::Post || s.client_secret.is_none() {
            fields.push(("client_id", id.as_bytes()));
            if let Some(secret) = &s.client_secret {
                fields.push(("client_secret", secret.as_bytes()));
            }
        }
    }
    // Sized once: growing would leave an unwiped copy of the password behind.
    let size = fields.iter().map(|(name, value)| name.len() + 2 + value.len() * 3).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    for (name, value) in fields {
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        encode_into(&mut out, value);
    }
    out
}

/// application/x-www-form-urlencoded: unreserved bytes as they are, every other byte as `%XX`.
fn encode_into(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// RFC 6749 2.3.1: client_secret_basic credentials are form-encoded before base64.
fn encoded(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    encode_into(&mut out, s.as_bytes());
    String::from_utf8(out).unwrap_or_default()
}

/// Error codes that mean "this user's credential is no good" (RFC 6749 5.2 `invalid_grant`; OpenID
/// Connect's `interaction_required` from providers that want MFA; `access_denied` from some).
const REFUSALS: &[&str] = &["invalid_grant", "access_denied", "interaction_required"];

/// What to tell the admin when the provider refuses our request rather than the user's password.
fn admin_hint(code: &str) -> &'static str {
    match code {
        "invalid_client" => "check client_id, client_secret and grant_client_auth",
        "unauthorized_client" => {
            "this client may not use the grant: enable it at the provider (Keycloak: Direct access grants; \
             Entra ID: Allow public client flows)"
        }
        "unsupported_grant_type" => "the provider does not offer this grant_type to this client",
        "invalid_scope" => "check grant_scope (default: scope)",
        _ => "see the provider's log",
    }
}

/// Turns the token endpoint's answer into a grant, a refusal or a temporary failure. Wipes the reply.
fn classify(reply: &mut Reply, url: &str, password: &[u8]) -> Result<Granted, AuthError> {
    let shown = redact_url(url);
    let parsed = serde_json::from_slice::<Value>(&reply.body).ok();
    reply.body.zeroize();
    let mut map = match parsed {
        Some(Value::Object(map)) => Some(map),
        Some(mut other) => {
            scrub(&mut other);
            None
        }
        None => None,
    };
    let result = decide(reply.status, map.as_mut(), &shown, password);
    if let Some(map) = map.as_mut() {
        for v in map.values_mut() {
            scrub(v);
        }
    }
    result
}

fn decide(
    status: u16,
    map: Option<&mut Map<String, Value>>,
    shown: &str,
    password: &[u8],
) -> Result<Granted, AuthError> {
    let bad = |reason: String| Unavailable::BadReply { url: shown.to_string(), reason };
    match (status, map) {
        (200, Some(map)) => {
            if let Some(tt) = map.get("token_type").and_then(Value::as_str) {
                if !tt.eq_ignore_ascii_case("bearer") {
                    return Err(bad(format!("token_type '{}', not Bearer", shown_max(tt, 32))).into());
                }
            }
            let expires_in = match map.get("expires_in") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(v)) => v.parse().ok(),
                _ => None,
            };
            match map.get_mut("access_token") {
                Some(Value::String(t)) if !t.is_empty() => {
                    Ok(Granted { access_token: Zeroizing::new(std::mem::take(t)), expires_in })
                }
                _ => Err(bad("no access_token in the reply".into()).into()),
            }
        }
        (200, None) => Err(bad("not a JSON object".into()).into()),
        (400 | 401 | 403, map) => {
            let code = map.as_ref().and_then(|m| m.get("error")).and_then(Value::as_str).map(|c| shown_max(c, 64));
            let Some(code) = code else {
                // RFC 6749 5.2: a bare 401 from a token endpoint is a failed client authentication.
                if status == 401 {
                    return Err(Unavailable::GrantRefused {
                        url: shown.to_string(),
                        error: "HTTP 401".into(),
                        hint: admin_hint("invalid_client"),
                    }
                    .into());
                }
                return Err(Unavailable::Status { url: shown.to_string(), status }.into());
            };
            if REFUSALS.contains(&code.as_str()) {
                let description = map
                    .as_ref()
                    .and_then(|m| m.get("error_description"))
                    .and_then(Value::as_str)
                    // Never echo a provider that quotes the password back.
                    .filter(|d| password.is_empty() || !contains(d.as_bytes(), password))
                    .map(|d| format!(": {}", shown_max(d, 100)))
                    .unwrap_or_default();
                return Err(Rejection::PasswordRefused(format!("{code}{description}")).into());
            }
            let hint = admin_hint(&code);
            Err(Unavailable::GrantRefused { url: shown.to_string(), error: code, hint }.into())
        }
        (status, _) => Err(Unavailable::Status { url: shown.to_string(), status }.into()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Wipes every string of a parsed reply (refresh and ID tokens may be in it too).
fn scrub(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(map) => map.values_mut().for_each(scrub),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use crate::testutil::{Canned, TestServer};
    use std::path::Path;
    use std::sync::Arc;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "introspection_url = https://idp/userinfo\nuse_grant_password = yes\ngrant_url = https://idp/token\n\
             client_id = dovecot\nclient_secret = s3cret\n{extra}"
        );
        Settings::parse(Path::new("t.conf"), &text).unwrap()
    }

    fn http(s: &Settings) -> Http {
        Http::new(s, Arc::new(Stats::default()), Clock::system()).unwrap()
    }

    fn body_of(req: &str) -> &str {
        req.split("\r\n\r\n").nth(1).unwrap_or("")
    }

    async fn ask(srv: &TestServer, extra: &str, password: &[u8]) -> Result<Granted, AuthError> {
        let s = settings(extra);
        exchange(&http(&s), &s, &srv.url("/token"), "alice@example.test", password).await
    }

    #[test]
    fn the_request_is_rfc6749_password_grant_with_client_secret_post_by_default() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"access_token":"at-1","token_type":"Bearer"}"#)).await;
            let g = ask(&srv, "scope = mail\n", b"p&ss w=rd").await.unwrap();
            assert_eq!(g.access_token.as_str(), "at-1");
            let req = srv.requests().pop().unwrap();
            assert!(req.starts_with("POST /token"), "{req}");
            assert!(req.to_lowercase().contains("content-type: application/x-www-form-urlencoded"), "{req}");
            assert!(!req.to_lowercase().contains("authorization:"), "{req}");
            assert_eq!(
                body_of(&req),
                "grant_type=password&username=alice%40example.test&password=p%26ss%20w%3Drd&scope=mail\
                 &client_id=dovecot&client_secret=s3cret"
            );
        });
    }

    #[test]
    fn basic_client_auth_sends_the_credentials_in_the_header_only() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"access_token":"at-1"}"#)).await;
            ask(&srv, "grant_client_auth = basic\n", b"pw").await.unwrap();
            let req = srv.requests().pop().unwrap();
            assert!(req.to_lowercase().contains("authorization: basic zg92zwnvddpzm2nyzxq="), "{req}");
            assert_eq!(body_of(&req), "grant_type=password&username=alice%40example.test&password=pw");
        });
    }

    #[test]
    fn authentik_style_client_credentials_grant_type_and_username_format_are_sent() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"access_token":"at-1"}"#)).await;
            ask(
                &srv,
                "grant_type = client_credentials\ngrant_username_format = %n\ngrant_scope = openid email\n",
                b"pw",
            )
            .await
            .unwrap();
            let body = body_of(&srv.requests().pop().unwrap()).to_string();
            assert!(body.starts_with("grant_type=client_credentials&username=alice&password=pw&scope=openid%20email&"));
        });
    }

    #[test]
    fn invalid_grant_is_a_refusal_of_the_password() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#,
            ))
            .await;
            let e = ask(&srv, "", b"wrong").await.unwrap_err();
            assert_eq!(e, Rejection::PasswordRefused("invalid_grant: Invalid user credentials".into()).into());
        });
    }

    #[test]
    fn a_description_quoting_the_password_is_not_repeated() {
        rt().block_on(async {
            let srv =
                TestServer::start(Canned::json(400, r#"{"error":"invalid_grant","error_description":"bad: hunter2"}"#))
                    .await;
            let e = ask(&srv, "", b"hunter2").await.unwrap_err();
            assert_eq!(e, Rejection::PasswordRefused("invalid_grant".into()).into());
        });
    }

    #[test]
    fn invalid_client_is_a_temporary_failure_that_tells_the_admin_what_to_check() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(401, r#"{"error":"invalid_client"}"#)).await;
            let e = ask(&srv, "", b"pw").await.unwrap_err();
            let AuthError::Unavailable(u @ Unavailable::GrantRefused { .. }) = e else { panic!("{e:?}") };
            assert!(u.to_string().contains("(invalid_client): check client_id, client_secret"), "{u}");
        });
    }

    #[test]
    fn a_client_not_allowed_the_grant_is_a_temporary_failure_naming_the_switch() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(400, r#"{"error":"unauthorized_client"}"#)).await;
            let e = ask(&srv, "", b"pw").await.unwrap_err();
            assert!(e.to_string().contains("Direct access grants"), "{e}");
            assert!(matches!(e, AuthError::Unavailable(Unavailable::GrantRefused { .. })));
        });
    }

    #[test]
    fn a_bare_401_is_our_client_failing_to_authenticate() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(401, "")).await;
            assert!(matches!(
                ask(&srv, "", b"pw").await.unwrap_err(),
                AuthError::Unavailable(Unavailable::GrantRefused { .. })
            ));
        });
    }

    #[test]
    fn server_errors_and_rate_limits_are_temporary() {
        rt().block_on(async {
            for status in [500, 502, 503, 429] {
                let srv = TestServer::start(Canned::json(status, r#"{"error":"server_error"}"#)).await;
                let e = ask(&srv, "", b"pw").await.unwrap_err();
                assert!(matches!(e, AuthError::Unavailable(Unavailable::Status { .. })), "{status}: {e:?}");
            }
        });
    }

    #[test]
    fn a_slow_token_endpoint_times_out_as_a_temporary_failure() {
        rt().block_on(async {
            let srv =
                TestServer::start(Canned::json(200, r#"{"access_token":"x"}"#).delayed(Duration::from_secs(5))).await;
            let e = ask(&srv, "timeout_msecs = 200\n", b"pw").await.unwrap_err();
            assert!(matches!(e, AuthError::Unavailable(Unavailable::Timeout { .. })), "{e:?}");
        });
    }

    #[test]
    fn a_200_without_a_bearer_access_token_is_unusable() {
        rt().block_on(async {
            for body in [r#"{"token_type":"Bearer"}"#, r#"{"access_token":"x","token_type":"DPoP"}"#, "[1]", "<html>"] {
                let srv = TestServer::start(Canned::json(200, body)).await;
                let e = ask(&srv, "", b"pw").await.unwrap_err();
                assert!(matches!(e, AuthError::Unavailable(Unavailable::BadReply { .. })), "{body}: {e:?}");
            }
        });
    }

    #[test]
    fn expires_in_is_read_as_a_number_or_numeric_string() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"access_token":"x","expires_in":"120"}"#)).await;
            assert_eq!(ask(&srv, "", b"pw").await.unwrap().expires_in, Some(120));
        });
    }

    #[test]
    fn the_token_endpoint_comes_from_discovery_when_grant_url_is_unset_and_is_kept() {
        rt().block_on(async {
            let srv = TestServer::routes(&[]).await;
            srv.set(
                "/.well-known/openid-configuration",
                Canned::json(200, &format!(r#"{{"token_endpoint":"{}"}}"#, srv.url("/tok"))),
            );
            let text = format!(
                "introspection_url = https://idp/u\nuse_grant_password = yes\nclient_id = d\n\
                 openid_configuration_url = {}\n",
                srv.url("/.well-known/openid-configuration")
            );
            let s = Settings::parse(Path::new("t.conf"), &text).unwrap();
            let clock = Clock::manual();
            let ep = TokenEndpoint::new(&s, clock.clone());
            let h = http(&s);
            assert_eq!(ep.url(&h).await.unwrap(), srv.url("/tok"));
            assert_eq!(ep.url(&h).await.unwrap(), srv.url("/tok"));
            assert_eq!(srv.count("/.well-known/openid-configuration"), 1);
            clock.advance(DISCOVERED_ENDPOINT_MAX_AGE);
            ep.url(&h).await.unwrap();
            assert_eq!(srv.count("/.well-known/openid-configuration"), 2);
        });
    }

    #[test]
    fn a_discovery_document_without_a_token_endpoint_is_a_temporary_failure() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"issuer":"x"}"#)).await;
            let text = format!(
                "introspection_url = https://idp/u\nuse_grant_password = yes\nclient_id = d\nopenid_configuration_url = {}\n",
                srv.url("/d")
            );
            let s = Settings::parse(Path::new("t.conf"), &text).unwrap();
            let e = TokenEndpoint::new(&s, Clock::manual()).url(&http(&s)).await.unwrap_err();
            assert!(matches!(e, Unavailable::BadReply { .. }), "{e:?}");
        });
    }

    proptest::proptest! {
        /// Whatever a token endpoint answers, the answer is a grant, a refusal or a temporary failure,
        /// never a panic, and only 200 with an access token grants anything.
        #[test]
        fn any_token_endpoint_reply_is_classified_without_panic(
            status in 100u16..600,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            code in proptest::prop_oneof!["invalid_grant", "invalid_client", "unauthorized_client", ".{0,12}"],
        ) {
            let mut reply = Reply { status, body: body.clone(), elapsed: Duration::ZERO, cache_control: None };
            let granted = classify(&mut reply, "https://idp/token", b"pw").is_ok();
            proptest::prop_assert!(!granted || status == 200);
            proptest::prop_assert!(reply.body.is_empty(), "the reply is wiped");
            // Valid JSON whatever the code holds (a control character must be escaped in a JSON string).
            let json = serde_json::json!({"error": code, "access_token": "t"}).to_string();
            let mut reply = Reply { status, body: json.into_bytes(), elapsed: Duration::ZERO, cache_control: None };
            let r = classify(&mut reply, "https://idp/token", b"pw");
            proptest::prop_assert_eq!(r.is_ok(), status == 200);
        }
    }

    #[test]
    fn a_traced_grant_notes_the_request_but_never_the_password_or_token() {
        rt().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"access_token":"secret-at"}"#)).await;
            let (r, steps) = trace::traced(ask(&srv, "", b"secret-pw")).await;
            assert!(r.is_ok());
            let all = steps.join("\n");
            assert!(all.contains("password grant: grant_type=password username=alice@example.test"), "{all}");
            assert!(all.contains("POST http://127.0.0.1:"), "{all}");
            assert!(!all.contains("secret-pw") && !all.contains("secret-at"), "{all}");
        });
    }
}
