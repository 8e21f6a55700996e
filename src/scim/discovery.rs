//! The discovery endpoints (RFC 7644 4): what the service supports, its one resource type, and the
//! schemas of its attributes. Clients such as scim2-tester generate values for every attribute
//! published here, so the schemas are rendered from the same table `resource::checked` enforces.

use super::resource::{Attr, Kind, CORE_ATTRS, MAIL_ATTRS, MAIL_SCHEMA, USER_SCHEMA};
use serde_json::{json, Value};

pub const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
pub const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
/// The most resources one list answer holds.
pub const MAX_RESULTS: u64 = 200;

/// RFC 7643 5: PATCH, filters and ETags supported; bulk, sort and password changes not; bearer tokens.
pub fn service_provider_config(base: &str) -> Value {
    let base = base.trim_end_matches('/');
    json!({
        "schemas": [SPC_SCHEMA],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "The token configured as scim_token, sent as Authorization: Bearer <token>",
            "specUri": "https://www.rfc-editor.org/rfc/rfc6750",
            "primary": true
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")}
    })
}

/// RFC 7643 6: the User type only, with our mail extension (optional).
pub fn resource_types(base: &str) -> Vec<Value> {
    let base = base.trim_end_matches('/');
    vec![json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A mail account",
        "schema": USER_SCHEMA,
        "schemaExtensions": [{"schema": MAIL_SCHEMA, "required": false}],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")}
    })]
}

/// RFC 7643 7: the core User schema (the attributes we keep) and our extension's.
pub fn schemas(base: &str) -> Vec<Value> {
    let base = base.trim_end_matches('/');
    vec![
        schema(base, USER_SCHEMA, "User", "A mail account", CORE_ATTRS),
        schema(base, MAIL_SCHEMA, "MailUser", "Mail settings of an account", MAIL_ATTRS),
    ]
}

fn schema(base: &str, id: &str, name: &str, description: &str, attrs: &[Attr]) -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": id,
        "name": name,
        "description": description,
        "attributes": attrs.iter().map(attribute).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")}
    })
}

fn attribute(a: &Attr) -> Value {
    let kind = match a.kind {
        Kind::String => "string",
        Kind::Boolean => "boolean",
        Kind::Complex(_) => "complex",
    };
    let mut v = json!({
        "name": a.name,
        "type": kind,
        "multiValued": a.multi,
        "description": a.description,
        "required": a.required,
        "caseExact": a.case_exact,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": a.uniqueness,
    });
    if !a.canonical.is_empty() {
        v["canonicalValues"] = json!(a.canonical);
    }
    if let Kind::Complex(subs) = a.kind {
        v["subAttributes"] = Value::Array(subs.iter().map(attribute).collect());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(schema: &'a Value, name: &str) -> &'a Value {
        schema["attributes"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap()
    }

    #[test]
    fn the_config_announces_patch_filter_and_etag_but_not_bulk_sort_or_password_changes() {
        let c = service_provider_config("https://mx/scim/v2/");
        assert_eq!(c["patch"]["supported"], true);
        assert_eq!(c["filter"], json!({"supported": true, "maxResults": 200}));
        assert_eq!(c["etag"]["supported"], true);
        assert_eq!(c["bulk"]["supported"], false);
        assert_eq!(c["sort"]["supported"], false);
        assert_eq!(c["changePassword"]["supported"], false);
        assert_eq!(c["authenticationSchemes"][0]["type"], "oauthbearertoken");
        assert_eq!(c["meta"]["location"], "https://mx/scim/v2/ServiceProviderConfig");
    }

    #[test]
    fn the_only_resource_type_is_user_with_the_optional_mail_extension() {
        let t = resource_types("https://mx/scim/v2");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0]["endpoint"], "/Users");
        assert_eq!(t[0]["schema"], USER_SCHEMA);
        assert_eq!(t[0]["schemaExtensions"], json!([{"schema": MAIL_SCHEMA, "required": false}]));
        assert_eq!(t[0]["meta"]["location"], "https://mx/scim/v2/ResourceTypes/User");
    }

    #[test]
    fn the_schemas_are_core_user_and_the_mail_extension_with_their_locations() {
        let s = schemas("https://mx/scim/v2");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["id"], USER_SCHEMA);
        assert_eq!(s[1]["id"], MAIL_SCHEMA);
        assert_eq!(s[1]["meta"]["location"], format!("https://mx/scim/v2/Schemas/{MAIL_SCHEMA}"));
        assert_eq!(attr(&s[1], "mailQuota")["type"], "string");
    }

    #[test]
    fn user_name_is_required_server_unique_and_case_insensitive() {
        let u = attr(&schemas("b")[0], "userName").clone();
        assert_eq!(u["required"], true);
        assert_eq!(u["uniqueness"], "server");
        assert_eq!(u["caseExact"], false);
        assert_eq!(u["mutability"], "readWrite");
    }

    #[test]
    fn emails_are_multi_valued_with_canonical_types_and_a_boolean_primary() {
        let s = schemas("b");
        let e = attr(&s[0], "emails");
        assert_eq!(e["multiValued"], true);
        assert_eq!(e["type"], "complex");
        let subs = e["subAttributes"].as_array().unwrap();
        let t = subs.iter().find(|a| a["name"] == "type").unwrap();
        assert_eq!(t["canonicalValues"], json!(["work", "home", "other"]));
        let p = subs.iter().find(|a| a["name"] == "primary").unwrap();
        assert_eq!(p["type"], "boolean");
    }

    #[test]
    fn every_published_core_attribute_is_one_checked_accepts() {
        let names: Vec<String> = schemas("b")[0]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "userName",
                "name",
                "displayName",
                "nickName",
                "title",
                "userType",
                "preferredLanguage",
                "locale",
                "timezone",
                "active",
                "emails"
            ]
        );
        for name in names.iter().filter(|n| !["userName", "name", "active", "emails"].contains(&n.as_str())) {
            let body = json!({"schemas": [USER_SCHEMA], "userName": "a@x", name.as_str(): "v"});
            assert_eq!(super::super::resource::checked(&body).unwrap()[name.as_str()], "v", "{name}");
        }
    }
}
