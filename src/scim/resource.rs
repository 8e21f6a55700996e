//! The SCIM User resource (RFC 7643 4.1) as this service keeps it: the document the identity provider
//! wrote, checked against the schemas it publishes, plus the server's own id, times and version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Our extension: `mailQuota`, the one mail setting an identity provider may send.
pub const MAIL_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:dovecot-oauth2:2.0:User";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Ours: 32 lowercase hex characters, random.
    pub id: String,
    /// The resource as last written, checked and normalised, without `id`, `meta` and `schemas`.
    pub doc: Map<String, Value>,
    /// Unix seconds.
    pub created: u64,
    pub modified: u64,
    /// Bumped on every change; the ETag is `W/"<version>"`.
    pub version: u64,
}

use super::error::ScimError;
use crate::escape::shown_max;

/// How much of a client's value an error detail quotes.
const SHOWN: usize = 64;
/// The whole checked document, serialised.
pub const MAX_DOC_BYTES: usize = 64 * 1024;
/// One string value, in characters.
pub const MAX_STRING_CHARS: usize = 1024;
/// Items of one multi-valued attribute.
pub const MAX_VALUES: usize = 32;

/// The type of a published attribute (RFC 7643 2.3): only the ones our attributes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Boolean,
    Complex(&'static [Attr]),
}

/// One published attribute: what `checked` accepts and what `/Schemas` says, from this one table, so
/// the two cannot drift apart. Every attribute is readWrite and returned by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attr {
    pub name: &'static str,
    pub kind: Kind,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    /// "none" or "server".
    pub uniqueness: &'static str,
    pub canonical: &'static [&'static str],
    pub description: &'static str,
}

const fn string(name: &'static str, description: &'static str) -> Attr {
    Attr {
        name,
        kind: Kind::String,
        multi: false,
        required: false,
        case_exact: false,
        uniqueness: "none",
        canonical: &[],
        description,
    }
}

const NAME: &[Attr] = &[
    string("formatted", "The full name, formatted for display."),
    string("familyName", "The family name (last name)."),
    string("givenName", "The given name (first name)."),
    string("middleName", "The middle name(s)."),
    string("honorificPrefix", "The honorific prefix(es), e.g. 'Ms.'."),
    string("honorificSuffix", "The honorific suffix(es), e.g. 'III'."),
];

const EMAIL: &[Attr] = &[
    Attr { required: true, ..string("value", "The email address; those of served domains become aliases.") },
    string("display", "A human-readable name for the address."),
    Attr { canonical: &["work", "home", "other"], ..string("type", "The address's function: work, home or other.") },
    Attr { kind: Kind::Boolean, ..string("primary", "Whether this is the preferred address; true at most once.") },
];

/// The core User attributes this service keeps (RFC 7643 4.1), besides the common `externalId`.
pub(crate) const CORE_ATTRS: &[Attr] = &[
    Attr {
        required: true,
        uniqueness: "server",
        ..string("userName", "The mail address of the account: an address of a domain this server serves.")
    },
    Attr { kind: Kind::Complex(NAME), ..string("name", "The components of the user's real name.") },
    string("displayName", "The name of the user, suitable for display."),
    string("nickName", "The casual way to address the user."),
    string("title", "The user's title."),
    string("userType", "The relationship between the organization and the user."),
    string("preferredLanguage", "The user's preferred language, e.g. 'en-US'."),
    string("locale", "The user's default location for localisation."),
    string("timezone", "The user's time zone, e.g. 'Europe/Berlin'."),
    Attr { kind: Kind::Boolean, ..string("active", "Whether the account may log in; absent means true.") },
    Attr { kind: Kind::Complex(EMAIL), multi: true, ..string("emails", "Email addresses of the user.") },
];

/// The attributes of [`MAIL_SCHEMA`].
pub(crate) const MAIL_ATTRS: &[Attr] =
    &[string("mailQuota", "The mailbox quota as Dovecot reads it, e.g. '1G' or '500M'.")];

