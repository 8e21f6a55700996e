//! The error types of each boundary, and the one place where they become a Dovecot verdict.
//!
//! Three kinds of trouble reach a login, and users depend on telling them apart:
//! a bad token ([`Rejection`], "authentication failed", counted by Fail2Ban), a provider or network
//! problem ([`Unavailable`], "temporary failure", the client retries), and a broken settings file
//! ([`ConfigError`], also a temporary failure: an admin mistake must not look like a wrong password).

use crate::escape::{shown, shown_reason};
use crate::http::redact_url;
use std::path::PathBuf;
use thiserror::Error;

/// A settings file that cannot be used. Every variant names the file, and the line and key when known.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("settings file {path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("settings file {path} line {line}: {reason}")]
    Syntax { path: PathBuf, line: usize, reason: String },
    #[error("settings file {path} line {line}: unknown key '{key}'")]
    UnknownKey { path: PathBuf, line: usize, key: String },
    #[error("settings file {path} line {line}: {key}: {reason}")]
    Invalid { path: PathBuf, line: usize, key: String, reason: String },
    #[error("settings file {path}: {reason}")]
    Incomplete { path: PathBuf, reason: String },
}

/// A URL in an error, as every log line and the check command show it: redacted and escaped.
fn shown_url(u: &str) -> String {
    shown_reason(&redact_url(u))
}

/// How much of a provider's `error` text a [`Rejection::ProviderError`] keeps (one more than is shown,
/// so a cut one is marked as cut).
pub const PROVIDER_ERROR_CHARS: usize = crate::escape::MAX_SHOWN_CHARS + 1;

