//! Troubleshooting: checks one token (or, with `--password`, one PLAIN/LOGIN password) for one user
//! exactly as the Dovecot module would, and prints each step (mode, endpoint and HTTP status, the
//! claims that decided, cache state) and the verdict. Never prints the token or the password; the
//! password is only read from standard input; every string from outside (the user, settings values,
//! claims, error messages) is shown escaped. Exit code: 0 accepted, 1 rejected, 2 temporary failure
//! or bad settings.
//! Needs no Lua, so it runs inside a docker-mailserver container as it is.

use dovecot_oauth2::config::{GrantClientAuth, IntrospectionMode, Settings};
use dovecot_oauth2::escape::{shown, shown_reason};
use dovecot_oauth2::http::redact_url;
use dovecot_oauth2::token::fingerprint;
use dovecot_oauth2::{Engine, Verdict};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: dovecot-oauth2-check [-c SETTINGS_FILE] USER [TOKEN | -]
       dovecot-oauth2-check [-c SETTINGS_FILE] --password USER [-]

Checks TOKEN for USER as Dovecot's Lua passdb with dovecot_oauth2 would, printing each step.
The token is read from standard input when it is '-' or not given (keeps it out of shell history).
With --password, checks a PLAIN/LOGIN password (an IdP app password or password) for USER the same
way: the password is read from standard input only, one line, never from the command line.
SETTINGS_FILE defaults to $DOVECOT_OAUTH2_CONFIG, else /etc/dovecot/dovecot-oauth2.conf.ext.
Exit code: 0 accepted, 1 authentication failed, 2 temporary failure or unusable settings.";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") || args.is_empty() {
        println!("{USAGE}");
        return if args.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    let mut path = std::env::var_os("DOVECOT_OAUTH2_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/dovecot/dovecot-oauth2.conf.ext"));
    if let Some(i) = args.iter().position(|a| a == "-c" || a == "--config") {
        if i + 1 >= args.len() {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        path = PathBuf::from(args.remove(i + 1));
        args.remove(i);
    }
    let password_mode = match args.iter().position(|a| a == "--password") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    if password_mode {
        return match args.as_slice() {
            [user] => check_password(path, user),
            [user, dash] if dash == "-" => check_password(path, user),
            _ => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let (user, token) = match args.as_slice() {
        [user] => (user.clone(), None),
        [user, t] if t == "-" => (user.clone(), None),
        [user, t] => (user.clone(), Some(t.clone().into_bytes())),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let token = match token {
        Some(t) => t,
        None => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("cannot read the token from standard input: {e}");
                return ExitCode::from(2);
            }
            while buf.last().is_some_and(|b| b.is_ascii_whitespace()) {
                buf.pop();
            }
            buf
        }
    };

    let Some(engine) = load_engine(&path) else { return ExitCode::from(2) };
    println!("user: {}", shown(&user));
    println!("token: {} bytes, {}", token.len(), fingerprint(&token));
    println!("cache: empty (this is a new process; each Dovecot auth-worker keeps its own cache)");
    let (outcome, steps) = engine.explain(&user, &token);
    // Steps and warnings are built with their outside values escaped already.
    for step in steps {
        println!("step: {step}");
    }
    for w in &outcome.warnings {
        println!("warning: {w}");
    }
    verdict(&outcome.verdict, outcome.elapsed.as_millis())
}

/// `--password`: one password from standard input, checked as a PLAIN/LOGIN login would be.
fn check_password(path: PathBuf, user: &str) -> ExitCode {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(Vec::new());
    if let Err(e) = std::io::stdin().lock().read_until(b'\n', &mut line) {
        eprintln!("cannot read the password from standard input: {e}");
        return ExitCode::from(2);
    }
    // Only the line ending goes: spaces may belong to a password.
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    let Some(engine) = load_engine(&path) else { return ExitCode::from(2) };
    describe_password_settings(engine.settings());
    println!("user: {}", dovecot_oauth2::escape::shown(user));
    println!("password: {} bytes (not shown)", line.len());
    println!("cache: empty (this is a new process; each Dovecot auth-worker keeps its own cache)");
    let (outcome, steps) = engine.explain_password(user, &line);
    for step in steps {
        println!("step: {step}");
    }
    for w in &outcome.warnings {
        println!("warning: {w}");
    }
    verdict(&outcome.verdict, outcome.elapsed.as_millis())
}

/// Settings read and the engine built, as a worker does on its first login; None (reported) if not.
fn load_engine(path: &std::path::Path) -> Option<Engine> {
    println!("settings: {}", shown_reason(&path.display().to_string()));
    let settings = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => {
            println!("verdict: TEMPORARY FAILURE: {}", shown_reason(&e.to_string()));
            return None;
        }
    };
    for w in &settings.warnings {
        println!("warning: {}", shown_reason(w));
    }
    describe_settings(&settings);
    match Engine::new(settings) {
        Ok(e) => Some(e),
        Err(e) => {
            println!("verdict: TEMPORARY FAILURE: {}", shown_reason(&e.to_string()));
            None
        }
    }
}

