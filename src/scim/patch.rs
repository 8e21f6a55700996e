//! PATCH (RFC 7644 3.5.2) as identity providers send it: Entra ID, Okta, Authentik and Keycloak's
//! SCIM plugins each use a different part of the RFC (no `path` with a value object, `"False"`
//! strings, `emails[type eq "work"].value`, URN-prefixed extension attributes), so each is accepted.
//! The result is a whole document again, which `resource::checked` then checks like a PUT body.

use super::error::ScimError;
use super::filter::{parse_path, Node, Op, PatchPath};
use super::resource::{
    find, get_ci, quoted, Attr, Container, Kind, CORE_ATTRS, EXTERNAL_ID, MAIL_ATTRS, MAIL_SCHEMA, MAX_DOC_BYTES,
    MAX_VALUES, USER_SCHEMA,
};
use serde_json::{Map, Value};

pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const MAX_OPERATIONS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Replace,
    Remove,
}

/// Applies a PatchOp message to a representation (`to_json` output) or a stored doc, returning the
/// new document (with `schemas`, without `id` and `meta`) for `checked`. All or nothing: the first
/// refused operation refuses the message.
pub fn apply(rep: &Value, body: &Value) -> Result<Value, ScimError> {
    let Some(rep) = rep.as_object() else { return Err(ScimError::internal("the stored user is not an object")) };
    let Some(body) = body.as_object() else { return Err(ScimError::invalid_syntax("the body is not a JSON object")) };
    let is_patch = matches!(get_ci(body, "schemas"), Some(Value::Array(s))
        if s.iter().any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(PATCH_SCHEMA))));
    if !is_patch {
        return Err(ScimError::invalid_syntax(format!("schemas must contain {PATCH_SCHEMA}")));
    }
    let Some(Value::Array(ops)) = get_ci(body, "Operations") else {
        return Err(ScimError::invalid_syntax("Operations must be an array"));
    };
    if ops.is_empty() {
        return Err(ScimError::invalid_syntax("Operations is empty"));
    }
    if ops.len() > MAX_OPERATIONS {
        return Err(ScimError::invalid_value(format!("more than {MAX_OPERATIONS} operations")));
    }
    let id = rep.get("id").and_then(Value::as_str);
    let mut doc = rep.clone();
    for key in ["id", "meta", "schemas"] {
        doc.remove(key);
    }
    for (i, op) in ops.iter().enumerate() {
        operation(&mut doc, op, id)
            .map_err(|e| ScimError { detail: format!("operation {}: {}", i + 1, e.detail), ..e })?;
        // Values are copied into each matching element: bound the document after every step.
        let size = serde_json::to_vec(&doc).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_DOC_BYTES {
            return Err(ScimError::invalid_value(format!("the user would be more than {MAX_DOC_BYTES} bytes")));
        }
    }
    let mut schemas = vec![Value::from(USER_SCHEMA)];
    if doc.contains_key(MAIL_SCHEMA) {
        schemas.push(Value::from(MAIL_SCHEMA));
    }
    doc.insert("schemas".into(), Value::Array(schemas));
    Ok(Value::Object(doc))
}

