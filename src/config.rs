//! The settings file: Dovecot 2.3's oauth2 passdb syntax and key names, plus this module's own keys.
//! Read once per auth-worker (on its first login), never per request.

use crate::errors::ConfigError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the token reaches `introspection_url` (Dovecot's `introspection_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionMode {
    /// GET with `Authorization: Bearer <token>`: the userinfo style (Dovecot's default, DMS's choice).
    Auth,
    /// GET with the token appended to the URL.
    Get,
    /// RFC 7662: POST `token=<token>` with client credentials.
    Post,
    /// Validate JWT access tokens in the module, with no provider round trip per login. Keys come from
    /// `openid_configuration_url` and/or `jwks_url`. Opaque (non-JWT) tokens go to `introspection_url`
    /// (or `tokeninfo_url`) when one is set, and are refused otherwise.
    Local,
}

/// What the password grant sends as `grant_type` (`grant_type`, default `password`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// RFC 6749 section 4.3, the resource-owner password grant (Keycloak's "direct access grants",
    /// Entra's ROPC; Authentik treats it as its app-password flow).
    Password,
    /// `client_credentials` with `username` and `password`: Authentik's documented app-password flow.
    ClientCredentials,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
        }
    }
}

/// How the password grant authenticates this client (`grant_client_auth`, default `post`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantClientAuth {
    /// `client_id` and `client_secret` in the form body (RFC 6749 client_secret_post), as Dovecot's
    /// own oauth2 passdb sends them.
    Post,
    /// HTTP Basic (client_secret_basic).
    Basic,
}

/// Dovecot's `username_format` (default `%Lu`), applied to the login user and to the token's
/// username before they are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernameFormat(Vec<FormatPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FormatPart {
    Literal(String),
    Var { var: UserVar, case: Case },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserVar {
    User,
    Name,
    Domain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

impl UsernameFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let mut case = Case::Keep;
            let mut next = chars.next().ok_or("ends with '%'")?;
            if next == '%' {
                lit.push('%');
                continue;
            }
            if next == 'L' || next == 'U' {
                case = if next == 'L' { Case::Lower } else { Case::Upper };
                next = chars.next().ok_or("ends after a modifier")?;
            }
            let var = match next {
                'u' => UserVar::User,
                'n' => UserVar::Name,
                'd' => UserVar::Domain,
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    match name.as_str() {
                        "user" => UserVar::User,
                        "username" => UserVar::Name,
                        "domain" => UserVar::Domain,
                        _ => return Err("has an unsupported %{...} variable (use %u, %n, %d)".into()),
                    }
                }
                _ => return Err("has an unsupported % variable (use %u, %n, %d)".into()),
            };
            if !lit.is_empty() {
                parts.push(FormatPart::Literal(std::mem::take(&mut lit)));
            }
            parts.push(FormatPart::Var { var, case });
        }
        if !lit.is_empty() {
            parts.push(FormatPart::Literal(lit));
        }
        Ok(UsernameFormat(parts))
    }

    pub fn apply(&self, user: &str) -> String {
        let (name, domain) = match user.split_once('@') {
            Some((n, d)) => (n, d),
            None => (user, ""),
        };
        let mut out = String::with_capacity(user.len());
        for part in &self.0 {
            match part {
                FormatPart::Literal(s) => out.push_str(s),
                FormatPart::Var { var, case } => {
                    let v = match var {
                        UserVar::User => user,
                        UserVar::Name => name,
                        UserVar::Domain => domain,
                    };
                    // ASCII only, as Dovecot's %L/%U: Unicode case folding would make distinct names
                    // equal (KELVIN SIGN lowercases to 'k'), letting one user's token open another's box.
                    match case {
                        Case::Keep => out.push_str(v),
                        Case::Lower => out.push_str(&v.to_ascii_lowercase()),
                        Case::Upper => out.push_str(&v.to_ascii_uppercase()),
                    }
                }
            }
        }
        out
    }
}

/// The daemon's own keys (`dovecot-oauth2d`); the Lua module reads the same file and ignores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `listen` (default `127.0.0.1:7662`): where `POST /introspect` is served; `unix:/path` for a socket.
    pub address: String,
    /// `listen_client_id` / `listen_client_secret`: the HTTP Basic credentials Dovecot's oauth2 client
    /// must send (from `introspection_url`'s `ID:SECRET@`). Required by the daemon.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `metrics_listen` (default: none, metrics on `listen` with the same credentials).
    pub metrics_address: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen { address: "127.0.0.1:7662".into(), client_id: None, client_secret: None, metrics_address: None }
    }
}

/// A key set read without discovery, and the one issuer an entry binds it to: its keys verify tokens
/// of no other issuer. A JWK Set does not say which issuer it serves, so the settings must:
/// `jwks_url = KEYS_URL=ISSUER`, one entry per issuer (entries naming the same URL share a key set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    pub url: String,
    pub issuer: String,
}

