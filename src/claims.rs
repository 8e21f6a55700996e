//! The rules applied to what the provider said about a token: identity, activity, scope, audience,
//! issuer, time; and the `pass_attrs` fields built from it. Pure functions, the same for every mode.

use crate::config::Settings;
use crate::errors::Rejection;
use serde_json::{Map, Value};
use std::sync::Arc;

pub type Claims = Map<String, Value>;

/// Whose login a token is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login<'a> {
    /// The SASL login user (the Lua module): the token must belong to them.
    User(&'a str),
    /// No login user (the daemon, `dovecot-oauth2d`): every rule but the user comparison is applied,
    /// and the token's user is returned for Dovecot, which compares it with the login user itself.
    Token,
}

/// What an introspection reply passes on for an accepted token ([`Login::Token`] only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    /// The token's user after `username_attribute` and `username_format`.
    pub username: Box<str>,
    /// The provider's `exp` (Unix seconds), when it reported one.
    pub exp: Option<u64>,
    /// The provider's `scope` (or Entra ID's `scp`), space-separated.
    pub scope: Option<Box<str>>,
    /// The claims `pass_attrs` names (`%{oauth2:NAME}`, `%$`), as the provider sent them.
    pub claims: Box<[(Box<str>, Value)]>,
}

/// Reply members the daemon writes itself, or that Dovecot reads with a meaning of its own
/// (`error` fails the login, `token_type` must be Bearer, `expires_in` a whole number): never passed on.
pub const RESERVED_REPLY_MEMBERS: &[&str] =
    &["active", "username", "exp", "scope", "error", "token_type", "expires_in"];

/// What a validated token proves, kept in the cache. Small on purpose (a worker may hold 100,000):
/// the user it belongs to is already bound by the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `exp` when the provider reported one (Unix seconds).
    pub expires_at: Option<u64>,
    /// `pass_attrs` with `%{oauth2:...}` filled in; other `%` variables are left for Dovecot.
    pub fields: Vec<(String, String)>,
    /// Set for a token checked with [`Login::Token`] (the daemon), None for the module's logins.
    pub introspection: Option<Arc<Introspection>>,
}

/// A claim as Dovecot's oauth2 driver sees it: scalars as text, arrays of scalars space-joined.
pub fn claim_text(claims: &Claims, name: &str) -> Option<String> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
    match claims.get(name)? {
        Value::Array(items) => Some(items.iter().filter_map(scalar).collect::<Vec<_>>().join(" ")),
        Value::Null | Value::Object(_) => None,
        v => scalar(v),
    }
}

