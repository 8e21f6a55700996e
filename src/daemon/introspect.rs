//! The one place where a verdict becomes an RFC 7662 reply, shaped by what Dovecot's oauth2 client
//! does with it (2.3.19's `driver = oauth2`, 2.4's `oauth2 {}`):
//!
//! - accepted: 200 `{"active":true,"username":...}` plus `exp`, `scope` and the claims `pass_attrs`
//!   names. `username` is already folded by `username_format` (2.4.1 compares it case-sensitively).
//! - refused: 200 `{"active":false}` and nothing else: Dovecot answers "authentication failed".
//! - no verdict now (provider down, timeout, 5xx, open circuit): 503. Dovecot never reads a 5xx body;
//!   2.3 and 2.4.2+ answer a temporary failure, 2.4.1 "authentication failed".
//!
//! Never an `error` member (Dovecot reads it as an internal failure), never `token_type` or
//! `expires_in` (Dovecot fails a reply whose `token_type` is not Bearer or whose `expires_in` is not a
//! whole number; `exp` says the same).

use crate::claims::Introspection;
use crate::errors::Verdict;
use crate::lookup::Outcome;
use crate::stats::unavailable_kind;
use serde_json::Value;

/// An HTTP reply: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, content_type: JSON, body: body.into() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, content_type: TEXT, body: body.into() }
    }
}

pub const INACTIVE: &str = r#"{"active":false}"#;

/// The reply to `POST /introspect` for an outcome of `Authenticator::introspect`.
pub fn reply(outcome: &Outcome) -> Reply {
    match (&outcome.verdict, &outcome.introspection) {
        (Verdict::Accept(_), Some(i)) => Reply::json(200, active(i)),
        // An acceptance without the introspection part can only come from a login path, never from
        // `introspect`: no answer rather than a wrong one.
        (Verdict::Accept(_), None) => Reply::text(500, "internal error: no introspection for this verdict\n"),
        (Verdict::Reject(_), _) => Reply::json(200, INACTIVE),
        (Verdict::TempFail(u), _) => Reply::text(
            503,
            format!("temporary failure ({}); the reason is in dovecot-oauth2d's log\n", unavailable_kind(u)),
        ),
    }
}

/// `{"active":true,"username":...,"exp":...,"scope":...,<claims>}`.
pub fn active(i: &Introspection) -> String {
    let mut out = String::with_capacity(64 + i.username.len());
    out.push_str(r#"{"active":true,"username":"#);
    push_json(&mut out, &Value::String(i.username.to_string()));
    if let Some(exp) = i.exp {
        out.push_str(&format!(r#","exp":{exp}"#));
    }
    if let Some(scope) = &i.scope {
        out.push_str(r#","scope":"#);
        push_json(&mut out, &Value::String(scope.to_string()));
    }
    for (name, value) in i.claims.iter() {
        out.push(',');
        push_json(&mut out, &Value::String(name.to_string()));
        out.push(':');
        push_json(&mut out, value);
    }
    out.push('}');
    out
}

fn push_json(out: &mut String, v: &Value) {
    // Serializing a Value into a String cannot fail.
    out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Source;
    use crate::errors::{Rejection, Unavailable};
    use crate::token::fingerprint;
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    fn outcome(verdict: Verdict, introspection: Option<Introspection>) -> Outcome {
        Outcome {
            verdict,
            source: Some(Source::Provider),
            fingerprint: fingerprint(b"t"),
            elapsed: Duration::ZERO,
            local: false,
            warnings: vec![],
            introspection: introspection.map(Arc::new),
        }
    }

    fn alice() -> Introspection {
        Introspection { username: "alice@example.test".into(), exp: None, scope: None, claims: Box::new([]) }
    }

    fn body(r: &Reply) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn an_acceptance_is_active_with_the_username() {
        let r = reply(&outcome(Verdict::Accept(vec![]), Some(alice())));
        assert_eq!((r.status, r.content_type), (200, JSON));
        assert_eq!(body(&r), json!({"active": true, "username": "alice@example.test"}));
    }

    #[test]
    fn exp_scope_and_passed_claims_follow_the_username() {
        let i = Introspection {
            exp: Some(1_900_000_000),
            scope: Some("openid mail".into()),
            claims: Box::new([("quota".into(), json!("2G")), ("groups".into(), json!(["a", "b"]))]),
            ..alice()
        };
        let r = reply(&outcome(Verdict::Accept(vec![]), Some(i)));
        assert_eq!(
            body(&r),
            json!({"active": true, "username": "alice@example.test", "exp": 1_900_000_000u64,
                   "scope": "openid mail", "quota": "2G", "groups": ["a", "b"]})
        );
        assert!(r.body.starts_with(r#"{"active":true,"username":"alice@example.test","exp":1900000000"#));
    }

    #[test]
    fn every_rejection_is_inactive_and_nothing_else() {
        for r in [
            Rejection::Inactive,
            Rejection::ProviderRefused(401),
            Rejection::Expired(5),
            Rejection::Malformed("empty token"),
            Rejection::NoUsername("email".into()),
            Rejection::BadSignature,
            Rejection::MissingScope("mail".into()),
        ] {
            let reply = reply(&outcome(Verdict::Reject(r.clone()), Some(alice())));
            assert_eq!((reply.status, reply.body.as_str()), (200, INACTIVE), "{r:?}");
        }
    }

    #[test]
    fn every_temporary_failure_is_a_503_without_an_error_member() {
        for u in [
            Unavailable::Unreachable { url: "http://idp/u".into(), reason: "refused".into() },
            Unavailable::Timeout { url: "http://idp/u".into(), msecs: 1000 },
            Unavailable::Status { url: "http://idp/u".into(), status: 502 },
            Unavailable::BadReply { url: "http://idp/u".into(), reason: "not JSON".into() },
            Unavailable::NoKeys { url: "http://idp/k".into(), reason: "x".into() },
            Unavailable::CircuitOpen { host: "idp".into(), failures: 5, retry_in_secs: 10 },
            Unavailable::Internal("x".into()),
        ] {
            let r = reply(&outcome(Verdict::TempFail(u.clone()), None));
            assert_eq!((r.status, r.content_type), (503, TEXT), "{u:?}");
            assert!(!r.body.contains("error\""), "{}", r.body);
            assert!(!r.body.contains("http://idp"), "no provider detail to the client: {}", r.body);
        }
    }

    #[test]
    fn an_acceptance_without_introspection_is_never_answered_active() {
        let r = reply(&outcome(Verdict::Accept(vec![]), None));
        assert_eq!(r.status, 500);
    }

    #[test]
    fn usernames_and_claims_are_json_escaped() {
        let i = Introspection {
            username: "a\"b\\c\n@x".into(),
            claims: Box::new([("we\"ird".into(), json!("v\u{0}"))]),
            ..alice()
        };
        let v = body(&reply(&outcome(Verdict::Accept(vec![]), Some(i))));
        assert_eq!(v["username"], "a\"b\\c\n@x");
        assert_eq!(v["we\"ird"], "v\u{0}");
    }
}
