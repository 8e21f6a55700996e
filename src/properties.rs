//! Property tests: whatever arrives from a client, a settings file or a provider, the parsers answer
//! with a value or the right kind of refusal (never a panic), refuse oversized input before working
//! on it, never accept a token for anyone but its owner, and never let an outside string reach a log
//! line unescaped or a credential reach one at all.

use crate::claims::{self, Claims};
use crate::config::Settings;
use crate::errors::{AuthError, ConfigError, Rejection, Unavailable};
use crate::escape::{shown, MAX_SHOWN_CHARS};
use crate::http::{check_url, redact_url, Reply};
use crate::jwt::{self, Shape};
use crate::provider;
use crate::token::Token;
use base64::Engine as _;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

fn settings() -> Settings {
    Settings::parse(
        Path::new("p.conf"),
        "introspection_url = https://idp/u\nscope = mail\naudience = a b\npass_attrs = x=%{oauth2:x:d} y=%$\n",
    )
    .unwrap()
}

/// JSON values of any shape, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("email".to_string()),
                    Just("exp".to_string()),
                    Just("scope".to_string()),
                    Just("aud".to_string()),
                    Just("active".to_string()),
                    Just("kty".to_string()),
                    Just("use".to_string()),
                    Just("x".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::btree_map("[a-z]{1,6}", json(), 0..6)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
}

/// No character a log line must not carry raw (see [`crate::escape`]).
fn printable(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'))
}