fn operation(doc: &mut Map<String, Value>, op: &Value, id: Option<&str>) -> Result<(), ScimError> {
    let Some(op) = op.as_object() else { return Err(ScimError::invalid_syntax("an operation is not an object")) };
    let verb = match get_ci(op, "op").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("add") => Verb::Add,
        Some("replace") => Verb::Replace,
        Some("remove") => Verb::Remove,
        _ => {
            let given = get_ci(op, "op").map(quoted).unwrap_or_else(|| "nothing".into());
            return Err(ScimError::invalid_syntax(format!("op must be add, replace or remove, not {given}")));
        }
    };
    let value = get_ci(op, "value");
    let path = match get_ci(op, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(parse_path(s.trim())?),
        Some(other) => return Err(ScimError::invalid_path(format!("path must be a string, not {}", quoted(other)))),
    };
    let Some(path) = path else {
        // Okta and Entra: no path, the value holds the attributes (RFC 7644 3.5.2.1, 3.5.2.3).
        if verb == Verb::Remove {
            return Err(ScimError::no_target("remove needs a path"));
        }
        let Some(Value::Object(members)) = value else {
            return Err(ScimError::invalid_value("an operation without a path needs an object value"));
        };
        for (key, v) in members {
            if key.eq_ignore_ascii_case("schemas") || key.eq_ignore_ascii_case("meta") {
                continue;
            }
            if key.eq_ignore_ascii_case("id") {
                if id.is_some_and(|id| v.as_str() != Some(id)) {
                    return Err(ScimError::mutability("id cannot be changed"));
                }
                continue;
            }
            let path = parse_path(key)?;
            if read_only(&path) {
                continue;
            }
            at_path(doc, verb, &path, Some(v))?;
        }
        return Ok(());
    };
    if read_only(&path) {
        return Err(ScimError::mutability(format!("{} is read-only", path.attr.attr)));
    }
    if verb != Verb::Remove && value.is_none() {
        return Err(ScimError::invalid_value("add and replace need a value"));
    }
    at_path(doc, verb, &path, value)
}

/// `id`, `meta`, `schemas` and `groups` are the server's (RFC 7643 3.1, 4.1.2).
fn read_only(path: &PatchPath) -> bool {
    path.attr.container == Container::Core
        && ["id", "meta", "schemas", "groups"].iter().any(|r| r.eq_ignore_ascii_case(&path.attr.attr))
}

fn at_path(doc: &mut Map<String, Value>, verb: Verb, path: &PatchPath, value: Option<&Value>) -> Result<(), ScimError> {
    let attrs: &'static [Attr] = match path.attr.container {
        Container::Core => CORE_ATTRS,
        Container::Mail => MAIL_ATTRS,
        // An extension we do not publish: ignored, as checked ignores its attributes.
        Container::Other => return Ok(()),
    };
    if path.attr.container == Container::Mail {
        let ext_key = key_in(doc, MAIL_SCHEMA, None);
        if path.attr.attr.is_empty() {
            // The whole extension: removed, or its members added or replaced.
            return match verb {
                Verb::Remove => {
                    doc.remove(&ext_key);
                    Ok(())
                }
                _ => match value {
                    Some(Value::Object(members)) => {
                        let ext = object_at(doc, &ext_key);
                        for (k, v) in members {
                            let key = key_in(ext, k, find(MAIL_ATTRS, k));
                            ext.insert(key, v.clone());
                        }
                        Ok(())
                    }
                    Some(Value::Null) => {
                        doc.remove(&ext_key);
                        Ok(())
                    }
                    _ => Err(ScimError::invalid_value(format!("{MAIL_SCHEMA} needs an object value"))),
                },
            };
        }
        if verb == Verb::Remove && !doc.contains_key(&ext_key) {
            return Ok(());
        }
        let ext = object_at(doc, &ext_key);
        let r = in_container(ext, attrs, verb, path, value);
        if ext.is_empty() {
            doc.remove(&ext_key);
        }
        return r;
    }
    in_container(doc, attrs, verb, path, value)
}

/// The object under `key`, made one if absent or not an object.
fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// The key an attribute has in `map`: the existing one in any case, else its published spelling,
/// else the name as given (an unknown attribute, which checked will drop).
fn key_in(map: &Map<String, Value>, name: &str, attr: Option<&Attr>) -> String {
    if let Some(k) = map.keys().find(|k| k.eq_ignore_ascii_case(name)) {
        return k.clone();
    }
    match attr {
        Some(a) => a.name.to_string(),
        None if name.eq_ignore_ascii_case(EXTERNAL_ID) => EXTERNAL_ID.to_string(),
        None => name.to_string(),
    }
}