fn claim_u64(claims: &Claims, name: &str) -> Option<u64> {
    match claims.get(name)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Applies every rule to the provider's claims for `login_user`, in the order an admin would debug them.
pub fn check(settings: &Settings, claims: &Claims, login_user: &str, now: u64) -> Result<Identity, Rejection> {
    check_login(settings, claims, Login::User(login_user), now)
}

/// [`check`] for a login user, or for the token alone ([`Login::Token`]: everything but the user
/// comparison, which Dovecot then makes with the returned [`Introspection::username`]).
pub fn check_login(settings: &Settings, claims: &Claims, login: Login<'_>, now: u64) -> Result<Identity, Rejection> {
    // RFC 7662: `active` is the provider's verdict; false means no, whatever else is in the reply.
    if let Some(active) = claims.get("active") {
        if !(active == &Value::Bool(true) || active == &Value::String("true".into())) {
            return Err(Rejection::Inactive);
        }
    }
    let leeway = settings.leeway.as_secs();
    let expires_at = claim_u64(claims, "exp");
    if let Some(exp) = expires_at {
        if exp.saturating_add(leeway) <= now {
            return Err(Rejection::Expired(now - exp));
        }
    }
    if let Some(nbf) = claim_u64(claims, "nbf") {
        if nbf > now.saturating_add(leeway) {
            return Err(Rejection::NotYetValid(nbf - now));
        }
    }
    // A token minted in the future means a clock far off or a forged token.
    if let Some(iat) = claim_u64(claims, "iat") {
        if iat > now.saturating_add(leeway) {
            return Err(Rejection::IssuedInFuture(iat - now));
        }
    }
    if !settings.issuers.is_empty() {
        if let Some(iss) = claim_text(claims, "iss") {
            if !settings.issuers.contains(&iss) {
                return Err(Rejection::WrongIssuer(iss));
            }
        }
    }
    if !settings.audience.is_empty() {
        let aud = claim_text(claims, "aud").unwrap_or_default();
        if !aud.split(' ').any(|a| settings.audience.iter().any(|want| want == a)) {
            return Err(Rejection::WrongAudience(settings.audience.join(" ")));
        }
    }
    if !settings.scope.is_empty() {
        // JWTs carry `scope` as a space-separated string (RFC 9068) or, from Entra ID, as `scp`.
        // Dovecot 2.3 falls back to `aud` when a reply has no `scope`; kept for compatibility.
        let have = claim_text(claims, "scope")
            .or_else(|| claim_text(claims, "scp"))
            .or_else(|| claim_text(claims, "aud"))
            .unwrap_or_default();
        let have: Vec<&str> = have.split_whitespace().collect();
        if let Some(missing) = settings.scope.iter().find(|s| !have.contains(&s.as_str())) {
            return Err(Rejection::MissingScope(missing.clone()));
        }
    }
    let token_user = claim_text(claims, &settings.username_attribute)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Rejection::NoUsername(settings.username_attribute.clone()))?;
    let username = settings.username_format.apply(&token_user);
    if let Login::User(login_user) = login {
        let login = settings.username_format.apply(login_user);
        if username != login {
            return Err(Rejection::WrongUser { token_user: username, login_user: login });
        }
    }
    if let Some(attr) = &settings.active_attribute {
        let value = claim_text(claims, attr);
        let ok = match (&value, &settings.active_value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(want)) => v == want,
        };
        if !ok {
            return Err(Rejection::AccountDisabled { attribute: attr.clone(), value: value.unwrap_or_default() });
        }
    }
    if login == Login::Token {
        let introspection = introspection(settings, claims, username, expires_at);
        return Ok(Identity { expires_at, fields: Vec::new(), introspection: Some(Arc::new(introspection)) });
    }
    let fields = settings
        .pass_attrs
        .iter()
        .map(|(field, template)| (field.clone(), expand_template(template, field, claims)))
        .collect();
    Ok(Identity { expires_at, fields, introspection: None })
}

/// The daemon's reply material: the formatted user, the scope, and the claims `pass_attrs` uses, so
/// that the same `pass_attrs` line in Dovecot's own oauth2 settings finds them in the reply.
fn introspection(settings: &Settings, claims: &Claims, username: String, exp: Option<u64>) -> Introspection {
    let scope = claim_text(claims, "scope").or_else(|| claim_text(claims, "scp")).map(String::into_boxed_str);
    let mut passed: Vec<(Box<str>, Value)> = Vec::new();
    for name in pass_attrs_claims(settings) {
        if RESERVED_REPLY_MEMBERS.contains(&name) || passed.iter().any(|(n, _)| &**n == name) {
            continue;
        }
        if let Some(v) = claims.get(name) {
            passed.push((name.into(), v.clone()));
        }
    }
    Introspection { username: username.into_boxed_str(), exp, scope, claims: passed.into_boxed_slice() }
}