/// The common attribute a client may write (RFC 7643 3.1); not part of any schema's attributes.
pub(crate) const EXTERNAL_ID: &str = "externalId";

/// Attributes a client may send but never sets (RFC 7643 3.1, 4.1.2): dropped from a body.
const READ_ONLY: &[&str] = &["id", "meta", "groups", "schemas"];

/// The attribute of `attrs` named `name`, attribute names being case-insensitive (RFC 7643 2.1).
pub(crate) fn find(attrs: &'static [Attr], name: &str) -> Option<&'static Attr> {
    attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// The member of `obj` named `name` in any case.
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

impl User {
    pub fn user_name(&self) -> &str {
        self.doc.get("userName").and_then(Value::as_str).unwrap_or("")
    }

    /// Absent means active (RFC 7643 4.1.1 leaves the default to the provider; an IdP that never sends
    /// `active` must still get working accounts).
    pub fn active(&self) -> bool {
        self.doc.get("active").and_then(Value::as_bool).unwrap_or(true)
    }

    /// (value, primary) of each email, in the order the client gave them.
    pub fn emails(&self) -> Vec<(String, bool)> {
        let Some(Value::Array(items)) = self.doc.get("emails") else { return Vec::new() };
        items
            .iter()
            .filter_map(|item| {
                let value = item.get("value")?.as_str()?;
                Some((value.to_string(), item.get("primary").and_then(Value::as_bool).unwrap_or(false)))
            })
            .collect()
    }

    /// An attribute by `"URN:attr"` (core or our extension) or `"attr"`, with an optional
    /// `.subAttribute`; names case-insensitive. For settings such as `scim_quota_attribute`.
    pub fn attribute(&self, path: &str) -> Option<&Value> {
        let (container, rest) = split_urn(path);
        let (name, sub) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        let obj = match container {
            Container::Core => &self.doc,
            Container::Mail => self.doc.get(MAIL_SCHEMA)?.as_object()?,
            Container::Other => return None,
        };
        let value = get_ci(obj, name)?;
        match sub {
            None => Some(value),
            Some(sub) => get_ci(value.as_object()?, sub),
        }
    }

    /// The full SCIM representation (RFC 7643 3): `schemas`, `id`, `meta` and the document.
    pub fn to_json(&self, base: &str) -> Value {
        let base = base.trim_end_matches('/');
        let mut out = self.doc.clone();
        let mut schemas = vec![Value::from(USER_SCHEMA)];
        if out.contains_key(MAIL_SCHEMA) {
            schemas.push(Value::from(MAIL_SCHEMA));
        }
        out.insert("schemas".into(), Value::Array(schemas));
        out.insert("id".into(), Value::from(self.id.as_str()));
        out.insert(
            "meta".into(),
            serde_json::json!({
                "resourceType": "User",
                "created": crate::daemon::log::utc(self.created),
                "lastModified": crate::daemon::log::utc(self.modified),
                "location": format!("{base}/Users/{}", self.id),
                "version": format!("W/\"{}\"", self.version),
            }),
        );
        Value::Object(out)
    }
}

/// Which object an attribute path's URN prefix points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Container {
    Core,
    Mail,
    Other,
}

/// Splits `"urn:...:User:attr.sub"` into the container and `"attr.sub"`; a path without a URN is core.
/// A bare schema URN gives an empty rest. URNs are compared case-insensitively.
pub(crate) fn split_urn(path: &str) -> (Container, &str) {
    for (urn, container) in [(MAIL_SCHEMA, Container::Mail), (USER_SCHEMA, Container::Core)] {
        if path.len() >= urn.len() && path.is_char_boundary(urn.len()) && path[..urn.len()].eq_ignore_ascii_case(urn) {
            let rest = &path[urn.len()..];
            if rest.is_empty() {
                return (container, "");
            }
            if let Some(rest) = rest.strip_prefix(':') {
                return (container, rest);
            }
        }
    }
    if path.to_ascii_lowercase().starts_with("urn:") {
        return (Container::Other, path);
    }
    (Container::Core, path)
}

/// Checks and normalises a body a client wrote (POST, PUT, or what a PATCH produced): see the module
/// contract. Attribute names come out in their published spelling, `"True"`/`"False"` strings as
/// booleans, null and empty values dropped (RFC 7643 2.5: unassigned), unknown attributes ignored
/// (RFC 7644 3.3) and read-only ones (`id`, `meta`, `groups`) dropped.
pub fn checked(body: &Value) -> Result<Map<String, Value>, ScimError> {
    let Some(obj) = body.as_object() else {
        return Err(ScimError::invalid_syntax("the body is not a JSON object"));
    };
    let has_core = match get_ci(obj, "schemas") {
        Some(Value::Array(s)) => s.iter().any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(USER_SCHEMA))),
        _ => false,
    };
    if !has_core {
        return Err(ScimError::invalid_syntax(format!("schemas must contain {USER_SCHEMA}")));
    }
    let mut doc = Map::new();
    for (key, value) in obj {
        if READ_ONLY.iter().any(|r| r.eq_ignore_ascii_case(key)) {
            continue;
        }
        if key.eq_ignore_ascii_case(EXTERNAL_ID) {
            put(&mut doc, EXTERNAL_ID, checked_string(EXTERNAL_ID, value)?.map(Value::String))?;
        } else if key.eq_ignore_ascii_case(MAIL_SCHEMA) {
            let ext = match value {
                Value::Null => None,
                Value::Object(members) => checked_members(MAIL_SCHEMA, MAIL_ATTRS, members)?,
                _ => return Err(ScimError::invalid_value(format!("{MAIL_SCHEMA} must be an object"))),
            };
            put(&mut doc, MAIL_SCHEMA, ext.map(Value::Object))?;
        } else if let Some(attr) = find(CORE_ATTRS, key) {
            put(&mut doc, attr.name, checked_value(attr, value)?)?;
        }
    }
    match doc.get("userName") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(ScimError::invalid_value("userName is required")),
    }
    let size = serde_json::to_vec(&doc).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_DOC_BYTES {
        return Err(ScimError::invalid_value(format!("the user is {size} bytes, more than {MAX_DOC_BYTES}")));
    }
    Ok(doc)
}