fn verdict(v: &Verdict, msecs: u128) -> ExitCode {
    match v {
        Verdict::Accept(fields) => {
            println!("verdict: ACCEPTED in {msecs} ms");
            for (k, v) in fields {
                println!("passdb field: {}={}", shown(k), shown_reason(v));
            }
            ExitCode::SUCCESS
        }
        Verdict::Reject(r) => {
            println!("verdict: AUTHENTICATION FAILED: {r}");
            ExitCode::from(1)
        }
        Verdict::TempFail(u) => {
            println!("verdict: TEMPORARY FAILURE: {u}");
            ExitCode::from(2)
        }
    }
}

fn describe_password_settings(s: &Settings) {
    println!(
        "passwords: use_grant_password = {}, accept_token_as_password = {}",
        if s.use_grant_password { "yes" } else { "no" },
        if s.accept_token_as_password { "yes" } else { "no" }
    );
    if !s.use_grant_password {
        return;
    }
    match &s.grant_url {
        Some(u) => println!("grant_url: {}", redact_url(u)),
        None => println!("grant_url: (token_endpoint of the discovery document)"),
    }
    let auth = match s.grant_client_auth {
        GrantClientAuth::Post => "post",
        GrantClientAuth::Basic => "basic",
    };
    println!(
        "grant: grant_type = {}, client_id = {}, grant_client_auth = {auth}",
        s.grant_type.as_str(),
        s.client_id.as_deref().unwrap_or("(none)")
    );
    println!(
        "password cache: accepted {} s, refused {} s; at most {} provider requests per user per minute",
        s.password_cache_ttl.as_secs(),
        s.password_cache_negative_ttl.as_secs(),
        s.password_max_requests_per_minute
    );
}

fn describe_settings(s: &Settings) {
    let mode = match s.introspection_mode {
        IntrospectionMode::Auth => "auth (GET with Bearer token: userinfo style)",
        IntrospectionMode::Get => "get (token appended to the URL)",
        IntrospectionMode::Post => "post (RFC 7662 introspection)",
        IntrospectionMode::Local => "local (JWT signature checked in the module)",
    };
    println!("mode: {mode}");
    if let Some(u) = &s.tokeninfo_url {
        println!("tokeninfo_url: {}", redact_url(u));
    }
    if let Some(u) = &s.introspection_url {
        println!("introspection_url: {}", redact_url(u));
    }
    for u in &s.openid_configuration_url {
        println!("openid_configuration_url: {}", redact_url(u));
    }
    for u in &s.jwks_url {
        println!("jwks_url: {} (verifies issuer {})", redact_url(&u.url), u.issuer);
    }
    if let Some(u) = &s.http_proxy {
        println!("http_proxy: {}", redact_url(u));
    }
    println!("username_attribute: {} (compared after username_format)", shown(&s.username_attribute));
    for (name, list) in [("scope", &s.scope), ("audience", &s.audience), ("issuers", &s.issuers)] {
        if !list.is_empty() {
            println!("{name}: {}", shown_reason(&list.join(" ")));
        }
    }
}