/// Parses `jwks_url`: `KEYS_URL=ISSUER` words, the issuer (an http(s) URL, as OIDC requires) after
/// the last `=`, so a key set URL may have a query. Errors never show the value (it may come from a
/// file, or carry credentials): they count entries.
fn parse_jwks_urls(v: &str) -> Result<Vec<JwksUrl>, String> {
    let entry = |(n, word): (usize, &str)| {
        let bound = word.rsplit_once('=').filter(|(url, iss)| !url.is_empty() && is_http_url(iss));
        let (url, issuer) = bound.ok_or_else(|| {
            format!(
                "entry {} does not bind an issuer: each entry is KEYS_URL=ISSUER, the key set's URL, '=' and the \
                 issuer (an http(s) URL) whose tokens its keys verify",
                n + 1
            )
        })?;
        Ok(JwksUrl { url: url.to_string(), issuer: issuer.to_string() })
    };
    v.split_whitespace().enumerate().map(entry).collect()
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Everything the settings file can say, with defaults applied. Comparable, so that the daemon's
/// reload can tell whether anything but its listener keys changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub path: PathBuf,
    pub tokeninfo_url: Option<String>,
    pub introspection_url: Option<String>,
    pub introspection_mode: IntrospectionMode,
    pub force_introspection: bool,
    pub username_attribute: String,
    pub username_format: UsernameFormat,
    pub active_attribute: Option<String>,
    pub active_value: Option<String>,
    /// Every listed scope is required.
    pub scope: Vec<String>,
    /// When set, the token's `aud` must include one of these.
    pub audience: Vec<String>,
    /// When set, the token's `iss` (if the provider reports one) must be one of these. With
    /// `introspection_mode = local`, exactly these are accepted and `iss` is required; when unset, the
    /// issuers announced by the `openid_configuration_url` documents are accepted.
    pub issuers: Vec<String>,
    /// OIDC discovery documents (space separated: one per tenant/issuer). Local mode takes each one's
    /// `issuer` and `jwks_uri`; keys from a document only verify tokens of that document's issuer.
    pub openid_configuration_url: Vec<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `pass_attrs` as (field, template) pairs.
    pub pass_attrs: Vec<(String, String)>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_time: Duration,
    pub max_parallel_connections: usize,
    pub tls_ca_cert_file: Option<PathBuf>,
    pub tls_ca_cert_dir: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_allow_invalid_cert: bool,
    pub debug: bool,
    // Extensions of this module.
    pub cache_ttl: Duration,
    pub cache_negative_ttl: Duration,
    pub cache_max_entries: u64,
    /// Clock skew allowed on exp/nbf/iat.
    pub leeway: Duration,
    /// `jwks_url`: JWK Sets read directly, without discovery, each bound to the issuers whose tokens
    /// its keys may verify (`KEYS_URL=ISSUER` entries, space separated). Never any other issuer's.
    pub jwks_url: Vec<JwksUrl>,
    /// `jwks_refetch_min_interval_secs` (default 10): the least time between two fetches of one key
    /// source, so tokens with made-up key ids cannot make us hammer the provider.
    pub jwks_refetch_min_interval: Duration,
    /// `jwks_max_age_secs` (default 86400): the longest fetched keys are used before they are fetched
    /// again. Within it the provider's `Cache-Control: max-age` decides (kept between 60 s and 24 h;
    /// 1 h without the header).
    pub jwks_max_age: Duration,
    /// `stale_if_error_secs` (default 0 = off): how long past its cache TTL an acceptance may still be
    /// used while the provider cannot answer (never past the token's exp). Trades revocation delay
    /// for availability.
    pub stale_if_error: Duration,
    /// `circuit_breaker_failures` (default 5, 0 = off): consecutive provider failures after which the
    /// provider is not asked for a back-off period (logins fail fast, cached tokens still work).
    pub circuit_breaker_failures: u32,
    /// `circuit_breaker_backoff_secs` (default 10): the first back-off; doubles on failed probes, up to 8x.
    pub circuit_breaker_backoff: Duration,
    /// `stats_log_interval_secs` (default 0 = off): how often each auth-worker logs its counters.
    pub stats_log_interval: Duration,
    pub max_token_bytes: usize,
    pub max_response_bytes: usize,
    /// `http_proxy` (default: none): the proxy every provider request goes through. Proxies named in
    /// the environment (`HTTP_PROXY`, `ALL_PROXY`...) are never used.
    pub http_proxy: Option<String>,
    /// The daemon's listener (unused by the module).
    pub listen: Listen,
    /// The daemon's `scim_*` keys (SCIM provisioning), checked at start by `scim::settings`.
    pub scim: crate::scim::settings::ScimKeys,
    // PLAIN/LOGIN passwords (issue 12).
    /// Dovecot's `grant_url`: the token endpoint for the password grant; default: the `token_endpoint`
    /// of the first `openid_configuration_url`.
    pub grant_url: Option<String>,
    /// Dovecot's `use_grant_password` (default no): check PLAIN/LOGIN passwords at the token endpoint.
    pub use_grant_password: bool,
    pub grant_type: GrantType,
    pub grant_client_auth: GrantClientAuth,
    /// `grant_scope`: the `scope` requested by the grant; default: `scope` (as Dovecot sends it).
    pub grant_scope: Option<Vec<String>>,
    /// `grant_username_format` (default `%u`): the `username` sent, made from the login user.
    pub grant_username_format: UsernameFormat,
    /// `password_cache_ttl_secs` (default 300, 0 = off): how long an accepted password is reused without
    /// asking the provider (never past the returned token's expiry). A revoked app password or a changed
    /// IdP password keeps working at most this long.
    pub password_cache_ttl: Duration,
    /// `password_cache_negative_ttl_secs` (default 60): how long a refused password is refused again
    /// without asking the provider.
    pub password_cache_negative_ttl: Duration,
    /// `password_max_requests_per_minute` (default 10, 0 = no bound): password checks sent to the
    /// provider per login user and auth-worker process in any 60 s; more are a temporary failure.
    pub password_max_requests_per_minute: u32,
    /// `accept_token_as_password` (default no): a PLAIN/LOGIN password that is an access token is
    /// checked like an XOAUTH2 token (with the grant on: only JWT-shaped passwords).
    pub accept_token_as_password: bool,
    /// Notes for the admin (ignored Dovecot keys, loose permissions), logged once when loaded.
    pub warnings: Vec<String>,
}