/// Puts a checked value under its published name; the same attribute twice (names differing in
/// case only) is refused rather than one silently winning.
fn put(doc: &mut Map<String, Value>, name: &str, value: Option<Value>) -> Result<(), ScimError> {
    let Some(value) = value else { return Ok(()) };
    if doc.insert(name.to_string(), value).is_some() {
        return Err(ScimError::invalid_syntax(format!("{name} is given more than once")));
    }
    Ok(())
}

/// The members of a complex value or of the extension object, each checked; `None` when none is left.
fn checked_members(
    owner: &str,
    attrs: &'static [Attr],
    members: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, ScimError> {
    let mut out = Map::new();
    for (key, value) in members {
        if let Some(attr) = find(attrs, key) {
            let v =
                checked_value(attr, value).map_err(|e| ScimError { detail: format!("{owner}: {}", e.detail), ..e })?;
            put(&mut out, attr.name, v)?;
        }
    }
    for attr in attrs.iter().filter(|a| a.required) {
        if !out.is_empty() && !out.contains_key(attr.name) {
            return Err(ScimError::invalid_value(format!("{owner}.{} is required", attr.name)));
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn checked_value(attr: &'static Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    if !attr.multi {
        return checked_single(attr, value);
    }
    let Value::Array(items) = value else {
        return Err(ScimError::invalid_value(format!("{} must be an array", attr.name)));
    };
    if items.len() > MAX_VALUES {
        return Err(ScimError::invalid_value(format!("{} has more than {MAX_VALUES} values", attr.name)));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(v) = checked_single(attr, item)? {
            out.push(v);
        }
    }
    let primaries = out.iter().filter(|v| v.get("primary") == Some(&Value::Bool(true))).count();
    if primaries > 1 {
        return Err(ScimError::invalid_value(format!("{} has more than one primary value", attr.name)));
    }
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

fn checked_single(attr: &'static Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    match attr.kind {
        Kind::String => Ok(checked_string(attr.name, value)?.map(Value::String)),
        Kind::Boolean => match value {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(Value::Bool(*b))),
            // Entra ID sends booleans as "True"/"False" strings in PATCH operations.
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(Value::Bool(true))),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(Value::Bool(false))),
            other => Err(ScimError::invalid_value(format!("{} must be a boolean, not {}", attr.name, quoted(other)))),
        },
        Kind::Complex(subs) => match value {
            Value::Null => Ok(None),
            Value::Object(members) => Ok(checked_members(attr.name, subs, members)?.map(Value::Object)),
            other => Err(ScimError::invalid_value(format!("{} must be an object, not {}", attr.name, quoted(other)))),
        },
    }
}

