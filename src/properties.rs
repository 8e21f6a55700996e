//! Property tests: whatever arrives from a client, a settings file or a provider, the parsers answer
//! with a value or an error, never a panic, and refuse oversized input before working on it.

use crate::claims::{self, Claims};
use crate::config::Settings;
use crate::errors::Rejection;
use crate::http::Reply;
use crate::jwt;
use crate::provider;
use crate::token::Token;
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn settings_text_never_panics(text in "(?s).{0,400}") {
        let _ = Settings::parse(Path::new("p.conf"), &text);
    }

    #[test]
    fn settings_lines_of_known_keys_with_any_value_never_panic(
        key in prop::sample::select(vec!["introspection_url", "introspection_mode", "username_format", "pass_attrs", "timeout_msecs",
            "scope", "issuers", "openid_configuration_url", "jwks_url", "max_token_bytes", "leeway_secs", "active_value", "tokeninfo_url"]),
        value in "(?s).{0,80}",
    ) {
        let _ = Settings::parse(Path::new("p.conf"), &format!("introspection_url = https://i/u\n{key} = {value}\n"));
    }

    #[test]
    fn any_bytes_as_a_token_are_checked_without_panic(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(t) = Token::parse(&raw, 512) {
            let _ = t.unverified_jwt_exp();
            let _ = t.url_encoded();
            let _ = jwt::shape(t.as_str());
        }
    }

    #[test]
    fn jwt_shaped_garbage_is_classified_without_panic(a in "[A-Za-z0-9_=-]{0,60}", b in "[A-Za-z0-9_=-]{0,60}", c in "[A-Za-z0-9_=-]{0,60}") {
        let t = format!("{a}.{b}.{c}");
        let _ = jwt::shape(&t);
        if let Ok(tok) = Token::parse(t.as_bytes(), 4096) {
            let _ = tok.unverified_jwt_exp();
        }
    }

    #[test]
    fn a_token_over_the_bound_is_refused_before_anything_else(extra in 1usize..5000) {
        let raw = vec![b'a'; 512 + extra];
        prop_assert_eq!(Token::parse(&raw, 512).unwrap_err(), Rejection::TooLarge(512 + extra, 512));
    }

    #[test]
    fn any_provider_reply_body_is_classified_without_panic(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..300)) {
        let reply = Reply { status, body, elapsed: Duration::ZERO, cache_control: None };
        let _ = provider::parse_reply(&reply, "https://idp/u", false);
        let _ = provider::parse_reply(&reply, "https://idp/u", true);
    }

    #[test]
    fn any_json_reply_goes_through_the_rules_without_panic(v in json(), user in ".{0,30}", now in any::<u64>()) {
        let claims: Claims = match v { serde_json::Value::Object(m) => m, other => { let mut m = Claims::new(); m.insert("email".into(), other); m } };
        let _ = claims::check(&settings(), &claims, &user, now);
    }

    #[test]
    fn any_json_as_a_jwk_is_parsed_or_refused_without_panic(v in json()) {
        let _ = crate::jwks::parse_jwk(&v);
    }

    #[test]
    fn pass_attrs_templates_expand_without_panic(t in "(?s).{0,60}", v in json()) {
        let mut c = Claims::new();
        c.insert("x".into(), v);
        let _ = claims::expand_template(&t, "x", &c);
    }

    #[test]
    fn username_formats_parse_or_fail_cleanly_and_apply_to_any_user(f in "(?s).{0,20}", user in "(?s).{0,40}") {
        if let Ok(fmt) = crate::config::UsernameFormat::parse(&f) {
            let _ = fmt.apply(&user);
        }
    }
}