fn in_container(
    map: &mut Map<String, Value>,
    attrs: &'static [Attr],
    verb: Verb,
    path: &PatchPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let attr = find(attrs, &path.attr.attr);
    let key = key_in(map, &path.attr.attr, attr);
    let subs: &'static [Attr] = match attr.map(|a| a.kind) {
        Some(Kind::Complex(subs)) => subs,
        _ => &[],
    };
    let multi = attr.map(|a| a.multi).unwrap_or_else(|| map.get(&key).is_some_and(Value::is_array));
    let sub = path.attr.sub.as_deref().or(path.sub.as_deref());
    let value = value.unwrap_or(&Value::Null);
    if let Some(filter) = &path.filter {
        return filtered(map, &key, subs, filter, sub, verb, value);
    }
    if let Some(sub) = sub {
        if multi {
            // `emails.display`: every value of the attribute.
            let items = array_at(map, &key);
            if items.is_empty() && verb != Verb::Remove {
                items.push(Value::Object(Map::new()));
            }
            for item in items.iter_mut() {
                set_sub(item, subs, sub, verb, value);
            }
            let all: Vec<usize> = (0..items.len()).collect();
            demote_primaries(items, &all, sub);
        } else if verb == Verb::Remove {
            if let Some(obj) = map.get_mut(&key) {
                set_sub(obj, subs, sub, verb, value);
            }
        } else {
            let slot = map.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
            set_sub(slot, subs, sub, verb, value);
        }
        drop_empty(map, &key);
        return Ok(());
    }
    match verb {
        Verb::Remove => match (map.get_mut(&key), value) {
            // Remove given values of a multi-valued attribute (Okta and Authentik remove members so).
            (Some(Value::Array(items)), Value::Array(gone)) => items.retain(|i| !gone.iter().any(|g| same_value(i, g))),
            (Some(Value::Array(items)), gone @ Value::Object(_)) => items.retain(|i| !same_value(i, gone)),
            _ => {
                map.remove(&key);
            }
        },
        _ if multi => {
            let new: Vec<Value> = match value {
                Value::Array(items) => items.clone(),
                Value::Null => Vec::new(),
                other => vec![other.clone()],
            };
            let items = array_at(map, &key);
            if verb == Verb::Replace {
                items.clear();
            }
            let first = items.len();
            // RFC 7644 3.5.2.1: a value already there is not added again.
            for v in new {
                if !items.contains(&v) {
                    items.push(v);
                }
            }
            if items.len() > MAX_VALUES {
                return Err(ScimError::invalid_value(format!("{key} would have more than {MAX_VALUES} values")));
            }
            let added: Vec<usize> = (first..items.len()).collect();
            demote_primaries(items, &added, "primary");
        }
        // A complex attribute: the sub-attributes given are set, the others kept (RFC 7644 3.5.2.3).
        _ if !subs.is_empty() && value.is_object() && map.get(&key).is_some_and(Value::is_object) => {
            if let Value::Object(members) = value {
                let target = object_at(map, &key);
                for (k, v) in members {
                    let sub_key = key_in(target, k, find(subs, k));
                    target.insert(sub_key, v.clone());
                }
            }
        }
        _ => {
            map.insert(key.clone(), value.clone());
        }
    }
    drop_empty(map, &key);
    Ok(())
}