/// A string attribute: empty means unassigned (RFC 7643 2.5).
fn checked_string(name: &str, value: &Value) -> Result<Option<String>, ScimError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s.chars().count() > MAX_STRING_CHARS => {
            Err(ScimError::invalid_value(format!("{name} is longer than {MAX_STRING_CHARS} characters")))
        }
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(ScimError::invalid_value(format!("{name} must be a string, not {}", quoted(other)))),
    }
}

/// A client's value for an error detail: escaped and capped.
pub(crate) fn quoted(v: &Value) -> String {
    let text = v.to_string();
    shown_max(&text, SHOWN)
}

/// Most attribute names one `attributes`/`excludedAttributes` parameter is read for.
const MAX_SELECTED: usize = 64;

/// Applies `attributes` or `excludedAttributes` (RFC 7644 3.9, comma-separated attribute paths, URN
/// prefixes and `.subAttribute` allowed, case-insensitive) to a representation. `id` and `schemas` are
/// returned always; everything else of ours is returned by default, so `attributes` keeps only what it
/// names (plus `id`, `schemas`) and `excludedAttributes` drops what it names. When both are given,
/// `attributes` wins. Unknown names select nothing.
pub fn select(rep: Value, attributes: Option<&str>, excluded: Option<&str>) -> Value {
    let Value::Object(mut obj) = rep else { return rep };
    let attributes = attributes.filter(|a| !a.trim().is_empty());
    let excluded = excluded.filter(|a| !a.trim().is_empty());
    if let Some(list) = attributes {
        let mut out = Map::new();
        for always in ["schemas", "id"] {
            if let Some(v) = obj.remove(always) {
                out.insert(always.into(), v);
            }
        }
        for (key, subs) in selectors(list, &obj) {
            let Some(v) = obj.get(&key) else { continue };
            let picked = match subs {
                None => Some(v.clone()),
                Some(subs) => project(v, &subs),
            };
            if let Some(p) = picked {
                out.insert(key, p);
            }
        }
        obj = out;
    } else if let Some(list) = excluded {
        for (key, subs) in selectors(list, &obj) {
            if key == "id" || key == "schemas" {
                continue;
            }
            match subs {
                None => {
                    obj.remove(&key);
                }
                Some(subs) => {
                    let kept = obj.get(&key).and_then(|v| without(v, &subs));
                    match kept {
                        Some(v) => obj.insert(key, v),
                        None => obj.remove(&key),
                    };
                }
            }
        }
    }
    if !obj.contains_key(MAIL_SCHEMA) {
        if let Some(Value::Array(schemas)) = obj.get_mut("schemas") {
            schemas.retain(|s| s.as_str() != Some(MAIL_SCHEMA));
        }
    }
    Value::Object(obj)
}