/// Why a token was refused. Shown in Dovecot's log (never with the token itself). Every text field may
/// come from outside (a provider, a token, a client, the settings file): the messages below show each
/// one through [`crate::escape`], so no constructor has to, and none should escape it again.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token is {0} bytes, over max_token_bytes ({1})")]
    TooLarge(usize, usize),
    #[error("provider refused the token (HTTP {0})")]
    ProviderRefused(u16),
    #[error("provider says the token is not active")]
    Inactive,
    #[error("token expired {0} s ago")]
    Expired(u64),
    #[error("token is not valid yet (nbf {0} s in the future)")]
    NotYetValid(u64),
    #[error("provider reply has no '{}' (username_attribute)", shown(.0))]
    NoUsername(String),
    #[error("provider reply's '{}' (username_attribute) is not one string", shown(.0))]
    UsernameNotString(String),
    #[error("introspection reply has no 'active' (RFC 7662 requires it; a userinfo endpoint needs introspection_mode = auth)")]
    NoActive,
    #[error("token belongs to '{}', not to login user '{}'", shown(.token_user), shown(.login_user))]
    WrongUser { token_user: String, login_user: String },
    #[error("account is not active ({} = '{}')", shown(.attribute), shown(.value))]
    AccountDisabled { attribute: String, value: String },
    #[error("token lacks required scope '{}'", shown(.0))]
    MissingScope(String),
    #[error("token audience does not include any of '{}'", shown_reason(.0))]
    WrongAudience(String),
    #[error("token issuer '{}' is not accepted", shown(.0))]
    WrongIssuer(String),
    #[error("{}", shown_reason(.0))]
    Invalid(String),
    /// The provider's `error` member in a 200 reply (kept at most [`PROVIDER_ERROR_CHARS`] long).
    #[error("provider said error '{}'", shown(.0))]
    ProviderError(String),
    // Local JWT validation (introspection_mode = local).
    #[error("token is unsigned (alg 'none')")]
    Unsigned,
    #[error("token alg '{}' is HMAC; only the provider's public-key signatures are accepted", shown(.0))]
    HmacAlgorithm(String),
    #[error("token alg '{}' is not supported", shown(.0))]
    UnsupportedAlgorithm(String),
    #[error("token type (typ) '{}' is not JWT or at+jwt", shown(.0))]
    WrongType(String),
    #[error("token header marks '{}' critical, which this module does not implement", shown(.0))]
    CriticalHeader(String),
    #[error("token header carries '{0}'; signing keys are only taken from the configured key sources")]
    KeyInHeader(&'static str),
    #[error("no signing key '{}' for this issuer, even after refetching the keys", shown(.0))]
    UnknownKey(String),
    #[error("signing key '{}' is {}, which cannot verify alg '{}'", shown(.kid), shown(.key_type), shown(.alg))]
    KeyAlgorithmMismatch { kid: String, key_type: String, alg: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has no '{0}' claim")]
    MissingClaim(&'static str),
    #[error("token claim '{0}' is not a time (a non-negative number of seconds since 1970, before year 10000)")]
    MalformedClaim(&'static str),
    #[error("token is issued {0} s in the future (iat)")]
    IssuedInFuture(u64),
    #[error("opaque token and no introspection_url for non-JWT tokens")]
    Opaque,
    // Passwords (PLAIN/LOGIN, issue 12).
    #[error("provider refused the password ({0})")]
    PasswordRefused(String),
}

impl Rejection {
    /// A short stable name for counters (`rejected_wrong_user=3`).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::TooLarge(..) => "too_large",
            Rejection::ProviderRefused(_) => "provider_refused",
            Rejection::Inactive => "inactive",
            Rejection::Expired(_) => "expired",
            Rejection::NotYetValid(_) => "not_yet_valid",
            Rejection::NoUsername(_) => "no_username",
            Rejection::UsernameNotString(_) => "username_not_string",
            Rejection::NoActive => "no_active",
            Rejection::WrongUser { .. } => "wrong_user",
            Rejection::AccountDisabled { .. } => "account_disabled",
            Rejection::MissingScope(_) => "missing_scope",
            Rejection::WrongAudience(_) => "wrong_audience",
            Rejection::WrongIssuer(_) => "wrong_issuer",
            Rejection::Invalid(_) => "invalid",
            Rejection::ProviderError(_) => "provider_error",
            Rejection::Unsigned => "unsigned",
            Rejection::HmacAlgorithm(_) => "hmac_algorithm",
            Rejection::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Rejection::WrongType(_) => "wrong_type",
            Rejection::CriticalHeader(_) => "critical_header",
            Rejection::KeyInHeader(_) => "key_in_header",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::KeyAlgorithmMismatch { .. } => "key_algorithm_mismatch",
            Rejection::BadSignature => "bad_signature",
            Rejection::MissingClaim(_) => "missing_claim",
            Rejection::MalformedClaim(_) => "malformed_claim",
            Rejection::IssuedInFuture(_) => "issued_in_future",
            Rejection::Opaque => "opaque",
            Rejection::PasswordRefused(_) => "password_refused",
        }
    }
}

/// Why no verdict could be reached now; the same login may succeed later. Text fields are shown
/// escaped and URLs redacted by the messages below, as for [`Rejection`].
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Unavailable {
    #[error("provider unreachable at {}: {}", shown_url(.url), shown_reason(.reason))]
    Unreachable { url: String, reason: String },
    #[error("provider timed out after {msecs} ms at {}", shown_url(.url))]
    Timeout { url: String, msecs: u64 },
    #[error("provider answered HTTP {status} at {}", shown_url(.url))]
    Status { url: String, status: u16 },
    #[error("provider reply from {} is unusable: {}", shown_url(.url), shown_reason(.reason))]
    BadReply { url: String, reason: String },
    #[error("no signing keys from {}: {}", shown_url(.url), shown_reason(.reason))]
    NoKeys { url: String, reason: String },
    #[error("provider at {} failed {failures} times in a row; not asked again for {retry_in_secs} s", shown(.host))]
    CircuitOpen { host: String, failures: u32, retry_in_secs: u64 },
    #[error("{}", shown_reason(&.0.to_string()))]
    Settings(#[from] ConfigError),
    #[error("internal error: {}", shown_reason(.0))]
    Internal(String),
    /// The token endpoint refused *our* request (client credentials, grant not enabled for the
    /// client, scope): an admin problem, never the user's.
    #[error("provider refused the password grant request at {url} ({error}): {hint}")]
    GrantRefused { url: String, error: String, hint: &'static str },
    #[error(
        "the provider was asked about {limit} passwords of this user in the last minute \
         (password_max_requests_per_minute = {limit}); not asked again yet"
    )]
    PasswordRateLimited { limit: u32 },
    #[error("{0}")]
    PasswordsOff(&'static str),
}

impl Unavailable {
    /// No answer came back for this request (no connection, reset, TLS or name failure, timeout): the
    /// only failures that say the provider cannot be reached, rather than something about a token.
    pub fn is_transport(&self) -> bool {
        matches!(self, Unavailable::Unreachable { .. } | Unavailable::Timeout { .. })
    }
}

/// What Dovecot is told. Mapped to `dovecot.auth.PASSDB_RESULT_*` by the Lua binding and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted; extra passdb fields from `pass_attrs`, in order.
    Accept(Vec<(String, String)>),
    /// PASSWORD_MISMATCH: the client sees "authentication failed".
    Reject(Rejection),
    /// INTERNAL_FAILURE: the client sees "temporary failure" and retries.
    TempFail(Unavailable),
}

impl From<Result<Vec<(String, String)>, AuthError>> for Verdict {
    fn from(r: Result<Vec<(String, String)>, AuthError>) -> Self {
        match r {
            Ok(fields) => Verdict::Accept(fields),
            Err(AuthError::Rejected(r)) => Verdict::Reject(r),
            Err(AuthError::Unavailable(u)) => Verdict::TempFail(u),
        }
    }
}

/// The engine's error for one login.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("{0}")]
    Rejected(#[from] Rejection),
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
}

impl From<ConfigError> for AuthError {
    fn from(e: ConfigError) -> Self {
        AuthError::Unavailable(Unavailable::Settings(e))
    }
}