/// Dovecot's own timeout default is 0 ("no timeout"); a login must never wait that long.
pub const DEFAULT_TIMEOUT_MSECS: u64 = 10_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            path: PathBuf::new(),
            tokeninfo_url: None,
            introspection_url: None,
            introspection_mode: IntrospectionMode::Auth,
            force_introspection: false,
            username_attribute: "email".into(),
            username_format: UsernameFormat::parse("%Lu").expect("default format"),
            active_attribute: None,
            active_value: None,
            scope: Vec::new(),
            audience: Vec::new(),
            issuers: Vec::new(),
            openid_configuration_url: Vec::new(),
            client_id: None,
            client_secret: None,
            pass_attrs: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MSECS),
            connect_timeout: Duration::from_millis(3_000),
            max_idle_time: Duration::from_millis(60_000),
            max_parallel_connections: 1,
            tls_ca_cert_file: None,
            tls_ca_cert_dir: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_allow_invalid_cert: false,
            debug: false,
            cache_ttl: Duration::from_secs(300),
            cache_negative_ttl: Duration::from_secs(30),
            cache_max_entries: 100_000,
            leeway: Duration::from_secs(60),
            jwks_url: Vec::new(),
            jwks_refetch_min_interval: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(86_400),
            stale_if_error: Duration::ZERO,
            circuit_breaker_failures: 5,
            circuit_breaker_backoff: Duration::from_secs(10),
            stats_log_interval: Duration::ZERO,
            max_token_bytes: 16 * 1024,
            max_response_bytes: 1024 * 1024,
            http_proxy: None,
            listen: Listen::default(),
            scim: Default::default(),
            grant_url: None,
            use_grant_password: false,
            grant_type: GrantType::Password,
            grant_client_auth: GrantClientAuth::Post,
            grant_scope: None,
            grant_username_format: UsernameFormat::parse("%u").expect("default format"),
            password_cache_ttl: Duration::from_secs(300),
            password_cache_negative_ttl: Duration::from_secs(60),
            password_max_requests_per_minute: 10,
            accept_token_as_password: false,
            warnings: Vec::new(),
        }
    }
}

/// Dovecot keys that this module accepts so an existing file keeps working, but does not act on.
const IGNORED_DOVECOT_KEYS: &[(&str, &str)] = &[
    ("max_pipelined_requests", "requests are not pipelined"),
    ("rawlog_dir", "raw HTTP logs are not written (they would contain tokens)"),
    ("tls_cipher_suite", "rustls uses its own secure cipher suites"),
    ("send_auth_headers", "X-Dovecot-Auth-* headers are not sent"),
];

