//! `dovecot-oauth2d`: the engine behind an RFC 7662 introspection endpoint, for Dovecot's own oauth2
//! client (2.4's `oauth2 {}`, 2.3's `passdb { driver = oauth2 }`). One process per host: one cache,
//! one provider request per token however many logins and auth processes use it.
//!
//! - [`cli`]: the command line; [`state`]: the settings in use; [`server`]: listeners and HTTP;
//!   [`auth`]: client credentials; [`form`]: the request body; [`introspect`]: verdict to reply;
//!   [`metrics`]: Prometheus text; [`reload`]: signals; [`log`]: the log lines.

pub mod auth;
pub mod cli;
pub mod error;
pub mod form;
pub mod introspect;
pub mod log;
pub mod metrics;
pub mod reload;
pub mod scim;
pub mod server;
pub mod state;

use crate::config::Settings;
use crate::lookup::Authenticator;
use crate::scim::settings::ScimSettings;
use error::DaemonError;
use server::{App, Listener, Role, LIMITS};
use state::{DaemonConfig, Generation, ListenAddr, Shared};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Reads and checks a settings file as the daemon needs it.
pub fn load(path: &Path) -> Result<(Settings, DaemonConfig), DaemonError> {
    let settings = Settings::load(path)?;
    let config = DaemonConfig::from_settings(&settings)?;
    scim_settings(&settings)?;
    Ok((settings, config))
}

/// The SCIM service's settings, when `scim_listen` asks for one.
pub fn scim_settings(settings: &Settings) -> Result<Option<ScimSettings>, DaemonError> {
    settings.scim.resolve().map_err(|(key, reason)| DaemonError::BadKey { path: settings.path.clone(), key, reason })
}

/// `-t`: checks the settings file (and that an engine can be built from it) without listening.
pub fn test(path: &Path) -> ExitCode {
    let checked = load(path).and_then(|(settings, config)| {
        let notes: Vec<String> = settings.warnings.iter().chain(&config.warnings).cloned().collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DaemonError::Start(format!("runtime: {e}")))?;
        let _guard = rt.enter();
        Authenticator::new(settings.clone())?;
        let scim = match scim_settings(&settings)? {
            Some(s) => {
                if let Some((cert, key)) = &s.tls {
                    scim::tls_acceptor(cert, key).map_err(DaemonError::Start)?;
                }
                format!(", SCIM on {}://{}{}", if s.tls.is_some() { "https" } else { "http" }, s.listen, scim::PREFIX)
            }
            None => String::new(),
        };
        Ok((config, notes, scim))
    });
    match checked {
        Ok((config, notes, scim)) => {
            for n in notes {
                log::warning(&n);
            }
            let metrics = config.metrics_listen.map_or(String::new(), |m| format!(", metrics on {m}"));
            log::info(&format!("{} is usable: would listen on {}{metrics}{scim}", path.display(), config.listen));
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error(&e.to_string());
            ExitCode::from(2)
        }
    }
}

