//! SCIM 2.0 provisioning (RFC 7643, RFC 7644) in `dovecot-oauth2d`: the identity provider creates,
//! renames, deactivates and deletes mail accounts itself, instead of an admin copying them by hand.
//!
//! - Protocol, pure: [`error`] (SCIM error replies), [`address`] (which user names are mail addresses
//!   this server serves), [`resource`] (the User resource), [`filter`], [`patch`], [`discovery`]
//!   (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`).
//! - Persistence: [`store`] (the SCIM id to account mapping, across restarts), [`files`] (atomic
//!   edits of line files under a lock), [`backend`] (what an account is in DMS's files, or in a plain
//!   Dovecot passwd-file and Postfix maps).
//! - [`settings`]: the `scim_*` keys; [`service`]: one request in, one reply out (no sockets).

pub mod address;
pub mod backend;
pub mod discovery;
pub mod error;
pub mod files;
pub mod filter;
pub mod patch;
pub mod resource;
pub mod service;
pub mod settings;
pub mod store;
