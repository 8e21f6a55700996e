//! SCIM error replies (RFC 7644 3.12): one type for every refusal of the SCIM listener, with the HTTP
//! status and `scimType` an identity provider acts on (409 makes it look the user up and link it, 404
//! makes it create the user again).

use serde_json::json;

pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// `detail` is shown to the SCIM client and may be logged: it never holds a secret, and values that
/// came from the client are escaped and capped (crate::escape) before they are put in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {}: {detail}", scim_type.unwrap_or("error"))]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(status: u16, scim_type: Option<&'static str>, detail: impl Into<String>) -> ScimError {
        ScimError { status, scim_type, detail: detail.into() }
    }
    /// 400 invalidSyntax: the body is not JSON, or not a SCIM message of the expected schema.
    pub fn invalid_syntax(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("invalidSyntax"), detail)
    }
    /// 400 invalidValue: a required attribute is missing or a value is not acceptable.
    pub fn invalid_value(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("invalidValue"), detail)
    }
    /// 400 invalidFilter.
    pub fn invalid_filter(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("invalidFilter"), detail)
    }
    /// 400 invalidPath (a PATCH path that is not an attribute path).
    pub fn invalid_path(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("invalidPath"), detail)
    }
    /// 400 noTarget (a PATCH path filter that matched nothing, where something must match).
    pub fn no_target(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("noTarget"), detail)
    }
    /// 400 mutability: a change to a read-only attribute (`id`, `meta`).
    pub fn mutability(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("mutability"), detail)
    }
    /// 400 tooMany.
    pub fn too_many(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some("tooMany"), detail)
    }
    /// 409 uniqueness: the user name or an address is taken (by another SCIM user or by the admin).
    pub fn uniqueness(detail: impl Into<String>) -> ScimError {
        ScimError::new(409, Some("uniqueness"), detail)
    }
    pub fn not_found(detail: impl Into<String>) -> ScimError {
        ScimError::new(404, None, detail)
    }
    /// 412: `If-Match` names a version that is not the current one.
    pub fn precondition_failed(detail: impl Into<String>) -> ScimError {
        ScimError::new(412, None, detail)
    }
    /// 500: the service could not do what it should (a file it cannot write); the client may retry.
    pub fn internal(detail: impl Into<String>) -> ScimError {
        ScimError::new(500, None, detail)
    }
    /// 503: busy (a lock held too long, too many requests); the client retries later.
    pub fn unavailable(detail: impl Into<String>) -> ScimError {
        ScimError::new(503, None, detail)
    }

    /// The JSON body (`status` is a string, as RFC 7644 3.12 writes it).
    pub fn body(&self) -> String {
        let mut v = json!({"schemas": [ERROR_SCHEMA], "status": self.status.to_string(), "detail": self.detail});
        if let Some(t) = self.scim_type {
            v["scimType"] = json!(t);
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_carries_the_error_schema_the_status_as_a_string_and_the_scim_type() {
        let v: serde_json::Value = serde_json::from_str(&ScimError::uniqueness("taken").body()).unwrap();
        assert_eq!(v["schemas"][0], ERROR_SCHEMA);
        assert_eq!(v["status"], "409");
        assert_eq!(v["scimType"], "uniqueness");
        assert_eq!(v["detail"], "taken");
    }

    #[test]
    fn an_error_without_a_scim_type_has_no_scim_type_member() {
        let v: serde_json::Value = serde_json::from_str(&ScimError::not_found("no such user").body()).unwrap();
        assert!(v.get("scimType").is_none());
        assert_eq!(v["status"], "404");
    }
}