/// `--scim-status`: what SCIM provisioned, read from the state file (without its lock, so it works
/// beside a running daemon: the file is only ever replaced whole) and checked against the files.
pub fn scim_status(path: &Path) -> ExitCode {
    let shown = || -> Result<(String, bool), DaemonError> {
        let settings = Settings::load(path)?;
        let scim = scim_settings(&settings)?.ok_or_else(|| DaemonError::MissingKey {
            path: path.to_owned(),
            key: "scim_listen",
            why: "there is no SCIM service in this settings file",
        })?;
        let state = crate::scim::store::Store::read(&scim.state_file).map_err(|e| DaemonError::Start(e.to_string()))?;
        let backend = crate::scim::service::backend_for(&scim.backend);
        let rules = crate::scim::service::Rules::from(&scim);
        let lines = crate::scim::service::status_lines(&state, &rules, backend.as_ref());
        Ok(crate::scim::service::status_table(&lines, &scim.state_file, backend.as_ref()))
    };
    match shown() {
        Ok((table, all_in_place)) => {
            print!("{table}");
            if all_in_place {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            log::error(&e.to_string());
            ExitCode::from(2)
        }
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT. Exit codes: 0 after a stop signal,
/// 2 when it cannot start (settings, listen address).
pub fn run(path: &Path) -> ExitCode {
    std::panic::set_hook(Box::new(|info| log::error(&format!("internal error (panic): {info}"))));
    let (settings, config) = match load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            log::error(&format!("cannot start: {e}"));
            return ExitCode::from(2);
        }
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(16)
        .thread_name("oauth2d")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error(&format!("cannot start the runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(serve(path, settings, config));
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

fn bind(addr: &ListenAddr, key: &'static str) -> Result<Listener, DaemonError> {
    let failed = |e: std::io::Error| DaemonError::Listen { address: addr.to_string(), key, reason: e.to_string() };
    match addr {
        ListenAddr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(failed)?;
            l.set_nonblocking(true).map_err(failed)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(failed)?))
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path).map_err(failed)?;
            let l = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
            // Like a loopback port: any local user may connect, and the credentials decide. Dovecot's
            // auth process (user dovecot) must be able to.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
            l.set_nonblocking(true).map_err(failed)?;
            Ok(Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(failed)?, path.clone()))
        }
    }
}

/// A socket file left by a daemon that did not stop cleanly is removed; one a process still listens
/// on, or a file that is not a socket, is an error (never deleted).
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if !meta.file_type().is_socket() => {
            Err(Error::new(ErrorKind::AlreadyExists, "the path exists and is not a socket"))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(Error::new(ErrorKind::AddrInUse, "another process is listening on this socket")),
            Err(_) => std::fs::remove_file(path),
        },
    }
}