impl Settings {
    /// Reads and checks a settings file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text =
            std::fs::read(path).map_err(|e| ConfigError::Read { path: path.to_owned(), reason: e.to_string() })?;
        let text = String::from_utf8(text)
            .map_err(|_| ConfigError::Read { path: path.to_owned(), reason: "not UTF-8".into() })?;
        let mut s = Settings::parse(path, &text)?;
        s.warn_about_permissions();
        Ok(s)
    }

    /// Parses settings text; `path` is only used in messages and for `<file` values.
    pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        let mut s = Settings { path: path.to_owned(), ..Settings::default() };
        let mut timeout_msecs: Option<u64> = None;
        let mut connect_timeout_msecs: Option<u64> = None;
        let mut key_lines: Vec<(String, usize)> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let Some((key, value)) = split_line(path, line, raw)? else { continue };
            // Reasons never include the value: it may be a secret read from a file.
            let (value, from_file) = resolve_value(path, line, &key, value)?;
            let invalid = |reason: String| ConfigError::Invalid {
                path: path.to_owned(),
                line,
                key: key.clone(),
                reason: match &from_file {
                    Some(file) => format!("value read from {}: {reason}", file.display()),
                    None => reason,
                },
            };
            let opt = |v: &str| if v.is_empty() { None } else { Some(v.to_string()) };
            let list = |v: &str| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            match key.as_str() {
                "tokeninfo_url" => s.tokeninfo_url = opt(&value),
                "introspection_url" => s.introspection_url = opt(&value),
                "introspection_mode" => {
                    s.introspection_mode = match value.as_str() {
                        "" | "auth" => IntrospectionMode::Auth,
                        "get" => IntrospectionMode::Get,
                        "post" => IntrospectionMode::Post,
                        "local" => IntrospectionMode::Local,
                        _ => return Err(invalid("is not one of auth, get, post, local".into())),
                    }
                }
                "force_introspection" => s.force_introspection = parse_bool(&value).map_err(invalid)?,
                "username_attribute" => {
                    if value.is_empty() {
                        return Err(invalid("must not be empty".into()));
                    }
                    s.username_attribute = value.clone();
                }
                "username_format" => {
                    let v = if value.is_empty() { "%Lu" } else { value.as_str() };
                    s.username_format = UsernameFormat::parse(v).map_err(invalid)?;
                }
                "active_attribute" => s.active_attribute = opt(&value),
                "active_value" => s.active_value = opt(&value),
                "scope" => s.scope = list(&value),
                "audience" => s.audience = list(&value),
                "issuers" => s.issuers = list(&value),
                "openid_configuration_url" => s.openid_configuration_url = list(&value),
                "jwks_url" => s.jwks_url = parse_jwks_urls(&value).map_err(invalid)?,
                "jwks_refetch_min_interval_secs" => {
                    s.jwks_refetch_min_interval = Duration::from_secs(parse_uint(&value).map_err(invalid)?)
                }
                "jwks_max_age_secs" => {
                    let n = parse_uint(&value).map_err(invalid)?;
                    if n < 60 {
                        return Err(invalid("must be at least 60".into()));
                    }
                    s.jwks_max_age = Duration::from_secs(n);
                }
                "client_id" => s.client_id = opt(&value),
                "client_secret" => s.client_secret = opt(&value),
                "pass_attrs" => s.pass_attrs = parse_pass_attrs(&value).map_err(invalid)?,
                "timeout_msecs" => timeout_msecs = Some(parse_uint(&value).map_err(invalid)?),
                "max_idle_time_msecs" => s.max_idle_time = Duration::from_millis(parse_uint(&value).map_err(invalid)?),
                "max_parallel_connections" => {
                    s.max_parallel_connections = parse_uint(&value).map_err(invalid)?.max(1) as usize
                }
                "tls_ca_cert_file" => s.tls_ca_cert_file = opt(&value).map(PathBuf::from),
                "tls_ca_cert_dir" => s.tls_ca_cert_dir = opt(&value).map(PathBuf::from),
                "tls_cert_file" => s.tls_cert_file = opt(&value).map(PathBuf::from),
                "tls_key_file" => s.tls_key_file = opt(&value).map(PathBuf::from),
                "tls_allow_invalid_cert" => s.tls_allow_invalid_cert = parse_bool(&value).map_err(invalid)?,
                "debug" => s.debug = parse_bool(&value).map_err(invalid)?,
                "use_grant_password" => s.use_grant_password = parse_bool(&value).map_err(invalid)?,
                "grant_url" => s.grant_url = opt(&value),
                "grant_type" => {
                    s.grant_type = match value.as_str() {
                        "" | "password" => GrantType::Password,
                        "client_credentials" => GrantType::ClientCredentials,
                        other => return Err(invalid(format!("'{other}' is not one of password, client_credentials"))),
                    }
                }
                "grant_client_auth" => {
                    s.grant_client_auth = match value.as_str() {
                        "" | "post" => GrantClientAuth::Post,
                        "basic" => GrantClientAuth::Basic,
                        other => return Err(invalid(format!("'{other}' is not one of post, basic"))),
                    }
                }
                "grant_scope" => s.grant_scope = opt(&value).map(|v| list(&v)),
                "grant_username_format" => {
                    let v = if value.is_empty() { "%u" } else { value.as_str() };
                    s.grant_username_format = UsernameFormat::parse(v).map_err(invalid)?;
                }
                "password_cache_ttl_secs" => {
                    s.password_cache_ttl = Duration::from_secs(parse_uint(&value).map_err(invalid)?)
                }
                "password_cache_negative_ttl_secs" => {
                    s.password_cache_negative_ttl = Duration::from_secs(parse_uint(&value).map_err(invalid)?)
                }
                "password_max_requests_per_minute" => {
                    let n = parse_uint(&value).map_err(invalid)?;
                    if n > 100_000 {
                        return Err(invalid("must be at most 100000 (0 = no bound)".into()));
                    }
                    s.password_max_requests_per_minute = n as u32;
                }
                "accept_token_as_password" => s.accept_token_as_password = parse_bool(&value).map_err(invalid)?,
                "local_validation_key_dict" => {
                    if !value.is_empty() {
                        return Err(invalid(
                            "Dovecot key dictionaries are not read; use introspection_mode = local with \
                             openid_configuration_url or jwks_url"
                                .into(),
                        ));
                    }
                }
                "cache_ttl_secs" => s.cache_ttl = Duration::from_secs(parse_uint(&value).map_err(invalid)?),
                "cache_negative_ttl_secs" => {
                    s.cache_negative_ttl = Duration::from_secs(parse_uint(&value).map_err(invalid)?)
                }
                "leeway_secs" => s.leeway = Duration::from_secs(parse_uint(&value).map_err(invalid)?),
                "stale_if_error_secs" => s.stale_if_error = Duration::from_secs(parse_uint(&value).map_err(invalid)?),
                "circuit_breaker_failures" => {
                    s.circuit_breaker_failures = parse_uint(&value).map_err(invalid)?.min(u32::MAX as u64) as u32
                }
                "circuit_breaker_backoff_secs" => {
                    let n = parse_uint(&value).map_err(invalid)?;
                    if !(1..=3600).contains(&n) {
                        return Err(invalid("must be between 1 and 3600".into()));
                    }
                    s.circuit_breaker_backoff = Duration::from_secs(n);
                }
                "stats_log_interval_secs" => {
                    s.stats_log_interval = Duration::from_secs(parse_uint(&value).map_err(invalid)?)
                }
                "cache_max_entries" => s.cache_max_entries = parse_uint(&value).map_err(invalid)?,
                "max_token_bytes" => {
                    let n = parse_uint(&value).map_err(invalid)?;
                    if !(64..=1024 * 1024).contains(&n) {
                        return Err(invalid("must be between 64 and 1048576".into()));
                    }
                    s.max_token_bytes = n as usize;
                }
                "max_response_bytes" => {
                    let n = parse_uint(&value).map_err(invalid)?;
                    if !(1024..=64 * 1024 * 1024).contains(&n) {
                        return Err(invalid("must be between 1024 and 67108864".into()));
                    }
                    s.max_response_bytes = n as usize;
                }
                "connect_timeout_msecs" => connect_timeout_msecs = Some(parse_uint(&value).map_err(invalid)?),
                "http_proxy" => {
                    if !value.is_empty() {
                        crate::http::check_url(&value).map_err(|why| invalid(why.into()))?;
                    }
                    s.http_proxy = opt(&value);
                }
                "listen" => {
                    if value.is_empty() {
                        return Err(invalid("must not be empty".into()));
                    }
                    s.listen.address = value.clone();
                }
                "listen_client_id" => s.listen.client_id = opt(&value),
                "listen_client_secret" => s.listen.client_secret = opt(&value),
                "metrics_listen" => s.listen.metrics_address = opt(&value),
                k if crate::scim::settings::ScimKeys::knows(k) => s.scim.set(k, &value).map_err(invalid)?,
                other => {
                    if let Some((_, why)) = IGNORED_DOVECOT_KEYS.iter().find(|(k, _)| *k == other) {
                        if !value.is_empty() {
                            s.warnings.push(format!("{}: line {line}: {other} is ignored: {why}", path.display()));
                        }
                    } else {
                        return Err(ConfigError::UnknownKey { path: path.to_owned(), line, key });
                    }
                }
            }
            key_lines.push((key, line));
        }
        let timeout = match timeout_msecs {
            Some(0) | None => DEFAULT_TIMEOUT_MSECS,
            Some(n) => n,
        };
        s.timeout = Duration::from_millis(timeout);
        s.connect_timeout = Duration::from_millis(connect_timeout_msecs.unwrap_or(3_000).clamp(1, timeout));
        s.check(&key_lines)?;
        s.warn_about_local_mode();
        Ok(s)
    }

    /// Cross-key rules, checked after the whole file is read (as Dovecot does at start).
    fn check(&self, key_lines: &[(String, usize)]) -> Result<(), ConfigError> {
        let line_of = |k: &str| key_lines.iter().rev().find(|(key, _)| key == k).map(|(_, l)| *l).unwrap_or(0);
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            path: self.path.clone(),
            line: line_of(key),
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let local = self.introspection_mode == IntrospectionMode::Local;
        if local && self.openid_configuration_url.is_empty() && self.jwks_url.is_empty() {
            return Err(ConfigError::Incomplete {
                path: self.path.clone(),
                reason: "introspection_mode = local needs openid_configuration_url or jwks_url".into(),
            });
        }
        // Keys verify only the issuers they are bound to. A binding `issuers` refuses is dead; an issuer
        // listed with no key source at all (no discovery to announce it) could never log anyone in.
        if !self.issuers.is_empty() {
            if let Some(n) = self.jwks_url.iter().position(|j| !self.issuers.contains(&j.issuer)) {
                return Err(invalid(
                    "jwks_url",
                    &format!("entry {} binds an issuer that issuers does not list (so its tokens are refused)", n + 1),
                ));
            }
            if local && self.openid_configuration_url.is_empty() {
                if let Some(n) = self.issuers.iter().position(|i| !self.jwks_url.iter().any(|j| &j.issuer == i)) {
                    return Err(invalid(
                        "issuers",
                        &format!(
                            "entry {} has no key source: no jwks_url is bound to it (jwks_url = KEYS_URL=ISSUER) \
                             and there is no openid_configuration_url",
                            n + 1
                        ),
                    ));
                }
            }
        }
        if self.use_grant_password && !local && self.tokeninfo_url.is_none() && self.introspection_url.is_none() {
            return Err(ConfigError::Incomplete {
                path: self.path.clone(),
                reason: "use_grant_password = yes: the token the password grant returns is checked like any \
                         token: set introspection_url (userinfo or RFC 7662 endpoint), tokeninfo_url or \
                         introspection_mode = local"
                    .into(),
            });
        }
        if !local && self.tokeninfo_url.is_none() && self.introspection_url.is_none() {
            return Err(ConfigError::Incomplete {
                path: self.path.clone(),
                reason: "set introspection_url (userinfo or RFC 7662 endpoint) or tokeninfo_url".into(),
            });
        }
        if self.active_value.is_some() && self.active_attribute.is_none() {
            return Err(invalid("active_value", "active_attribute must be set too"));
        }
        for key in ["tokeninfo_url", "introspection_url", "openid_configuration_url", "jwks_url", "grant_url"] {
            let urls: Vec<&String> = match key {
                "tokeninfo_url" => self.tokeninfo_url.iter().collect(),
                "introspection_url" => self.introspection_url.iter().collect(),
                "openid_configuration_url" => self.openid_configuration_url.iter().collect(),
                "grant_url" => self.grant_url.iter().collect(),
                _ => self.jwks_url.iter().map(|j| &j.url).collect(),
            };
            for url in urls {
                crate::http::check_url(url).map_err(|why| invalid(key, why))?;
            }
        }
        self.check_password_grant(&invalid)?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(invalid("tls_cert_file", "tls_cert_file and tls_key_file go together"));
        }
        if matches!(self.introspection_mode, IntrospectionMode::Post | IntrospectionMode::Local)
            && self.client_secret.is_some()
            && self.client_id.is_none()
        {
            return Err(invalid("client_secret", "client_id must be set too"));
        }
        Ok(())
    }

    /// The password grant needs a token endpoint and a client to ask it as.
    fn check_password_grant(&self, invalid: &dyn Fn(&str, &str) -> ConfigError) -> Result<(), ConfigError> {
        if let Some(url) = &self.grant_url {
            // Client credentials belong in client_id/client_secret, where grant_client_auth decides how
            // they are sent; a URL's user:password@ would be sent as well, and logged by proxies.
            if url.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@')) {
                return Err(invalid("grant_url", "must not carry credentials: use client_id and client_secret"));
            }
        }
        if !self.use_grant_password {
            return Ok(());
        }
        if self.grant_url.is_none() && self.openid_configuration_url.is_empty() {
            return Err(ConfigError::Incomplete {
                path: self.path.clone(),
                reason: "use_grant_password = yes needs grant_url (the provider's token endpoint) or \
                         openid_configuration_url (whose token_endpoint is used)"
                    .into(),
            });
        }
        if self.client_id.is_none() {
            return Err(invalid(
                "use_grant_password",
                "client_id must be set (the client the password grant is sent as)",
            ));
        }
        if self.grant_client_auth == GrantClientAuth::Basic && self.client_secret.is_none() {
            return Err(invalid("grant_client_auth", "basic needs client_secret"));
        }
        Ok(())
    }

    /// Settings that work but are probably not what the admin wants.
    fn warn_about_local_mode(&mut self) {
        let shown = self.path.display().to_string();
        if self.introspection_mode == IntrospectionMode::Local {
            if self.audience.is_empty() {
                self.warnings.push(format!(
                    "{shown}: introspection_mode = local without audience accepts the issuer's tokens for any \
                     client or API; set audience"
                ));
            }
        } else if !self.jwks_url.is_empty() {
            self.warnings.push(format!("{shown}: jwks_url is only used with introspection_mode = local"));
        }
    }

    fn warn_about_permissions(&mut self) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // Root and Dovecot's own group may read it; anyone else learns the provider setup and,
            // with client credentials in it, can introspect tokens as us.
            if let Ok(meta) = std::fs::metadata(&self.path) {
                let group_ok = meta.gid() == 0 || group_name(meta.gid()).as_deref() == Some("dovecot");
                if meta.mode() & 0o004 != 0 || (meta.mode() & 0o040 != 0 && !group_ok) {
                    self.warnings.push(format!(
                        "{} is readable by users other than root and dovecot (mode {:o}); chmod 640 it, owner root, group root or dovecot",
                        self.path.display(),
                        meta.mode() & 0o777
                    ));
                }
            }
        }
    }
}

