//! Asking the provider about a token: tokeninfo, then introspection in one of Dovecot's modes
//! (auth = userinfo-style GET with Bearer, get = token in URL, post = RFC 7662).

use crate::claims::{claim_text, Claims};
use crate::config::{IntrospectionMode, Settings};
use crate::errors::{AuthError, Rejection, Unavailable, PROVIDER_ERROR_CHARS};
use crate::http::{redact_url, Ask, Http, Reply};
use crate::token::Token;

/// The claims the provider reports for `token`, merged from tokeninfo and introspection as Dovecot does.
/// `ask` is [`Ask::StaleToken`] when an earlier acceptance of this token is stale, else [`Ask::Token`].
pub async fn fetch_claims(http: &Http, s: &Settings, token: Token<'_>, ask: Ask) -> Result<Claims, AuthError> {
    let mut claims = Claims::new();
    if let Some(url) = &s.tokeninfo_url {
        let full = format!("{url}{}", token.url_encoded());
        let reply = http.send_as(http.client().get(&full), url, ask).await?;
        claims = parse_reply(&reply, url, false)?;
        if !s.force_introspection && has_all_fields(s, &claims) || s.introspection_url.is_none() {
            return Ok(claims);
        }
    }
    if let Some(url) = &s.introspection_url {
        let client = http.client();
        let (req, post) = match opaque_mode(s, url) {
            IntrospectionMode::Auth | IntrospectionMode::Local => (client.get(url).bearer_auth(token.as_str()), false),
            IntrospectionMode::Get => (client.get(format!("{url}{}", token.url_encoded())), false),
            IntrospectionMode::Post => {
                let (bare, user, pass) = split_credentials(url);
                let mut req = client
                    .post(bare)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("accept", "application/json")
                    .body(format!("token={}&token_type_hint=access_token", token.url_encoded()));
                if let Some(user) = user.or_else(|| s.client_id.clone()) {
                    let pass = pass.or_else(|| s.client_secret.clone());
                    req = req.basic_auth(form_encode(&user), pass.map(|p| form_encode(&p)));
                }
                (req, true)
            }
        };
        let reply = http.send_as(req, url, ask).await?;
        let answer = parse_reply(&reply, url, post)?;
        // RFC 7662 2.2: `active` is required; a reply without it says nothing about the token.
        if post && !answer.contains_key("active") {
            return Err(Rejection::NoActive.into());
        }
        for (k, v) in answer {
            claims.insert(k, v);
        }
    }
    Ok(claims)
}

/// How `introspection_url` is asked. In local mode (only opaque tokens get here) the URL's kind is
/// inferred: client credentials (`client_id`, or `user:password@` in the URL) mean an RFC 7662
/// introspection endpoint (POST), none mean a userinfo-style endpoint (GET with the token as Bearer).
fn opaque_mode(s: &Settings, url: &str) -> IntrospectionMode {
    match s.introspection_mode {
        IntrospectionMode::Local if s.client_id.is_some() || split_credentials(url).1.is_some() => {
            IntrospectionMode::Post
        }
        IntrospectionMode::Local => IntrospectionMode::Auth,
        mode => mode,
    }
}

/// Whether tokeninfo already said all that the rules and `pass_attrs` need (then no introspection).
fn has_all_fields(s: &Settings, claims: &Claims) -> bool {
    let needed = std::iter::once(s.username_attribute.as_str())
        .chain(s.active_attribute.as_deref())
        .chain(s.pass_attrs.iter().flat_map(|(_, t)| oauth2_refs(t)));
    needed.into_iter().all(|k| claim_text(claims, k).is_some())
}

fn oauth2_refs(template: &str) -> Vec<&str> {
    template.split("%{oauth2:").skip(1).filter_map(|rest| rest.split(['}', ':']).next()).collect()
}

/// Turns a reply into claims or into the right kind of failure.
///
/// 401/403 (and 400, RFC 6750's invalid_request) mean "this token is no good" when the token is the
/// credential (userinfo, tokeninfo); for RFC 7662 POST they mean *our* client credentials were refused,
/// which is an admin problem, not the user's: temporary failure.
pub fn parse_reply(reply: &Reply, url: &str, client_authenticated: bool) -> Result<Claims, AuthError> {
    let shown = redact_url(url);
    match reply.status {
        200 => {}
        400 | 401 | 403 if !client_authenticated => return Err(Rejection::ProviderRefused(reply.status).into()),
        status => return Err(Unavailable::Status { url: shown, status }.into()),
    }
    let value: serde_json::Value = serde_json::from_slice(&reply.body)
        .map_err(|e| Unavailable::BadReply { url: shown.clone(), reason: format!("not JSON: {e}") })?;
    let serde_json::Value::Object(map) = value else {
        return Err(Unavailable::BadReply { url: shown, reason: "not a JSON object".into() }.into());
    };
    if let Some(serde_json::Value::String(err)) = map.get("error") {
        return Err(Rejection::ProviderError(err.chars().take(PROVIDER_ERROR_CHARS).collect()).into());
    }
    Ok(map)
}

