//! dovecot-oauth2: validate OAuth2 bearer tokens for Dovecot 2.3's Lua passdb.
//!
//! The engine (settings, token, provider modes, rules, cache, HTTP) is plain Rust and is tested without
//! Lua; the `lua` feature adds the small binding Dovecot loads with `require "dovecot_oauth2"`, and
//! [`daemon`] is `dovecot-oauth2d`, the same engine behind an RFC 7662 endpoint for Dovecot's own
//! oauth2 client.

pub mod breaker;
pub mod cache;
pub mod claims;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod errors;
pub mod escape;
pub mod grant;
pub mod http;
pub mod jwks;
pub mod jwt;
pub mod lookup;
pub mod password;
pub mod provider;
pub mod scim;
pub mod stats;
pub mod token;
pub mod trace;

#[cfg(feature = "lua")]
mod lua;

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod properties;

pub use config::Settings;
pub use engine::Engine;
pub use errors::{AuthError, ConfigError, Rejection, Unavailable, Verdict};