/// The name of group `gid` from /etc/group (no libc call: this runs in Dovecot's auth-worker).
#[cfg(unix)]
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == gid).then(|| name.to_string())
    })
}

/// Splits `key = value`, dropping comments the way Dovecot's settings reader does ('#' outside quotes).
fn split_line(path: &Path, line: usize, raw: &str) -> Result<Option<(String, String)>, ConfigError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let mut end = trimmed.len();
    let mut quote: Option<char> = None;
    for (i, c) in trimmed.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => {
                // Dovecot cuts the value here too, with a warning; in a URL that hides a password's end.
                if !trimmed[..i].ends_with(char::is_whitespace) {
                    return Err(ConfigError::Syntax {
                        path: path.to_owned(),
                        line,
                        reason: "'#' right after a value starts a comment (ambiguous): quote the value, write \
                                 '#' in a URL as %23, or put a space before the comment"
                            .into(),
                    });
                }
                end = i;
                break;
            }
            _ => {}
        }
    }
    let content = trimmed[..end].trim();
    if content.starts_with('!') {
        return Err(ConfigError::Syntax {
            path: path.to_owned(),
            line,
            reason: format!("'{}' is not supported in this file", content.split_whitespace().next().unwrap_or("")),
        });
    }
    let Some((key, value)) = content.split_once('=') else {
        return Err(ConfigError::Syntax { path: path.to_owned(), line, reason: "expected 'key = value'".into() });
    };
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(ConfigError::Syntax { path: path.to_owned(), line, reason: format!("bad key '{key}'") });
    }
    let mut value = value.trim();
    if value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"')) || (value.starts_with('\'') && value.ends_with('\'')))
    {
        value = &value[1..value.len() - 1];
    }
    Ok(Some((key.to_string(), value.to_string())))
}