/// The claim names `pass_attrs` templates read: `%{oauth2:NAME}` / `%{oauth2:NAME:default}`, and the
/// field's own name for `%$`.
pub fn pass_attrs_claims(settings: &Settings) -> Vec<&str> {
    let mut names = Vec::new();
    for (field, template) in &settings.pass_attrs {
        let mut rest = template.as_str();
        while let Some(i) = rest.find('%') {
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                names.push(field.as_str());
                rest = stripped;
            } else if let Some(inner) = after.strip_prefix("{oauth2:") {
                let end = inner.find('}').unwrap_or(inner.len());
                let spec = &inner[..end];
                names.push(spec.split_once(':').map_or(spec, |(n, _)| n));
                rest = inner.get(end + 1..).unwrap_or("");
            } else {
                rest = after.strip_prefix('%').unwrap_or(after);
            }
        }
    }
    names
}

/// Checks a `pass_attrs` template when the settings are read, so a typo is a settings error.
pub fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find("%{") {
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| format!("'{t}' has an unclosed %{{"))?;
        rest = &after[end + 1..];
    }
    Ok(())
}

/// Fills `%{oauth2:claim}`, `%{oauth2:claim:default}` and `%$` (the claim named like the field).
/// Claim values are escaped (`%` -> `%%`) because Dovecot expands the result once more for its own
/// variables (`%u`, `%{rip}`...): a claim must never inject a variable.
pub fn expand_template(template: &str, field: &str, claims: &Claims) -> String {
    let escape = |v: String| v.replace('%', "%%");
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push_str(&escape(claim_text(claims, field).unwrap_or_default()));
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix("{oauth2:") {
            let end = inner.find('}').unwrap_or(inner.len());
            let spec = &inner[..end];
            let (name, default) = spec.split_once(':').unwrap_or((spec, ""));
            out.push_str(&escape(claim_text(claims, name).unwrap_or_else(|| default.to_string())));
            rest = inner.get(end + 1..).unwrap_or("");
        } else if let Some(stripped) = after.strip_prefix('%') {
            out.push_str("%%");
            rest = stripped;
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn settings(extra: &str) -> Settings {
        Settings::parse(Path::new("t.conf"), &format!("introspection_url = https://idp/u\n{extra}")).unwrap()
    }
    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn matching_email_is_accepted_case_insensitively_by_default() {
        assert!(
            check(&settings(""), &claims(json!({"email": "Alice@Example.test"})), "alice@example.test", NOW).is_ok()
        );
        assert!(
            check(&settings(""), &claims(json!({"email": "alice@example.test"})), "ALICE@Example.TEST", NOW).is_ok()
        );
    }

    #[test]
    fn token_of_another_user_is_rejected() {
        let e =
            check(&settings(""), &claims(json!({"email": "bob@example.test"})), "alice@example.test", NOW).unwrap_err();
        assert!(matches!(e, Rejection::WrongUser { .. }));
    }

    #[test]
    fn reply_without_the_username_attribute_is_rejected() {
        let e =
            check(&settings("username_attribute = preferred_username\n"), &claims(json!({"email": "a@x"})), "a@x", NOW)
                .unwrap_err();
        assert_eq!(e, Rejection::NoUsername("preferred_username".into()));
    }

    #[test]
    fn inactive_introspection_reply_is_rejected_even_with_a_matching_user() {
        let e = check(&settings(""), &claims(json!({"active": false, "email": "a@x"})), "a@x", NOW).unwrap_err();
        assert_eq!(e, Rejection::Inactive);
    }

    #[test]
    fn expired_reply_is_rejected_after_the_leeway() {
        let s = settings("leeway_secs = 0\n");
        assert!(matches!(
            check(&s, &claims(json!({"exp": NOW - 1, "email": "a@x"})), "a@x", NOW),
            Err(Rejection::Expired(1))
        ));
        assert!(check(&settings(""), &claims(json!({"exp": NOW - 1, "email": "a@x"})), "a@x", NOW).is_ok());
    }

    #[test]
    fn not_yet_valid_reply_is_rejected() {
        let s = settings("leeway_secs = 0\n");
        assert!(matches!(
            check(&s, &claims(json!({"nbf": NOW + 100, "email": "a@x"})), "a@x", NOW),
            Err(Rejection::NotYetValid(100))
        ));
    }

    #[test]
    fn iat_in_the_future_beyond_the_leeway_is_rejected() {
        let s = settings("leeway_secs = 10\n");
        assert!(check(&s, &claims(json!({"iat": NOW + 10, "email": "a@x"})), "a@x", NOW).is_ok());
        assert_eq!(
            check(&s, &claims(json!({"iat": NOW + 11, "email": "a@x"})), "a@x", NOW).unwrap_err(),
            Rejection::IssuedInFuture(11)
        );
    }

    #[test]
    fn scope_may_be_an_array_or_entra_scp() {
        let s = settings("scope = mail\n");
        assert!(check(&s, &claims(json!({"scope": ["openid", "mail"], "email": "a@x"})), "a@x", NOW).is_ok());
        assert!(check(&s, &claims(json!({"scp": "mail.read mail", "email": "a@x"})), "a@x", NOW).is_ok());
        assert!(check(&s, &claims(json!({"scp": "mail.read", "email": "a@x"})), "a@x", NOW).is_err());
    }

    #[test]
    fn every_configured_scope_is_required() {
        let s = settings("scope = mail imap\n");
        assert!(check(&s, &claims(json!({"scope": "openid mail imap", "email": "a@x"})), "a@x", NOW).is_ok());
        let e = check(&s, &claims(json!({"scope": "openid mail", "email": "a@x"})), "a@x", NOW).unwrap_err();
        assert_eq!(e, Rejection::MissingScope("imap".into()));
    }

    #[test]
    fn audience_must_match_one_configured_value() {
        let s = settings("audience = urn:dovecot\n");
        assert!(check(&s, &claims(json!({"aud": ["x", "urn:dovecot"], "email": "a@x"})), "a@x", NOW).is_ok());
        assert!(matches!(
            check(&s, &claims(json!({"aud": "x", "email": "a@x"})), "a@x", NOW),
            Err(Rejection::WrongAudience(_))
        ));
        assert!(matches!(check(&s, &claims(json!({"email": "a@x"})), "a@x", NOW), Err(Rejection::WrongAudience(_))));
    }

    #[test]
    fn reported_issuer_must_be_listed() {
        let s = settings("issuers = https://a https://b\n");
        assert!(check(&s, &claims(json!({"iss": "https://b", "email": "a@x"})), "a@x", NOW).is_ok());
        assert_eq!(
            check(&s, &claims(json!({"iss": "https://c", "email": "a@x"})), "a@x", NOW).unwrap_err(),
            Rejection::WrongIssuer("https://c".into())
        );
    }

    #[test]
    fn active_attribute_and_value_follow_dovecot() {
        let s = settings("active_attribute = status\nactive_value = enabled\n");
        assert!(check(&s, &claims(json!({"status": "enabled", "email": "a@x"})), "a@x", NOW).is_ok());
        assert!(matches!(
            check(&s, &claims(json!({"status": "locked", "email": "a@x"})), "a@x", NOW),
            Err(Rejection::AccountDisabled { .. })
        ));
        assert!(matches!(
            check(&s, &claims(json!({"email": "a@x"})), "a@x", NOW),
            Err(Rejection::AccountDisabled { .. })
        ));
        let present_only = settings("active_attribute = email_verified\n");
        assert!(check(&present_only, &claims(json!({"email_verified": false, "email": "a@x"})), "a@x", NOW).is_ok());
    }

    #[test]
    fn pass_attrs_fill_oauth2_claims_with_defaults_and_escape_percent() {
        let c = claims(json!({"quota": "5%", "groups": ["a", "b"]}));
        assert_eq!(expand_template("%{oauth2:quota}", "q", &c), "5%%");
        assert_eq!(expand_template("%{oauth2:missing:1G}", "q", &c), "1G");
        assert_eq!(expand_template("%$", "groups", &c), "a b");
        assert_eq!(expand_template("host=%{rip}", "x", &c), "host=%{rip}");
    }

    #[test]
    fn a_token_checked_alone_returns_its_user_formatted_by_username_format() {
        let s = settings("");
        let id = check_login(&s, &claims(json!({"email": "Alice@Example.TEST"})), Login::Token, NOW).unwrap();
        let i = id.introspection.unwrap();
        assert_eq!(&*i.username, "alice@example.test");
        let s = settings("username_format = %n\n");
        let id = check_login(&s, &claims(json!({"email": "Alice@Example.TEST"})), Login::Token, NOW).unwrap();
        assert_eq!(&*id.introspection.unwrap().username, "Alice");
    }

    #[test]
    fn a_token_checked_alone_still_meets_every_other_rule() {
        let s = settings("scope = mail\naudience = urn:dovecot\nactive_attribute = status\nactive_value = on\n");
        let good = json!({"email": "a@x", "scope": "mail", "aud": "urn:dovecot", "status": "on"});
        assert!(check_login(&s, &claims(good.clone()), Login::Token, NOW).is_ok());
        for (key, bad) in [("scope", json!("imap")), ("aud", json!("other")), ("status", json!("off"))] {
            let mut c = claims(good.clone());
            c.insert(key.into(), bad);
            assert!(check_login(&s, &c, Login::Token, NOW).is_err(), "{key}");
        }
        let mut c = claims(good.clone());
        c.remove("email");
        assert_eq!(check_login(&s, &c, Login::Token, NOW).unwrap_err(), Rejection::NoUsername("email".into()));
        let expired = json!({"email": "a@x", "scope": "mail", "aud": "urn:dovecot", "status": "on", "exp": NOW - 3600});
        assert!(matches!(check_login(&s, &claims(expired), Login::Token, NOW), Err(Rejection::Expired(_))));
        assert_eq!(
            check_login(&s, &claims(json!({"active": false, "email": "a@x"})), Login::Token, NOW).unwrap_err(),
            Rejection::Inactive
        );
    }

    #[test]
    fn a_token_checked_alone_passes_on_scope_and_the_claims_pass_attrs_names_but_no_reserved_member() {
        let s = settings(
            "pass_attrs = userdb_quota_rule=*:storage=%{oauth2:quota:1G} groups=%$ x=%{oauth2:error} y=%{oauth2:exp}\n",
        );
        let c = claims(json!({"email": "a@x", "scp": "mail.read mail", "quota": "2G", "groups": ["a", "b"],
                              "error": "x", "exp": NOW + 60, "other": 1}));
        let id = check_login(&s, &c, Login::Token, NOW).unwrap();
        assert!(id.fields.is_empty(), "the daemon exports no passdb fields itself");
        let i = id.introspection.unwrap();
        assert_eq!(i.scope.as_deref(), Some("mail.read mail"));
        assert_eq!(&*i.claims, &[("quota".into(), json!("2G")), ("groups".into(), json!(["a", "b"]))]);
        assert_eq!((id.expires_at, i.exp), (Some(NOW + 60), Some(NOW + 60)));
    }

    #[test]
    fn a_login_users_check_carries_no_introspection() {
        let id = check(&settings(""), &claims(json!({"email": "a@x"})), "a@x", NOW).unwrap();
        assert_eq!(id.introspection, None);
    }

    #[test]
    fn pass_attrs_claim_names_are_read_from_every_template_form() {
        let s =
            settings("pass_attrs = a=%{oauth2:one} b=%{oauth2:two:dflt}-%{oauth2:three} c=%$ d=%%{oauth2:no} e=%u\n");
        assert_eq!(pass_attrs_claims(&s), vec!["one", "two", "three", "c"]);
    }

    #[test]
    fn exp_is_reported_for_cache_lifetime() {
        let id = check(&settings(""), &claims(json!({"exp": NOW + 60, "email": "a@x"})), "a@x", NOW).unwrap();
        assert_eq!(id.expires_at, Some(NOW + 60));
    }
}