/// `https://id:secret@host/path` -> (`https://host/path`, id, secret), percent-decoded.
fn split_credentials(url: &str) -> (String, Option<String>, Option<String>) {
    let Ok(mut parsed) = reqwest::Url::parse(url) else { return (url.to_string(), None, None) };
    if parsed.username().is_empty() {
        return (url.to_string(), None, None);
    }
    let user = percent_decode(parsed.username());
    let pass = parsed.password().map(percent_decode);
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (parsed.to_string(), Some(user), pass)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 6749 2.3.1: client_secret_basic credentials are form-encoded before base64.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reply(status: u16, body: &str) -> Reply {
        Reply { status, body: body.as_bytes().to_vec(), elapsed: Duration::ZERO, cache_control: None }
    }

    #[test]
    fn userinfo_401_is_a_rejected_token() {
        assert_eq!(parse_reply(&reply(401, ""), "https://idp/me", false), Err(Rejection::ProviderRefused(401).into()));
    }

    #[test]
    fn introspection_401_is_our_credentials_problem_so_temporary() {
        assert!(matches!(
            parse_reply(&reply(401, ""), "https://idp/i", true),
            Err(AuthError::Unavailable(Unavailable::Status { status: 401, .. }))
        ));
    }

    #[test]
    fn server_errors_and_redirects_are_temporary() {
        for status in [500, 502, 503, 302, 404, 429] {
            assert!(
                matches!(parse_reply(&reply(status, ""), "https://idp/me", false), Err(AuthError::Unavailable(_))),
                "{status}"
            );
        }
    }

    #[test]
    fn garbage_body_is_temporary() {
        assert!(matches!(
            parse_reply(&reply(200, "<html>"), "https://idp/me", false),
            Err(AuthError::Unavailable(Unavailable::BadReply { .. }))
        ));
        assert!(matches!(
            parse_reply(&reply(200, "[1]"), "https://idp/me", false),
            Err(AuthError::Unavailable(Unavailable::BadReply { .. }))
        ));
    }

    #[test]
    fn error_field_in_a_200_reply_is_a_rejection() {
        assert!(matches!(
            parse_reply(&reply(200, r#"{"error":"invalid_token"}"#), "https://idp/me", false),
            Err(AuthError::Rejected(_))
        ));
    }

    #[test]
    fn rfc7662_reply_without_active_is_refused_in_post_mode() {
        use crate::testutil::{Canned, TestServer};
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let srv = TestServer::start(Canned::json(200, r#"{"email":"alice@example.test"}"#)).await;
            let text = format!("introspection_url = {}\nintrospection_mode = post\nclient_id = c\n", srv.url("/i"));
            let s = Settings::parse(std::path::Path::new("t"), &text).unwrap();
            let http = Http::new(&s, Default::default(), crate::clock::Clock::manual()).unwrap();
            let token = Token::parse(b"opaque", 100).unwrap();
            assert_eq!(fetch_claims(&http, &s, token, crate::http::Ask::Token).await, Err(Rejection::NoActive.into()));
            // A userinfo-style reply (auth mode) has no `active`, and needs none.
            let text = format!("introspection_url = {}\n", srv.url("/i"));
            let s = Settings::parse(std::path::Path::new("t"), &text).unwrap();
            assert!(fetch_claims(&http, &s, token, crate::http::Ask::Token).await.is_ok());
        });
    }

    #[test]
    fn credentials_in_the_introspection_url_are_split_out() {
        let (url, user, pass) = split_credentials("https://dove%40cot:p%3Ass@idp.test/introspect");
        assert_eq!(url, "https://idp.test/introspect");
        assert_eq!(user.as_deref(), Some("dove@cot"));
        assert_eq!(pass.as_deref(), Some("p:ss"));
    }

    #[test]
    fn local_mode_introspects_opaque_tokens_by_rfc7662_only_with_client_credentials() {
        let local = |extra: &str| {
            Settings::parse(
                std::path::Path::new("t"),
                &format!("introspection_mode = local\nopenid_configuration_url = https://i/d\n{extra}"),
            )
            .unwrap()
        };
        assert_eq!(opaque_mode(&local(""), "https://i/userinfo"), IntrospectionMode::Auth);
        assert_eq!(opaque_mode(&local("client_id = dovecot\n"), "https://i/introspect"), IntrospectionMode::Post);
        assert_eq!(opaque_mode(&local(""), "https://dovecot:s@i/introspect"), IntrospectionMode::Post);
    }

    #[test]
    fn tokeninfo_with_all_fields_needs_no_introspection() {
        let s = Settings::parse(
            std::path::Path::new("t"),
            "tokeninfo_url = https://i/?t=\npass_attrs = q=%{oauth2:quota:1}\n",
        )
        .unwrap();
        let mut c = Claims::new();
        c.insert("email".into(), "a@x".into());
        assert!(!has_all_fields(&s, &c));
        c.insert("quota".into(), "2".into());
        assert!(has_all_fields(&s, &c));
    }
}