/// The named attributes as (key in `obj`, None for the whole attribute or the sub-attributes named).
fn selectors(list: &str, obj: &Map<String, Value>) -> Vec<(String, Option<Vec<String>>)> {
    let mut out: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()).take(MAX_SELECTED) {
        let (container, rest) = split_urn(item);
        let (name, sub) = match (container, rest) {
            (Container::Other, _) | (Container::Core, "") => continue,
            (Container::Mail, "") => (MAIL_SCHEMA, None),
            (Container::Mail, attr) => (MAIL_SCHEMA, Some(attr.split('.').next().unwrap_or(attr))),
            (Container::Core, path) => match path.split_once('.') {
                Some((n, s)) => (n, Some(s)),
                None => (path, None),
            },
        };
        let Some(key) = obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned() else { continue };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, None)) => {}
            Some((_, subs @ Some(_))) => match (sub, subs.as_mut()) {
                (None, _) => *subs = None,
                (Some(s), Some(list)) => list.push(s.to_string()),
                (Some(_), None) => {}
            },
            None => out.push((key, sub.map(|s| vec![s.to_string()]))),
        }
    }
    out
}

/// `v` (an object, or an array of objects) with only the members named; `None` when nothing is left.
fn project(v: &Value, subs: &[String]) -> Option<Value> {
    retain(v, &|k: &str| subs.iter().any(|s| s.eq_ignore_ascii_case(k)))
}

/// `v` without the members named; `None` when nothing is left.
fn without(v: &Value, subs: &[String]) -> Option<Value> {
    retain(v, &|k: &str| !subs.iter().any(|s| s.eq_ignore_ascii_case(k)))
}