/// `attr[filter]` and `attr[filter].sub`.
fn filtered(
    map: &mut Map<String, Value>,
    key: &str,
    subs: &'static [Attr],
    filter: &Node,
    sub: Option<&str>,
    verb: Verb,
    value: &Value,
) -> Result<(), ScimError> {
    let items = array_at(map, key);
    let mut matched: Vec<usize> = (0..items.len()).filter(|&i| filter.matches_element(&items[i])).collect();
    if matched.is_empty() {
        // Removing what is not there leaves it not there: a provider repeating a remove whose answer
        // it lost must not get an error. Entra sets `emails[type eq "work"].value` on users that have
        // no work address yet: a filter of equalities describes the value to add. Anything else has
        // nothing to act on.
        match (verb, equalities(filter)) {
            (Verb::Remove, _) => {
                drop_empty(map, key);
                return Ok(());
            }
            (_, None) => {
                drop_empty(map, key);
                return Err(ScimError::no_target(format!("no value of {key} matches the filter")));
            }
            (_, Some(fields)) => {
                let mut element = Map::new();
                for (k, v) in fields {
                    element.insert(key_in(&element, &k, find(subs, &k)), v);
                }
                items.push(Value::Object(element));
                if items.len() > MAX_VALUES {
                    return Err(ScimError::invalid_value(format!("{key} would have more than {MAX_VALUES} values")));
                }
                matched.push(items.len() - 1);
            }
        }
    }
    match (sub, verb) {
        (Some(sub), _) => {
            for &i in &matched {
                set_sub(&mut items[i], subs, sub, verb, value);
            }
            demote_primaries(items, &matched, sub);
        }
        (None, Verb::Remove) => {
            let mut i = 0;
            items.retain(|_| {
                i += 1;
                !matched.contains(&(i - 1))
            });
        }
        (None, _) => {
            let Value::Object(members) = value else {
                return Err(ScimError::invalid_value(format!("a value of {key} must be an object")));
            };
            for &i in &matched {
                if verb == Verb::Replace {
                    items[i] = Value::Object(Map::new());
                }
                for (k, v) in members {
                    set_sub(&mut items[i], subs, k, Verb::Add, v);
                }
            }
            demote_primaries(items, &matched, "primary");
        }
    }
    drop_empty(map, key);
    Ok(())
}