/// The inverse of [`shown`] for text under its cap: proves the escaping loses nothing and is unambiguous.
fn unshown(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let hex: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            other => panic!("stray escape {other:?} in {s:?}"),
        }
    }
    out
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn settings_text_is_parsed_or_refused_naming_the_file_in_one_printable_line(text in "(?s).{0,400}") {
        if let Err(e) = Settings::parse(Path::new("p.conf"), &text) {
            let message = e.to_string();
            prop_assert!(message.starts_with("settings file p.conf"), "{}", message);
            let logged = Unavailable::from(e).to_string();
            prop_assert!(printable(&logged), "{:?}", logged);
        }
    }

    #[test]
    fn a_known_key_with_any_value_is_accepted_or_refused_at_its_own_line(
        key in prop::sample::select(vec!["introspection_url", "introspection_mode", "username_format", "pass_attrs", "timeout_msecs",
            "scope", "issuers", "openid_configuration_url", "jwks_url", "max_token_bytes", "leeway_secs", "active_value", "tokeninfo_url",
            "http_proxy"]),
        value in "(?s)[^\n\r]{0,80}",
    ) {
        match Settings::parse(Path::new("p.conf"), &format!("introspection_url = https://i/u\n{key} = {value}\n")) {
            Ok(_) => {}
            // Line 1 is valid on its own: a refusal names line 2, or a rule across keys (line 0: not set).
            Err(ConfigError::Syntax { line, .. } | ConfigError::UnknownKey { line, .. } | ConfigError::Invalid { line, .. }) => {
                prop_assert!(line == 2 || line == 0, "line {}", line)
            }
            Err(ConfigError::Incomplete { .. }) => {}
            Err(ConfigError::Read { .. }) => prop_assert!(false, "nothing is read"),
        }
    }

    #[test]
    fn any_bytes_are_a_token_exactly_when_they_are_a_bounded_rfc6750_b64token(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        let body = raw.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
        let valid = !raw.is_empty() && raw.len() <= 512 && body > 0 && raw[..body].iter().all(|&b| is_b64token_byte(b));
        prop_assert_eq!(Token::parse(&raw, 512).is_ok(), valid);
    }

    #[test]
    fn a_token_in_a_url_is_percent_encoded_and_decodes_back(raw in "[A-Za-z0-9._~+/-]{1,200}={0,2}") {
        let token = Token::parse(raw.as_bytes(), 512).unwrap();
        let encoded = token.url_encoded();
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{}", encoded);
        let decoded: Vec<u8> = {
            let (mut out, mut rest) = (Vec::new(), encoded.as_bytes());
            while let Some((&b, tail)) = rest.split_first() {
                if b == b'%' {
                    out.push(u8::from_str_radix(std::str::from_utf8(&tail[..2]).unwrap(), 16).unwrap());
                    rest = &tail[2..];
                } else {
                    out.push(b);
                    rest = tail;
                }
            }
            out
        };
        prop_assert_eq!(decoded, raw.into_bytes());
    }

    #[test]
    fn three_part_garbage_is_never_taken_for_a_well_formed_jwt(a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,60}", c in "[A-Za-z0-9_-]{0,60}") {
        let t = format!("{a}.{b}.{c}");
        let header_is_json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&a).ok()
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok()).is_some_and(|h| h.is_object());
        match jwt::shape(&t) {
            Shape::Opaque(why) => prop_assert!(why.is_some() && !header_is_json, "{:?}", why),
            Shape::Jwt(Err(r)) => prop_assert!(matches!(r, Rejection::Malformed(_)), "{:?}", r),
            Shape::Jwt(Ok(_)) => prop_assert!(header_is_json),
        }
    }

    #[test]
    fn any_json_objects_as_header_and_payload_make_a_well_formed_jwt(
        h in json_object(), p in json_object(), sig in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
        let t = format!("{}.{}.{sig}", b64(&h), b64(&p));
        prop_assert!(matches!(jwt::shape(&t), Shape::Jwt(Ok(_))), "{:?}", jwt::shape(&t));
    }

    #[test]
    fn a_token_over_the_bound_is_refused_before_anything_else(extra in 1usize..5000) {
        let raw = vec![b'a'; 512 + extra];
        prop_assert_eq!(Token::parse(&raw, 512).unwrap_err(), Rejection::TooLarge(512 + extra, 512));
    }

    #[test]
    fn any_provider_reply_is_classified_by_status_then_body(
        status in prop_oneof![100u16..600, Just(200u16)],
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), json().prop_map(|v| v.to_string().into_bytes())],
    ) {
        let reply = Reply { status, body: body.clone(), elapsed: Duration::ZERO, cache_control: None };
        let object = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v.as_object().cloned());
        // The token is the credential (userinfo, tokeninfo): 400/401/403 refuse it.
        let as_token = provider::parse_reply(&reply, "https://idp/u", false);
        match (status, &object) {
            (400 | 401 | 403, _) => prop_assert_eq!(&as_token, &Err(Rejection::ProviderRefused(status).into())),
            (200, None) => {
                prop_assert!(matches!(as_token, Err(AuthError::Unavailable(Unavailable::BadReply { .. }))), "{:?}", as_token)
            }
            (200, Some(o)) if o.get("error").is_some_and(|e| e.is_string()) => {
                prop_assert!(matches!(as_token, Err(AuthError::Rejected(Rejection::ProviderError(_)))), "{:?}", as_token)
            }
            (200, Some(o)) => prop_assert_eq!(as_token.as_ref().ok(), Some(o)),
            _ => prop_assert!(matches!(as_token, Err(AuthError::Unavailable(Unavailable::Status { .. }))), "{:?}", as_token),
        }
        // RFC 7662 (our client credentials): any status but 200 is the provider's or our problem.
        let as_client = provider::parse_reply(&reply, "https://idp/u", true);
        if status != 200 {
            prop_assert!(matches!(as_client, Err(AuthError::Unavailable(Unavailable::Status { .. }))), "{:?}", as_client);
        }
        for e in [as_token.err(), as_client.err()].into_iter().flatten() {
            prop_assert!(printable(&e.to_string()), "{:?}", e.to_string());
        }
    }

    #[test]
    fn the_rules_never_accept_a_reply_for_another_user_or_without_scope_audience_or_activity(
        v in json(), user in ".{0,30}", now in any::<u64>(),
    ) {
        let claims: Claims = match v { serde_json::Value::Object(m) => m, other => { let mut m = Claims::new(); m.insert("email".into(), other); m } };
        let s = settings();
        match claims::check(&s, &claims, &user, now) {
            Ok(_) => {
                let token_user = claims::claim_text(&claims, "email").unwrap_or_default();
                prop_assert_eq!(s.username_format.apply(&token_user), s.username_format.apply(&user));
                prop_assert!(claims.get("active").is_none_or(|a| a == true || a == "true"));
                let scope = ["scope", "scp", "aud"].iter().find_map(|c| claims::claim_text(&claims, c)).unwrap_or_default();
                prop_assert!(scope.split_whitespace().any(|s| s == "mail"), "{}", scope);
                let aud = claims::claim_text(&claims, "aud").unwrap_or_default();
                prop_assert!(aud.split(' ').any(|a| a == "a" || a == "b"), "{}", aud);
            }
            Err(r) => prop_assert!(printable(&r.to_string()), "{:?}", r.to_string()),
        }
    }

    #[test]
    fn a_jwk_is_accepted_only_as_an_asymmetric_signing_key(v in json(), secret in "[A-Za-z0-9_-]{16,64}") {
        if let Ok(_key) = crate::jwks::parse_jwk(&v) {
            let kty = v.get("kty").and_then(|k| k.as_str());
            prop_assert!(matches!(kty, Some("RSA" | "EC" | "OKP")), "{:?}", kty);
            prop_assert!(v.get("use").is_none_or(|u| u == "sig"));
        }
        let oct = serde_json::json!({"kty": "oct", "k": secret, "alg": "HS256"});
        prop_assert!(crate::jwks::parse_jwk(&oct).is_err());
    }

    #[test]
    fn a_claim_can_never_inject_a_dovecot_variable_into_pass_attrs(t in "(?s).{0,60}", v in json()) {
        let mut c = Claims::new();
        c.insert("x".into(), v);
        let _ = claims::expand_template(&t, "x", &c);
        if !t.contains('%') {
            prop_assert_eq!(claims::expand_template(&t, "x", &c), t);
        }
        // Dovecot expands the result once more; every '%' a claim brings is doubled, so it stays text.
        let expanded = claims::expand_template("%{oauth2:x}", "x", &c);
        prop_assert!(!expanded.replace("%%", "").contains('%'), "{}", expanded);
        prop_assert_eq!(expanded.replace("%%", "%"), claims::claim_text(&c, "x").unwrap_or_default());
    }

    #[test]
    fn username_formats_parse_or_fail_cleanly_and_apply_as_dovecot_does(f in "(?s).{0,20}", user in "(?s).{0,40}") {
        if let Ok(fmt) = crate::config::UsernameFormat::parse(&f) {
            let out = fmt.apply(&user);
            if !f.contains('%') {
                prop_assert_eq!(out, f);
            }
        }
        let parse = |f: &str| crate::config::UsernameFormat::parse(f).unwrap();
        prop_assert_eq!(parse("%u").apply(&user), user.clone());
        prop_assert_eq!(parse("%Lu").apply(&user), user.to_ascii_lowercase());
        if user.matches('@').count() == 1 {
            prop_assert_eq!(parse("%n@%d").apply(&user), user);
        }
    }

    #[test]
    fn shown_text_is_printable_bounded_and_loses_nothing_under_its_cap(s in "(?s).{0,200}") {
        let out = shown(&s);
        prop_assert!(printable(&out), "{:?}", out);
        // One escape is at most `\u{10ffff}`; the cap counts characters of `s`.
        prop_assert!(out.chars().count() <= MAX_SHOWN_CHARS * 10 + 3);
        if s.chars().count() <= MAX_SHOWN_CHARS {
            prop_assert_eq!(unshown(&out), s);
        } else {
            let kept = out.strip_suffix("...").expect("a cut is marked");
            prop_assert_eq!(unshown(kept), s.chars().take(MAX_SHOWN_CHARS).collect::<String>());
        }
    }

    #[test]
    fn any_text_in_an_error_message_is_shown_escaped_and_bounded(s in "(?s).{0,3000}") {
        let errors: Vec<String> = vec![
            Rejection::WrongIssuer(s.clone()).to_string(),
            Rejection::WrongUser { token_user: s.clone(), login_user: s.clone() }.to_string(),
            Rejection::AccountDisabled { attribute: s.clone(), value: s.clone() }.to_string(),
            Rejection::ProviderError(s.clone()).to_string(),
            Rejection::Invalid(s.clone()).to_string(),
            Unavailable::Unreachable { url: s.clone(), reason: s.clone() }.to_string(),
            Unavailable::Internal(s.clone()).to_string(),
        ];
        for e in errors {
            prop_assert!(printable(&e), "{:?}", e);
            prop_assert!(e.chars().count() < 12 * 512, "{} chars", e.chars().count());
        }
    }

    #[test]
    fn credentials_in_a_url_are_never_shown_whatever_they_hold(
        user in "U9[A-Za-z0-9/?#@:%\\[\\] .!$&'()*+,;=-]{0,12}",
        pass in "S3[A-Za-z0-9/?#@:%\\[\\] .!$&'()*+,;=-]{0,12}",
    ) {
        let url = format!("https://{user}:{pass}@idp.test/introspect?access_token=S3#U9");
        let out = redact_url(&url);
        prop_assert!(!out.contains("S3") && !out.contains("U9"), "{} shown as {}", url, out);
        if check_url(&url).is_ok() {
            prop_assert_eq!(out, "https://idp.test/introspect");
        }
    }
}