fn retain(v: &Value, keep: &dyn Fn(&str) -> bool) -> Option<Value> {
    match v {
        Value::Object(m) => {
            let kept: Map<String, Value> =
                m.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items.iter().filter_map(|i| retain(i, keep)).collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(doc: Value) -> User {
        User {
            id: "0123456789abcdef0123456789abcdef".into(),
            doc: doc.as_object().unwrap().clone(),
            created: 1_700_000_000,
            modified: 1_700_000_060,
            version: 3,
        }
    }

    /// What scim2-tester generates from our /Schemas: every attribute with a random value.
    fn tester_body() -> Value {
        json!({
            "schemas": [USER_SCHEMA, MAIL_SCHEMA],
            "externalId": "5b0e6f0c-AB",
            "userName": "6f1c2d3e-4b5a",
            "name": {"formatted": "f", "familyName": "fa", "givenName": "gi", "middleName": "mi",
                     "honorificPrefix": "hp", "honorificSuffix": "hs"},
            "displayName": "d", "nickName": "n", "title": "t", "userType": "u", "preferredLanguage": "p",
            "locale": "l", "timezone": "z", "active": false,
            "emails": [{"value": "a@b.com", "display": "x", "type": "work", "primary": true},
                       {"value": "c@d.com", "display": "y", "type": "home", "primary": false}],
            MAIL_SCHEMA: {"mailQuota": "1G"}
        })
    }

    #[test]
    fn a_tester_generated_user_round_trips_unchanged_through_checked_and_to_json() {
        let body = tester_body();
        let rep = user(Value::Object(checked(&body).unwrap())).to_json("https://mx/scim/v2");
        let mut back = rep.as_object().unwrap().clone();
        assert!(back.remove("id").is_some() && back.remove("meta").is_some());
        assert_eq!(Value::Object(back), body);
    }

    #[test]
    fn schemas_without_the_core_user_schema_are_refused() {
        let e = checked(&json!({"schemas": [MAIL_SCHEMA], "userName": "a@x"})).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidSyntax"));
        assert!(checked(&json!({"userName": "a@x"})).is_err());
    }

    #[test]
    fn user_name_is_required_and_a_string() {
        assert!(checked(&json!({"schemas": [USER_SCHEMA]})).is_err());
        let e = checked(&json!({"schemas": [USER_SCHEMA], "userName": 5})).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidValue"));
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": ""})).is_err());
    }

    #[test]
    fn attribute_names_are_case_insensitive_and_come_out_in_their_published_spelling() {
        let doc = checked(&json!({"schemas": [USER_SCHEMA], "USERNAME": "a@x", "Name": {"GIVENNAME": "A"}})).unwrap();
        assert_eq!(doc["userName"], "a@x");
        assert_eq!(doc["name"], json!({"givenName": "A"}));
    }

    #[test]
    fn the_same_attribute_twice_in_different_case_is_refused() {
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "username": "b@x"})).is_err());
    }

    #[test]
    fn read_only_and_unknown_attributes_are_dropped() {
        let doc = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "id": "1", "meta": {},
            "groups": [{"value": "g"}], "password": "secret", "phoneNumbers": [{"value": "1"}]}))
        .unwrap();
        assert_eq!(Value::Object(doc), json!({"userName": "a@x"}));
    }

    #[test]
    fn entra_true_and_false_strings_are_booleans() {
        let doc = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "active": "False"})).unwrap();
        assert_eq!(doc["active"], false);
        let doc = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "active": "True"})).unwrap();
        assert_eq!(doc["active"], true);
    }

    #[test]
    fn a_boolean_that_is_not_one_is_refused() {
        let e = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "active": "maybe"})).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidValue"));
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "active": 1})).is_err());
    }

    #[test]
    fn a_string_attribute_must_be_a_string() {
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "displayName": ["x"]})).is_err());
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "name": "x"})).is_err());
    }

    #[test]
    fn emails_must_be_an_array_of_at_most_32() {
        let one = json!({"value": "a@x"});
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "emails": one})).is_err());
        let many: Vec<Value> = (0..33).map(|i| json!({"value": format!("a{i}@x")})).collect();
        let e = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "emails": many})).unwrap_err();
        assert!(e.detail.contains("32"));
    }

    #[test]
    fn at_most_one_email_is_primary() {
        let emails = json!([{"value": "a@x", "primary": true}, {"value": "b@x", "primary": "True"}]);
        let e = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "emails": emails})).unwrap_err();
        assert!(e.detail.contains("primary"));
    }

    #[test]
    fn an_email_without_a_value_is_refused() {
        let emails = json!([{"type": "work", "primary": true}]);
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "emails": emails})).is_err());
    }

    #[test]
    fn null_and_empty_values_are_unassigned() {
        let doc = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "displayName": null, "title": "",
            "name": {"givenName": null}, "emails": [], MAIL_SCHEMA: {}}))
        .unwrap();
        assert_eq!(Value::Object(doc), json!({"userName": "a@x"}));
    }

    #[test]
    fn strings_longer_than_1024_characters_are_refused() {
        let long = "é".repeat(1025);
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "title": long})).is_err());
        let ok = "é".repeat(1024);
        assert!(checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "title": ok})).is_ok());
    }

    #[test]
    fn a_document_over_64_kib_is_refused() {
        let emails: Vec<Value> = (0..32)
            .map(|i| json!({"value": format!("{i}{}", "a".repeat(1000)), "display": "d".repeat(1024)}))
            .collect();
        let e = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "emails": emails})).unwrap_err();
        assert!(e.detail.contains("bytes"));
    }

    #[test]
    fn the_extension_is_kept_under_its_urn_and_its_unknown_members_dropped() {
        let doc = checked(&json!({"schemas": [USER_SCHEMA, MAIL_SCHEMA], "userName": "a@x",
            MAIL_SCHEMA.to_uppercase(): {"MAILQUOTA": "2G", "other": 1}}))
        .unwrap();
        assert_eq!(doc[MAIL_SCHEMA], json!({"mailQuota": "2G"}));
    }

    #[test]
    fn refusals_quote_client_values_escaped() {
        let e = checked(&json!({"schemas": [USER_SCHEMA], "userName": "a@x", "active": "x\ny"})).unwrap_err();
        assert!(!e.detail.contains('\n'));
    }

    #[test]
    fn active_is_true_when_absent() {
        assert!(user(json!({"userName": "a@x"})).active());
        assert!(!user(json!({"userName": "a@x", "active": false})).active());
    }

    #[test]
    fn emails_come_with_their_primary_flag_in_order() {
        let u = user(json!({"userName": "a@x", "emails": [{"value": "b@x"}, {"value": "c@x", "primary": true}]}));
        assert_eq!(u.emails(), vec![("b@x".to_string(), false), ("c@x".to_string(), true)]);
        assert_eq!(u.user_name(), "a@x");
    }

    #[test]
    fn attribute_reads_core_and_extension_attributes_by_plain_or_urn_name() {
        let u = user(json!({"userName": "a@x", "name": {"givenName": "A"}, MAIL_SCHEMA: {"mailQuota": "1G"}}));
        assert_eq!(u.attribute(&format!("{MAIL_SCHEMA}:mailQuota")), Some(&json!("1G")));
        assert_eq!(u.attribute(&format!("{USER_SCHEMA}:userName")), Some(&json!("a@x")));
        assert_eq!(u.attribute("name.givenname"), Some(&json!("A")));
        assert_eq!(u.attribute("mailQuota"), None);
        assert_eq!(u.attribute("urn:other:User:userName"), None);
    }

    #[test]
    fn to_json_carries_schemas_id_and_meta() {
        let rep = user(json!({"userName": "a@x"})).to_json("https://mx/scim/v2/");
        assert_eq!(rep["schemas"], json!([USER_SCHEMA]));
        assert_eq!(rep["id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(rep["meta"]["resourceType"], "User");
        assert_eq!(rep["meta"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(rep["meta"]["lastModified"], "2023-11-14T22:14:20Z");
        assert_eq!(rep["meta"]["location"], "https://mx/scim/v2/Users/0123456789abcdef0123456789abcdef");
        assert_eq!(rep["meta"]["version"], "W/\"3\"");
    }

    #[test]
    fn to_json_lists_the_extension_schema_only_when_the_extension_is_present() {
        let rep = user(json!({"userName": "a@x", MAIL_SCHEMA: {"mailQuota": "1G"}})).to_json("b");
        assert_eq!(rep["schemas"], json!([USER_SCHEMA, MAIL_SCHEMA]));
    }

    fn full() -> Value {
        user(Value::Object(checked(&tester_body()).unwrap())).to_json("b")
    }

    #[test]
    fn select_attributes_keeps_id_schemas_and_what_is_named() {
        let v = select(full(), Some("userName,NAME.givenName,emails.value"), None);
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["emails", "id", "name", "schemas", "userName"]);
        assert_eq!(v["name"], json!({"givenName": "gi"}));
        assert_eq!(v["emails"], json!([{"value": "a@b.com"}, {"value": "c@d.com"}]));
        assert_eq!(v["schemas"], json!([USER_SCHEMA]));
    }

    #[test]
    fn select_attributes_reads_urn_prefixed_names() {
        let v = select(full(), Some(&format!("{USER_SCHEMA}:displayName,{MAIL_SCHEMA}:mailQuota")), None);
        assert_eq!(v["displayName"], "d");
        assert_eq!(v[MAIL_SCHEMA], json!({"mailQuota": "1G"}));
        assert_eq!(v["schemas"], json!([USER_SCHEMA, MAIL_SCHEMA]));
        assert!(v.get("userName").is_none());
    }

    #[test]
    fn select_excluded_attributes_drops_what_is_named_but_never_id_or_schemas() {
        let v = select(full(), None, Some("name,emails.display,id,schemas,meta"));
        assert!(v.get("name").is_none() && v.get("meta").is_none());
        assert!(v.get("id").is_some() && v.get("schemas").is_some());
        assert_eq!(v["emails"][0], json!({"value": "a@b.com", "type": "work", "primary": true}));
        assert_eq!(v["userName"], "6f1c2d3e-4b5a");
    }

    #[test]
    fn excluding_the_extension_drops_its_schema_from_schemas() {
        let v = select(full(), None, Some(MAIL_SCHEMA));
        assert!(v.get(MAIL_SCHEMA).is_none());
        assert_eq!(v["schemas"], json!([USER_SCHEMA]));
    }

    #[test]
    fn select_without_parameters_returns_the_representation_unchanged() {
        assert_eq!(select(full(), None, None), full());
        assert_eq!(select(full(), Some(" "), Some("")), full());
    }

    #[test]
    fn attributes_wins_over_excluded_attributes() {
        let v = select(full(), Some("title"), Some("title"));
        assert_eq!(v["title"], "t");
    }
}