/// The (sub-attribute, value) pairs of a filter made only of `eq` joined by `and`.
fn equalities(filter: &Node) -> Option<Vec<(String, Value)>> {
    match filter {
        Node::Compare(p, Op::Eq, v)
            if p.container == Container::Core && p.sub.is_none() && (v.is_string() || v.is_boolean()) =>
        {
            Some(vec![(p.attr.clone(), v.clone())])
        }
        Node::And(nodes) => {
            let mut out = Vec::new();
            for n in nodes {
                out.extend(equalities(n)?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Sets or removes one sub-attribute of a complex value (made an object if it is not one).
fn set_sub(target: &mut Value, subs: &'static [Attr], sub: &str, verb: Verb, value: &Value) {
    if !target.is_object() {
        if verb == Verb::Remove {
            return;
        }
        *target = Value::Object(Map::new());
    }
    if let Value::Object(obj) = target {
        let key = key_in(obj, sub, find(subs, sub));
        if verb == Verb::Remove {
            obj.remove(&key);
        } else {
            obj.insert(key, value.clone());
        }
    }
}

/// The array under `key`, made one if absent (a single value becomes a one-value array).
fn array_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = map.entry(key.to_string()).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        let old = std::mem::take(slot);
        *slot = Value::Array(if old.is_null() { Vec::new() } else { vec![old] });
    }
    match slot {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

/// Unassigned: an empty array or object under `key` goes (RFC 7643 2.5).
fn drop_empty(map: &mut Map<String, Value>, key: &str) {
    let empty = match map.get_mut(key) {
        Some(Value::Array(items)) => {
            items.retain(|i| !matches!(i, Value::Object(o) if o.is_empty()));
            items.is_empty()
        }
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty {
        map.remove(key);
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// RFC 7644 3.5.2: a value made primary takes `primary` from the others, so that an identity
/// provider moving the primary address does not get "more than one primary" back.
fn demote_primaries(items: &mut [Value], touched: &[usize], changed: &str) {
    if !changed.eq_ignore_ascii_case("primary") {
        return;
    }
    if !touched.iter().any(|&i| items.get(i).is_some_and(|v| truthy(v.get("primary")))) {
        return;
    }
    for (i, item) in items.iter_mut().enumerate() {
        if !touched.contains(&i) && truthy(item.get("primary")) {
            item["primary"] = Value::Bool(false);
        }
    }
}

/// Whether an existing value is the one a remove names: equal, or the same `value` sub-attribute.
fn same_value(item: &Value, gone: &Value) -> bool {
    if item == gone {
        return true;
    }
    match (item.get("value").and_then(Value::as_str), gone.get("value").and_then(Value::as_str)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::resource::{checked, User};
    use serde_json::json;

    fn rep() -> Value {
        let doc = checked(&json!({
            "schemas": [USER_SCHEMA, MAIL_SCHEMA],
            "userName": "alice@example.org",
            "name": {"givenName": "Alice", "familyName": "Smith"},
            "emails": [{"value": "alice@example.org", "type": "work", "primary": true},
                       {"value": "a@home.example", "type": "home"}],
            MAIL_SCHEMA: {"mailQuota": "1G"}
        }))
        .unwrap();
        User { id: "0123456789abcdef0123456789abcdef".into(), doc, created: 1, modified: 2, version: 1 }
            .to_json("https://mx/scim/v2")
    }

    fn patch(ops: Value) -> Result<Map<String, Value>, ScimError> {
        let body = json!({"schemas": [PATCH_SCHEMA], "Operations": ops});
        checked(&apply(&rep(), &body)?)
    }

    fn ok(ops: Value) -> Map<String, Value> {
        patch(ops).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn okta_replace_without_a_path_sets_the_attributes_of_the_value() {
        let doc = ok(json!([{"op": "replace", "value": {"id": "0123456789abcdef0123456789abcdef", "active": false}}]));
        assert_eq!(doc["active"], false);
        assert_eq!(doc["userName"], "alice@example.org");
    }

    #[test]
    fn entra_replace_of_active_with_a_false_string_deactivates() {
        let doc = ok(json!([{"op": "Replace", "path": "active", "value": "False"}]));
        assert_eq!(doc["active"], false);
    }

    #[test]
    fn op_names_are_case_insensitive_and_unknown_ones_refused() {
        assert_eq!(ok(json!([{"op": "ADD", "path": "title", "value": "Boss"}]))["title"], "Boss");
        let e = patch(json!([{"op": "move", "path": "title", "value": "x"}])).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidSyntax"));
    }

    #[test]
    fn entra_no_path_values_may_use_dotted_and_urn_prefixed_names() {
        let doc = ok(json!([{"op": "Add", "value": {
            "name.givenName": "Alicia",
            "urn:ietf:params:scim:schemas:extension:dovecot-oauth2:2.0:User:mailQuota": "5G",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "Sales"}}]));
        assert_eq!(doc["name"], json!({"givenName": "Alicia", "familyName": "Smith"}));
        assert_eq!(doc[MAIL_SCHEMA], json!({"mailQuota": "5G"}));
    }

    #[test]
    fn a_filtered_path_with_a_sub_attribute_replaces_that_sub_attribute() {
        let doc =
            ok(json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "alice.s@example.org"}]));
        assert_eq!(doc["emails"][0]["value"], "alice.s@example.org");
        assert_eq!(doc["emails"][1]["value"], "a@home.example");
    }

    #[test]
    fn a_filtered_path_of_equalities_that_matches_nothing_adds_the_value() {
        let body = json!({"schemas": [PATCH_SCHEMA], "Operations": [
            {"op": "add", "path": "emails[type eq \"other\"].value", "value": "x@example.org"}]});
        let doc = checked(&apply(&rep(), &body).unwrap()).unwrap();
        assert_eq!(doc["emails"][2], json!({"type": "other", "value": "x@example.org"}));
    }

    #[test]
    fn a_filter_that_matches_nothing_and_describes_no_value_is_no_target() {
        let e = patch(json!([{"op": "replace", "path": "emails[value co \"nowhere\"].type", "value": "work"}]))
            .unwrap_err();
        assert_eq!(e.scim_type, Some("noTarget"));
    }

    #[test]
    fn a_remove_whose_filter_matches_nothing_changes_nothing() {
        let doc = ok(json!([{"op": "remove", "path": "emails[type eq \"other\"]"}]));
        assert_eq!(doc["emails"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn remove_with_a_filter_removes_the_matching_values() {
        let doc = ok(json!([{"op": "remove", "path": "emails[value eq \"A@HOME.EXAMPLE\"]"}]));
        assert_eq!(doc["emails"].as_array().unwrap().len(), 1);
        assert_eq!(doc["emails"][0]["value"], "alice@example.org");
    }

    #[test]
    fn remove_with_a_value_removes_those_values() {
        let doc = ok(json!([{"op": "remove", "path": "emails", "value": [{"value": "a@home.example"}]}]));
        assert_eq!(doc["emails"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_sub_attribute_path_sets_one_member_of_a_complex_attribute() {
        let doc = ok(json!([{"op": "replace", "path": "name.givenName", "value": "Al"}]));
        assert_eq!(doc["name"], json!({"givenName": "Al", "familyName": "Smith"}));
        let doc = ok(json!([{"op": "remove", "path": "NAME.FAMILYNAME"}]));
        assert_eq!(doc["name"], json!({"givenName": "Alice"}));
    }

    #[test]
    fn replace_of_a_complex_attribute_keeps_the_sub_attributes_not_given() {
        let doc = ok(json!([{"op": "replace", "path": "name", "value": {"familyName": "Jones"}}]));
        assert_eq!(doc["name"], json!({"givenName": "Alice", "familyName": "Jones"}));
    }

    #[test]
    fn add_to_a_multi_valued_attribute_appends_and_skips_values_already_there() {
        let doc = ok(json!([{"op": "add", "path": "emails", "value": [{"value": "b@example.org", "type": "other"},
            {"value": "a@home.example", "type": "home"}]}]));
        let emails = doc["emails"].as_array().unwrap();
        assert_eq!(emails.len(), 3);
        assert_eq!(emails[2]["value"], "b@example.org");
    }

    #[test]
    fn replace_of_a_multi_valued_attribute_replaces_all_values() {
        let doc = ok(json!([{"op": "replace", "path": "emails", "value": [{"value": "c@example.org"}]}]));
        assert_eq!(doc["emails"], json!([{"value": "c@example.org"}]));
    }

    #[test]
    fn a_value_made_primary_takes_primary_from_the_others() {
        let doc = ok(json!([{"op": "replace", "path": "emails[type eq \"home\"].primary", "value": true}]));
        assert_eq!(doc["emails"][0]["primary"], false);
        assert_eq!(doc["emails"][1]["primary"], true);
        let doc = ok(json!([{"op": "add", "path": "emails", "value": [{"value": "n@example.org", "primary": true}]}]));
        assert_eq!(doc["emails"][0]["primary"], false);
        assert_eq!(doc["emails"][2]["primary"], true);
    }

    #[test]
    fn urn_prefixed_paths_reach_the_extension_and_the_bare_urn_the_whole_extension() {
        let doc = ok(json!([{"op": "replace", "path": format!("{MAIL_SCHEMA}:mailQuota"), "value": "2G"}]));
        assert_eq!(doc[MAIL_SCHEMA], json!({"mailQuota": "2G"}));
        let doc = ok(json!([{"op": "remove", "path": MAIL_SCHEMA}]));
        assert!(!doc.contains_key(MAIL_SCHEMA));
        let doc = ok(
            json!([{"op": "remove", "path": MAIL_SCHEMA}, {"op": "add", "path": MAIL_SCHEMA, "value": {"mailquota": "3G"}}]),
        );
        assert_eq!(doc[MAIL_SCHEMA], json!({"mailQuota": "3G"}));
    }

    #[test]
    fn the_result_lists_the_extension_schema_only_when_the_extension_is_left() {
        let body = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": MAIL_SCHEMA}]});
        assert_eq!(apply(&rep(), &body).unwrap()["schemas"], json!([USER_SCHEMA]));
    }

    #[test]
    fn core_urn_prefixed_paths_are_core_attributes() {
        let doc = ok(json!([{"op": "replace", "path": format!("{USER_SCHEMA}:displayName"), "value": "A"}]));
        assert_eq!(doc["displayName"], "A");
    }

    #[test]
    fn remove_of_a_plain_attribute_unassigns_it() {
        let doc = ok(json!([{"op": "remove", "path": "name"}, {"op": "remove", "path": "title"}]));
        assert!(!doc.contains_key("name"));
    }

    #[test]
    fn changing_id_or_meta_is_a_mutability_error() {
        for path in ["id", "meta.created", "META", "schemas"] {
            let e = patch(json!([{"op": "replace", "path": path, "value": "x"}])).unwrap_err();
            assert_eq!(e.scim_type, Some("mutability"), "{path}");
        }
        let e = patch(json!([{"op": "replace", "value": {"id": "other"}}])).unwrap_err();
        assert_eq!(e.scim_type, Some("mutability"));
    }

    #[test]
    fn a_malformed_path_is_an_invalid_path() {
        let e = patch(json!([{"op": "replace", "path": "emails[type eq", "value": "x"}])).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidPath"));
        let e = patch(json!([{"op": "replace", "path": 3, "value": "x"}])).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidPath"));
    }

    #[test]
    fn remove_without_a_path_is_no_target() {
        assert_eq!(patch(json!([{"op": "remove"}])).unwrap_err().scim_type, Some("noTarget"));
    }

    #[test]
    fn add_or_replace_without_a_value_is_refused() {
        assert_eq!(patch(json!([{"op": "add", "path": "title"}])).unwrap_err().scim_type, Some("invalidValue"));
        assert!(patch(json!([{"op": "replace", "value": "x"}])).is_err());
    }

    #[test]
    fn the_message_must_be_a_patch_op_with_1_to_64_operations() {
        let e = apply(&rep(), &json!({"schemas": [USER_SCHEMA], "Operations": []})).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidSyntax"));
        assert!(patch(json!([])).is_err());
        assert!(patch(json!({"op": "add"})).is_err());
        let many: Vec<Value> = (0..65).map(|_| json!({"op": "add", "path": "title", "value": "x"})).collect();
        assert!(patch(Value::Array(many)).unwrap_err().detail.contains("64"));
        let max: Vec<Value> = (0..64).map(|_| json!({"op": "add", "path": "title", "value": "x"})).collect();
        assert!(patch(Value::Array(max)).is_ok());
    }

    #[test]
    fn a_value_copied_into_many_elements_cannot_grow_the_document_past_its_bound() {
        let emails: Vec<Value> = (0..30).map(|i| json!({"value": format!("u{i}@example.org")})).collect();
        let big = "x".repeat(4000);
        let e = patch(json!([{"op": "add", "path": "emails", "value": emails},
            {"op": "replace", "path": "emails.display", "value": big}]))
        .unwrap_err();
        assert!(e.detail.contains("bytes"));
    }

    #[test]
    fn a_patch_result_that_breaks_the_schema_is_refused_by_checked() {
        let e = patch(json!([{"op": "replace", "path": "active", "value": "perhaps"}])).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidValue"));
        assert!(patch(json!([{"op": "remove", "path": "userName"}])).is_err());
    }

    #[test]
    fn unknown_attributes_and_extensions_are_ignored() {
        let doc = ok(json!([{"op": "add", "path": "nonsense", "value": "x"},
            {"op": "replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": "m"},
            {"op": "remove", "path": "phoneNumbers[type eq \"work\"].value"}]))
        .into_iter()
        .map(|(k, _)| k)
        .collect::<Vec<_>>();
        assert!(!doc.iter().any(|k| k == "nonsense"));
    }

    #[test]
    fn the_stored_doc_without_schemas_is_patched_too() {
        let doc = rep()
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "schemas" && *k != "id" && *k != "meta")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Map<_, _>>();
        let body = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "title", "value": "T"}]});
        let out = checked(&apply(&Value::Object(doc), &body).unwrap()).unwrap();
        assert_eq!(out["title"], "T");
    }
}
