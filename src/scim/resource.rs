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