/// `key = <file` reads the value from a file (as Dovecot does), handy for client_secret. Returns the
/// file too: errors about such a value name it, and never show the value.
fn resolve_value(path: &Path, line: usize, key: &str, value: String) -> Result<(String, Option<PathBuf>), ConfigError> {
    let Some(file) = value.strip_prefix('<') else { return Ok((value, None)) };
    let file = Path::new(file.trim());
    let file = if file.is_relative() { path.parent().unwrap_or(Path::new("/")).join(file) } else { file.to_owned() };
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok((text.trim().to_string(), Some(file))),
        Err(e) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            line,
            key: key.to_string(),
            reason: format!("cannot read {}: {e}", file.display()),
        }),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "1" => Ok(true),
        "no" | "n" | "false" | "0" | "" => Ok(false),
        _ => Err("is not yes or no".into()),
    }
}

fn parse_uint(v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|_| "is not a whole number".into())
}

/// `pass_attrs` is Dovecot's passdb-template syntax: space-separated `field=template` words
/// (a bare `field` means `field=`).
fn parse_pass_attrs(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, word) in v.split_whitespace().enumerate() {
        let (k, t) = word.split_once('=').unwrap_or((word, ""));
        if k.is_empty() {
            return Err(format!("word {} has no field name", n + 1));
        }
        crate::claims::check_template(t).map_err(|why| format!("the template of word {} {why}", n + 1))?;
        out.push((k.to_string(), t.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(Path::new("/etc/dovecot/dovecot-oauth2.conf.ext"), text)
    }

    #[test]
    fn dms_default_file_with_a_userinfo_url_is_accepted_with_dovecot_defaults() {
        let s = parse("introspection_url = https://idp/userinfo\n# Dovecot defaults:\nintrospection_mode = auth\nusername_attribute = email\n").unwrap();
        assert_eq!(s.introspection_mode, IntrospectionMode::Auth);
        assert_eq!(s.username_attribute, "email");
        assert_eq!(s.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MSECS));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn world_readable_settings_file_gets_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("o2perm{}.conf", std::process::id()));
        std::fs::write(&path, "introspection_url = https://idp/u\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Settings::load(&path).unwrap();
        assert!(
            s.warnings.iter().any(|w| w.contains("readable by users other than root and dovecot")),
            "{:?}",
            s.warnings
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Settings::load(&path).unwrap().warnings.is_empty());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn availability_keys_have_documented_defaults() {
        let s = parse("introspection_url = https://idp/u\n").unwrap();
        assert_eq!(s.stale_if_error, Duration::ZERO);
        assert_eq!(s.circuit_breaker_failures, 5);
        assert_eq!(s.circuit_breaker_backoff, Duration::from_secs(10));
        assert_eq!(s.stats_log_interval, Duration::ZERO);
        assert!(parse("introspection_url = https://idp/u\ncircuit_breaker_backoff_secs = 0\n").is_err());
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_line_and_key() {
        let e = parse("introspection_url = https://idp/u\nintrospection_uri = x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "settings file /etc/dovecot/dovecot-oauth2.conf.ext line 2: unknown key 'introspection_uri'"
        );
    }

    #[test]
    fn bad_introspection_mode_names_the_line_and_key() {
        let e = parse("introspection_url = https://idp/u\nintrospection_mode = bearer\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 2, ref key, .. } if key == "introspection_mode"), "{e}");
    }

    #[test]
    fn a_file_without_any_endpoint_is_incomplete() {
        assert!(matches!(parse("username_attribute = email\n"), Err(ConfigError::Incomplete { .. })));
    }

    #[test]
    fn comments_and_quotes_follow_dovecot() {
        let s = parse("introspection_url = \"https://idp/u#x\" # trailing comment\nscope = a b\n").unwrap();
        assert_eq!(s.introspection_url.as_deref(), Some("https://idp/u#x"));
        assert_eq!(s.scope, vec!["a", "b"]);
    }

    #[test]
    fn dovecot_keys_without_effect_are_accepted_with_a_warning() {
        let s =
            parse("introspection_url = https://idp/u\nrawlog_dir = /tmp/raw\nmax_pipelined_requests = 1\n").unwrap();
        assert_eq!(s.warnings.len(), 2);
    }

    #[test]
    fn timeout_zero_means_the_bounded_default() {
        let s = parse("introspection_url = https://idp/u\ntimeout_msecs = 0\n").unwrap();
        assert_eq!(s.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MSECS));
        let s = parse("introspection_url = https://idp/u\ntimeout_msecs = 1500\n").unwrap();
        assert_eq!(s.timeout, Duration::from_millis(1500));
        assert_eq!(s.connect_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn active_value_without_active_attribute_is_refused() {
        assert!(parse("introspection_url = https://idp/u\nactive_value = true\n").is_err());
    }

    #[test]
    fn pass_attrs_are_split_into_field_templates() {
        let s = parse("introspection_url = https://idp/u\npass_attrs = proxy=y quota=%{oauth2:quota:1G} nodelay\n")
            .unwrap();
        assert_eq!(
            s.pass_attrs,
            vec![
                ("proxy".into(), "y".into()),
                ("quota".into(), "%{oauth2:quota:1G}".into()),
                ("nodelay".into(), "".into())
            ]
        );
    }

    #[test]
    fn value_from_file_reads_a_secret() {
        let dir = std::env::temp_dir().join(format!("o2cfg{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
        let s = Settings::parse(&dir.join("x.conf"), "introspection_url = https://idp/i\nintrospection_mode = post\nclient_id = dovecot\nclient_secret = <secret\n").unwrap();
        assert_eq!(s.client_secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn value_read_from_a_file_is_never_echoed_in_settings_errors() {
        let dir = std::env::temp_dir().join(format!("o2echo{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad"), "s3cr3t%x =\n").unwrap();
        std::fs::write(dir.join("unclosed"), "f=%{s3cr3t\n").unwrap();
        let keys = [
            "introspection_mode",
            "force_introspection",
            "username_format",
            "pass_attrs",
            "timeout_msecs",
            "max_parallel_connections",
            "tls_allow_invalid_cert",
            "debug",
            "use_grant_password",
            "cache_ttl_secs",
            "leeway_secs",
            "circuit_breaker_backoff_secs",
            "max_token_bytes",
            "jwks_url",
            "jwks_max_age_secs",
        ];
        let cases = keys.iter().map(|k| (*k, "bad")).chain([("pass_attrs", "unclosed")]);
        for (key, file) in cases {
            let text = format!("introspection_url = https://idp/u\n{key} = <{file}\n");
            let e = Settings::parse(&dir.join("x.conf"), &text).unwrap_err();
            let shown = e.to_string();
            assert!(!shown.contains("s3cr3t"), "{key}: {shown}");
            assert!(matches!(e, ConfigError::Invalid { line: 2, key: ref k, .. } if k == key), "{key}: {shown}");
            assert!(shown.contains(&dir.join(file).display().to_string()), "{key}: {shown}");
        }
    }

    #[test]
    fn username_format_folds_ascii_case_only_so_lookalike_names_stay_distinct() {
        let f = UsernameFormat::parse("%Lu").unwrap();
        assert_eq!(f.apply("\u{212A}ate@x.test"), "\u{212A}ate@x.test");
        assert_ne!(f.apply("\u{212A}ate@x.test"), f.apply("kate@x.test"));
        assert_eq!(f.apply("ÉLISE@X.TEST"), "Élise@x.test");
    }

    #[test]
    fn username_format_default_lowercases_the_whole_user() {
        let f = UsernameFormat::parse("%Lu").unwrap();
        assert_eq!(f.apply("Alice@Example.TEST"), "alice@example.test");
        assert_eq!(UsernameFormat::parse("%n").unwrap().apply("bob@x.test"), "bob");
        assert_eq!(UsernameFormat::parse("%{username}@%Ld").unwrap().apply("Bob@X.Test"), "Bob@x.test");
        assert!(UsernameFormat::parse("%r").is_err());
    }

    #[test]
    fn local_mode_without_a_key_source_is_incomplete() {
        let e = parse("introspection_mode = local\ntokeninfo_url = https://x/\n").unwrap_err();
        assert!(matches!(e, ConfigError::Incomplete { .. }), "{e}");
        assert!(e.to_string().contains("openid_configuration_url or jwks_url"), "{e}");
    }

    #[test]
    fn local_mode_with_discovery_needs_no_introspection_url() {
        let s = parse("introspection_mode = local\nopenid_configuration_url = https://idp/.well-known/openid-configuration\naudience = mail\n").unwrap();
        assert_eq!(s.introspection_mode, IntrospectionMode::Local);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.jwks_refetch_min_interval, Duration::from_secs(10));
        assert_eq!(s.jwks_max_age, Duration::from_secs(86_400));
    }

    #[test]
    fn several_discovery_urls_and_jwks_urls_are_space_separated() {
        let s = parse("introspection_mode = local\nopenid_configuration_url = https://a/.well-known/openid-configuration https://b/.well-known/openid-configuration\njwks_url = https://c/keys=https://c https://d/keys=https://d\n").unwrap();
        assert_eq!(s.openid_configuration_url.len(), 2);
        assert_eq!(s.jwks_url.len(), 2);
    }

    #[test]
    fn jwks_url_binds_its_keys_to_the_issuer_after_the_last_equals_sign() {
        let s = parse("introspection_mode = local\njwks_url = https://k/keys?tenant=a=https://sts.test/a/\n").unwrap();
        assert_eq!(
            s.jwks_url,
            vec![JwksUrl { url: "https://k/keys?tenant=a".into(), issuer: "https://sts.test/a/".into() }]
        );
    }

    #[test]
    fn jwks_url_without_a_bound_issuer_is_refused_without_echoing_it() {
        for value in ["https://idp/keys", "https://idp/keys?tenant=secret", "https://idp/keys=", "=https://idp"] {
            let e =
                parse(&format!("introspection_mode = local\nissuers = https://idp\njwks_url = {value}\n")).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { line: 3, ref key, .. } if key == "jwks_url"), "{e}");
            assert!(e.to_string().contains("KEYS_URL=ISSUER"), "{e}");
            assert!(!e.to_string().contains("idp") && !e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn jwks_url_alone_needs_no_issuers_key() {
        let s = parse("introspection_mode = local\njwks_url = https://idp/keys=https://idp\n").unwrap();
        assert!(s.issuers.is_empty());
    }

    #[test]
    fn jwks_url_binding_an_issuer_that_issuers_does_not_list_is_refused() {
        let e = parse(
            "introspection_mode = local\nissuers = https://a\njwks_url = https://k=https://a https://k=https://b\n",
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 3, ref key, .. } if key == "jwks_url"), "{e}");
        assert!(e.to_string().contains("entry 2"), "{e}");
    }

    #[test]
    fn listed_issuer_without_any_key_source_is_refused_when_there_is_no_discovery() {
        let e = parse("introspection_mode = local\nissuers = https://a https://b\njwks_url = https://k=https://a\n")
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 2, ref key, .. } if key == "issuers"), "{e}");
        assert!(e.to_string().contains("entry 2 has no key source"), "{e}");
        // With discovery, an issuer's source is known once the documents are read: checked per login.
        assert!(parse(
            "introspection_mode = local\nissuers = https://a https://b\nopenid_configuration_url = https://d\n"
        )
        .is_ok());
    }

    #[test]
    fn jwks_url_must_be_http_and_names_its_line() {
        let e = parse("introspection_mode = local\nissuers = https://x\njwks_url = https://ok/k=https://x ftp://bad/k=https://x\n")
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 3, ref key, .. } if key == "jwks_url"), "{e}");
    }

    #[test]
    fn local_mode_without_audience_warns() {
        let s = parse("introspection_mode = local\nopenid_configuration_url = https://idp/d\n").unwrap();
        assert!(s.warnings.iter().any(|w| w.contains("audience")), "{:?}", s.warnings);
    }

    const GRANT: &str = "introspection_url = https://idp/userinfo\nuse_grant_password = yes\nclient_id = dovecot\n";

    #[test]
    fn dovecots_password_grant_keys_are_accepted_with_their_meaning_and_our_defaults() {
        let s = parse(&format!("{GRANT}grant_url = https://idp/token\nclient_secret = s\nscope = mail\n")).unwrap();
        assert!(s.use_grant_password);
        assert_eq!(s.grant_url.as_deref(), Some("https://idp/token"));
        assert_eq!((s.grant_type, s.grant_client_auth), (GrantType::Password, GrantClientAuth::Post));
        assert_eq!(s.grant_scope, None);
        assert_eq!(s.grant_username_format.apply("Alice@X"), "Alice@X");
        assert_eq!(s.password_cache_ttl, Duration::from_secs(300));
        assert_eq!(s.password_cache_negative_ttl, Duration::from_secs(60));
        assert_eq!(s.password_max_requests_per_minute, 10);
        assert!(!s.accept_token_as_password);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn the_password_grant_needs_a_token_endpoint_from_grant_url_or_discovery() {
        assert!(matches!(parse(GRANT), Err(ConfigError::Incomplete { .. })));
        assert!(
            parse(&format!("{GRANT}openid_configuration_url = https://idp/.well-known/openid-configuration\n")).is_ok()
        );
    }

    #[test]
    fn the_password_grant_needs_a_client_id_as_dovecot_does() {
        let e = parse("introspection_url = https://idp/u\nuse_grant_password = yes\ngrant_url = https://idp/t\n")
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { ref key, .. } if key == "use_grant_password"), "{e}");
    }

    #[test]
    fn the_password_grant_needs_a_way_to_check_the_returned_token() {
        let e = parse("use_grant_password = yes\ngrant_url = https://idp/t\nclient_id = d\n").unwrap_err();
        assert!(e.to_string().contains("the token the password grant returns is checked"), "{e}");
    }

    #[test]
    fn grant_url_must_be_http_without_credentials() {
        let e = parse(&format!("{GRANT}grant_url = https://id:secret@idp/token\n")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 4, ref key, .. } if key == "grant_url"), "{e}");
        assert!(parse(&format!("{GRANT}grant_url = ldap://idp/token\n")).is_err());
    }

    #[test]
    fn grant_type_client_auth_and_bounds_are_checked() {
        let s = parse(&format!(
            "{GRANT}grant_url = https://idp/t\nclient_secret = s\ngrant_type = client_credentials\n\
             grant_client_auth = basic\ngrant_scope = openid email\npassword_max_requests_per_minute = 0\n"
        ))
        .unwrap();
        assert_eq!((s.grant_type, s.grant_client_auth), (GrantType::ClientCredentials, GrantClientAuth::Basic));
        assert_eq!(s.grant_scope, Some(vec!["openid".to_string(), "email".to_string()]));
        assert_eq!(s.password_max_requests_per_minute, 0);
        assert!(parse(&format!("{GRANT}grant_url = https://idp/t\ngrant_type = implicit\n")).is_err());
        assert!(parse(&format!("{GRANT}grant_url = https://idp/t\ngrant_client_auth = basic\n")).is_err(), "no secret");
        assert!(
            parse(&format!("{GRANT}grant_url = https://idp/t\npassword_max_requests_per_minute = 100001\n")).is_err()
        );
    }

    #[test]
    fn jwks_max_age_below_a_minute_is_refused() {
        let e = parse("introspection_mode = local\nopenid_configuration_url = https://idp/d\njwks_max_age_secs = 5\n")
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 3, ref key, .. } if key == "jwks_max_age_secs"), "{e}");
    }
}