/// Removes the socket files of unix listeners (after they stopped accepting).
fn remove_sockets(config: &DaemonConfig) {
    for addr in std::iter::once(&config.listen).chain(&config.metrics_listen) {
        if let ListenAddr::Unix(path) = addr {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

async fn serve(path: &Path, settings: Settings, config: DaemonConfig) -> ExitCode {
    let mut signals = match reload::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error(&format!("cannot start: signal handlers: {e}"));
            return ExitCode::from(2);
        }
    };
    for w in settings.warnings.iter().chain(&config.warnings) {
        log::warning(w);
    }
    let listeners = bind(&config.listen, "listen")
        .and_then(|main| Ok((main, config.metrics_listen.as_ref().map(|m| bind(m, "metrics_listen")).transpose()?)));
    let (main, metrics) = match listeners {
        Ok(l) => l,
        Err(e) => {
            log::error(&format!("cannot start: {e}"));
            return ExitCode::from(2);
        }
    };
    let auth = match Authenticator::new(settings) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            log::error(&format!("cannot start: {e}"));
            return ExitCode::from(2);
        }
    };
    let scim = match start_scim(&auth) {
        Ok(s) => s,
        Err(e) => {
            log::error(&format!("cannot start: {e}"));
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(Shared::new(path.to_owned(), Generation { auth, config }));
    let app = Arc::new(App::new(shared.clone(), LIMITS));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut where_ = format!("listening on {} (POST /introspect, GET /health", main.shown());
    match &metrics {
        Some(m) => where_.push_str(&format!("), metrics on {} (GET /metrics, GET /health)", m.shown())),
        None => where_.push_str(", GET /metrics)"),
    }
    let role = Role::Main { metrics: metrics.is_none() };
    let mut loops = vec![tokio::spawn(server::accept_loop(app.clone(), role, main, stopped.clone()))];
    if let Some(m) = metrics {
        loops.push(tokio::spawn(server::accept_loop(app.clone(), Role::Metrics, m, stopped.clone())));
    }
    if let Some((app, listener)) = scim {
        let at = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        where_.push_str(&format!(", SCIM on {}://{at}{} (bearer token)", app.scheme(), scim::PREFIX));
        loops.push(tokio::spawn(scim::accept_loop(Arc::new(app), listener, stopped.clone())));
    }
    let settings = shared.current().auth.settings().clone();
    log::info(&format!("{where_}; settings {}; provider {}", path.display(), describe_provider(&settings)));
    let why = signals.until_stop(&shared).await;
    let grace = server::stop_grace(shared.current().auth.settings());
    log::info(&format!("{why}: stopping; requests in flight get up to {:.1} s", grace.as_secs_f64()));
    let _ = stop.send(true);
    for l in loops {
        let _ = l.await;
    }
    remove_sockets(&shared.current().config);
    let drained = tokio::time::timeout(grace, async {
        let _all = app.connections.acquire_many(LIMITS.max_connections as u32).await;
        let _all = app.in_flight.acquire_many(LIMITS.max_in_flight as u32).await;
    })
    .await;
    match drained {
        Ok(()) => log::info("stopped"),
        Err(_) => log::warning(&format!(
            "stopped with {} connections still open after {:.1} s",
            LIMITS.max_connections - app.connections.available_permits(),
            grace.as_secs_f64()
        )),
    }
    ExitCode::SUCCESS
}

/// Opens the SCIM service (its store, a reconciliation of the files) and binds its listener.
fn start_scim(auth: &Authenticator) -> Result<Option<(scim::ScimApp, tokio::net::TcpListener)>, DaemonError> {
    let Some(settings) = scim_settings(auth.settings())? else { return Ok(None) };
    let (service, notes) = crate::scim::service::Service::open(&settings, crate::clock::Clock::system())
        .map_err(|e| DaemonError::Start(format!("SCIM: {e}")))?;
    for n in notes {
        log::warning(&format!("scim: at start: {n}"));
    }
    let app = scim::ScimApp::new(&settings, Arc::new(service)).map_err(DaemonError::Start)?;
    let failed = |e: std::io::Error| DaemonError::Listen {
        address: settings.listen.to_string(),
        key: "scim_listen",
        reason: e.to_string(),
    };
    let l = std::net::TcpListener::bind(settings.listen).map_err(failed)?;
    l.set_nonblocking(true).map_err(failed)?;
    Ok(Some((app, tokio::net::TcpListener::from_std(l).map_err(failed)?)))
}

/// The provider side in a few words for the startup line (URLs without credentials or query).
fn describe_provider(s: &Settings) -> String {
    use crate::config::IntrospectionMode;
    use crate::http::redact_url;
    let mode = match s.introspection_mode {
        IntrospectionMode::Auth => "userinfo (introspection_mode = auth)",
        IntrospectionMode::Get => "introspection_mode = get",
        IntrospectionMode::Post => "RFC 7662 (introspection_mode = post)",
        IntrospectionMode::Local => "local JWT validation (introspection_mode = local)",
    };
    let urls: Vec<String> = s
        .tokeninfo_url
        .iter()
        .chain(&s.introspection_url)
        .chain(&s.openid_configuration_url)
        .chain(s.jwks_url.iter().map(|j| &j.url))
        .map(|u| redact_url(u))
        .collect();
    format!("{mode} at {}", urls.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("o2d-mod-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_stale_socket_is_removed_and_a_live_one_or_a_plain_file_is_not() {
        let d = scratch("stale");
        let stale = d.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(remove_stale_socket(&stale).is_ok());
        assert!(!stale.exists());
        let live = d.join("live.sock");
        let _listening = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert_eq!(remove_stale_socket(&live).unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
        let file = d.join("file");
        std::fs::write(&file, "keep me").unwrap();
        assert!(remove_stale_socket(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        assert!(remove_stale_socket(&d.join("none.sock")).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_unix_listener_is_reachable_by_other_users() {
        let d = scratch("mode");
        let path = d.join("o2.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let listener = bind(&ListenAddr::Unix(path.clone()), "listen").unwrap();
        assert_eq!(listener.shown(), format!("unix:{}", path.display()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
        drop(listener);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
