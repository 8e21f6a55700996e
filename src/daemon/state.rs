//! What the daemon runs with: the listener keys read from the settings file, and the engine. A reload
//! replaces them whole ([`Shared::replace`]); a request keeps the generation it started with.

use super::auth::Credentials;
use super::error::DaemonError;
use super::metrics::{self, Counters};
use crate::config::Settings;
use crate::lookup::Authenticator;
use crate::stats::Snapshot;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The shortest `listen_client_secret` accepted without a warning.
const SHORT_SECRET_CHARS: usize = 16;

/// Where a listener is: a TCP address, or a unix socket (Dovecot 2.4 reaches one through
/// `http_client_proxy_socket_path` in its `oauth2 {}` block; Dovecot 2.3 cannot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The longest unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The daemon's keys of a settings file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub listen: ListenAddr,
    pub metrics_listen: Option<ListenAddr>,
    pub credentials: Credentials,
    /// Notes for the admin, logged when the file is loaded.
    pub warnings: Vec<String>,
}

impl DaemonConfig {
    pub fn from_settings(s: &Settings) -> Result<DaemonConfig, DaemonError> {
        let path = s.path.clone();
        let why_id = "the user name of introspection_url in Dovecot's oauth2 settings: http://ID:SECRET@127.0.0.1:7662/introspect";
        let why_secret =
            "the password of introspection_url in Dovecot's oauth2 settings (`<file` reads it from a file)";
        let id = s.listen.client_id.as_deref().ok_or_else(|| DaemonError::MissingKey {
            path: path.clone(),
            key: "listen_client_id",
            why: why_id,
        })?;
        let secret = s.listen.client_secret.as_deref().ok_or_else(|| DaemonError::MissingKey {
            path: path.clone(),
            key: "listen_client_secret",
            why: why_secret,
        })?;
        if id.contains(':') {
            return Err(DaemonError::BadKey {
                path,
                key: "listen_client_id",
                reason: "must not contain ':' (HTTP Basic cannot carry it in the user name)".into(),
            });
        }
        let listen = parse_listen(&s.listen.address).map_err(|reason| DaemonError::BadKey {
            path: path.clone(),
            key: "listen",
            reason,
        })?;
        let metrics_listen = match &s.listen.metrics_address {
            Some(a) => Some(parse_listen(a).map_err(|reason| DaemonError::BadKey {
                path: path.clone(),
                key: "metrics_listen",
                reason,
            })?),
            None => None,
        };
        let same_port = |a: &ListenAddr| match a {
            ListenAddr::Tcp(a) => a.port() != 0,
            ListenAddr::Unix(_) => true,
        };
        if metrics_listen.as_ref().is_some_and(|m| *m == listen && same_port(m)) {
            return Err(DaemonError::BadKey {
                path,
                key: "metrics_listen",
                reason: "is the same address as listen (leave metrics_listen unset to serve /metrics there)".into(),
            });
        }
        let mut warnings = Vec::new();
        if secret.chars().count() < SHORT_SECRET_CHARS {
            warnings.push(format!(
                "{}: listen_client_secret is shorter than {SHORT_SECRET_CHARS} characters; use a long random one",
                path.display()
            ));
        }
        for (key, addr) in [("listen", Some(&listen)), ("metrics_listen", metrics_listen.as_ref())] {
            if let Some(ListenAddr::Tcp(addr)) =
                addr.filter(|a| matches!(a, ListenAddr::Tcp(t) if !t.ip().is_loopback()))
            {
                warnings.push(format!(
                    "{}: {key} = {addr} is not a loopback address: requests and credentials travel unencrypted \
                     (plain HTTP); keep it on loopback or a private network",
                    path.display()
                ));
            }
        }
        Ok(DaemonConfig { listen, metrics_listen, credentials: Credentials::new(id, secret), warnings })
    }
}

/// `IP:PORT` (`[::1]:7662` for IPv6; port 0 picks a free port, which the startup line names), or
/// `unix:/absolute/path`.
pub fn parse_listen(value: &str) -> Result<ListenAddr, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(format!(
                "'{value}': the socket path must be absolute (unix:/run/dovecot-oauth2d/introspect.sock)"
            ));
        }
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!("'{value}': a socket path is at most {MAX_SOCKET_PATH} bytes"));
        }
        return Ok(ListenAddr::Unix(path.to_owned()));
    }
    value.parse().map(ListenAddr::Tcp).map_err(|_| {
        format!("'{value}' is not IP:PORT or unix:/path (for example 127.0.0.1:7662, [::1]:7662, unix:/run/o2.sock)")
    })
}

/// The engine and the checked listener keys of one settings file.
pub struct Generation {
    pub auth: Arc<Authenticator>,
    pub config: DaemonConfig,
}

/// What every connection shares.
pub struct Shared {
    pub path: PathBuf,
    current: RwLock<Arc<Generation>>,
    /// The counters of engines replaced by reloads, so that metrics never go backwards.
    carried: Mutex<Snapshot>,
    pub counters: Counters,
}

impl Shared {
    pub fn new(path: PathBuf, first: Generation) -> Shared {
        Shared {
            path,
            current: RwLock::new(Arc::new(first)),
            carried: Mutex::new(Snapshot::default()),
            counters: Counters::default(),
        }
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `next` in use; a replaced engine's counters are carried over.
    pub fn replace(&self, next: Generation) {
        let old = std::mem::replace(&mut *self.current.write().unwrap_or_else(|p| p.into_inner()), Arc::new(next));
        if !Arc::ptr_eq(&old.auth, &self.current().auth) {
            self.carried.lock().unwrap_or_else(|p| p.into_inner()).add(&old.auth.stats());
        }
    }

    /// Every verdict counted since the start, across reloads.
    pub fn stats(&self) -> Snapshot {
        let mut total = self.carried.lock().unwrap_or_else(|p| p.into_inner()).clone();
        total.add(&self.current().auth.stats());
        total
    }

    pub fn metrics(&self) -> String {
        let current = self.current();
        let stats = self.stats();
        let breakers = current.auth.breaker_view();
        metrics::render(&metrics::View {
            stats: &stats,
            breakers: &breakers,
            cache_entries: current.auth.cache().entry_count(),
            counters: &self.counters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings(extra: &str) -> Settings {
        Settings::parse(Path::new("/etc/d.conf"), &format!("introspection_url = http://idp/u\n{extra}")).unwrap()
    }

    const CREDS: &str = "listen_client_id = dovecot\nlisten_client_secret = a-long-enough-secret\n";

    #[test]
    fn without_listen_client_id_or_secret_the_daemon_refuses_naming_the_key() {
        let e = DaemonConfig::from_settings(&settings("")).unwrap_err();
        assert!(matches!(e, DaemonError::MissingKey { key: "listen_client_id", .. }), "{e}");
        assert!(e.to_string().contains("/etc/d.conf: listen_client_id is required"), "{e}");
        let e = DaemonConfig::from_settings(&settings("listen_client_id = dovecot\n")).unwrap_err();
        assert!(matches!(e, DaemonError::MissingKey { key: "listen_client_secret", .. }), "{e}");
    }

    #[test]
    fn listen_defaults_to_loopback_port_7662() {
        let c = DaemonConfig::from_settings(&settings(CREDS)).unwrap();
        assert_eq!(c.listen, ListenAddr::Tcp("127.0.0.1:7662".parse().unwrap()));
        assert_eq!(c.metrics_listen, None);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn listen_and_metrics_listen_take_ip_and_port() {
        let c = DaemonConfig::from_settings(&settings(&format!(
            "{CREDS}listen = [::1]:8000\nmetrics_listen = 127.0.0.1:9100\n"
        )))
        .unwrap();
        assert_eq!(
            (c.listen, c.metrics_listen),
            (ListenAddr::Tcp("[::1]:8000".parse().unwrap()), Some(ListenAddr::Tcp("127.0.0.1:9100".parse().unwrap())))
        );
    }

    #[test]
    fn a_listen_address_that_is_not_ip_and_port_is_refused_naming_the_key() {
        let e = DaemonConfig::from_settings(&settings(&format!("{CREDS}listen = localhost\n"))).unwrap_err();
        assert!(matches!(e, DaemonError::BadKey { key: "listen", .. }), "{e}");
        let e = DaemonConfig::from_settings(&settings(&format!("{CREDS}metrics_listen = 1.2.3.4\n"))).unwrap_err();
        assert!(matches!(e, DaemonError::BadKey { key: "metrics_listen", .. }), "{e}");
    }

    #[test]
    fn listen_takes_an_absolute_unix_socket_path() {
        let c =
            DaemonConfig::from_settings(&settings(&format!("{CREDS}listen = unix:/run/o2/introspect.sock\n"))).unwrap();
        assert_eq!(c.listen, ListenAddr::Unix("/run/o2/introspect.sock".into()));
        assert_eq!(c.listen.to_string(), "unix:/run/o2/introspect.sock");
        for bad in ["unix:relative.sock".to_string(), format!("unix:/{}", "x".repeat(120))] {
            let e = DaemonConfig::from_settings(&settings(&format!("{CREDS}listen = {bad}\n"))).unwrap_err();
            assert!(matches!(e, DaemonError::BadKey { key: "listen", .. }), "{e}");
        }
    }

    #[test]
    fn metrics_listen_on_the_listen_address_is_refused() {
        let e =
            DaemonConfig::from_settings(&settings(&format!("{CREDS}metrics_listen = 127.0.0.1:7662\n"))).unwrap_err();
        assert!(matches!(e, DaemonError::BadKey { key: "metrics_listen", .. }), "{e}");
    }

    #[test]
    fn a_client_id_with_a_colon_is_refused() {
        let e =
            DaemonConfig::from_settings(&settings("listen_client_id = a:b\nlisten_client_secret = x\n")).unwrap_err();
        assert!(matches!(e, DaemonError::BadKey { key: "listen_client_id", .. }), "{e}");
    }

    #[test]
    fn a_short_secret_or_a_listener_off_loopback_gets_a_warning() {
        let c = DaemonConfig::from_settings(&settings(
            "listen_client_id = d\nlisten_client_secret = short\nlisten = 0.0.0.0:7662\n",
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("shorter than 16")));
        assert!(c.warnings.iter().any(|w| w.contains("listen = 0.0.0.0:7662 is not a loopback address")));
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("o2d-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), "from-a-file-secret-value\n").unwrap();
        let s = Settings::parse(
            &dir.join("d.conf"),
            "introspection_url = http://idp/u\nlisten_client_id = dovecot\nlisten_client_secret = <secret\n",
        )
        .unwrap();
        let c = DaemonConfig::from_settings(&s).unwrap();
        assert_eq!(c.credentials, Credentials::new("dovecot", "from-a-file-secret-value"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counters_survive_replacing_the_engine() {
        let s = settings(CREDS);
        let generation = |s: &Settings| Generation {
            auth: Arc::new(Authenticator::new(s.clone()).unwrap()),
            config: DaemonConfig::from_settings(s).unwrap(),
        };
        let shared = Shared::new(PathBuf::from("/etc/d.conf"), generation(&s));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(shared.current().auth.introspect(b"bad token"));
        assert_eq!(shared.stats().rejected, 1);
        shared.replace(generation(&s));
        rt.block_on(shared.current().auth.introspect(b"bad token"));
        assert_eq!(shared.stats().rejected, 2);
        let same = Generation { auth: shared.current().auth.clone(), config: DaemonConfig::from_settings(&s).unwrap() };
        shared.replace(same);
        assert_eq!(shared.stats().rejected, 2, "a kept engine is not counted twice");
    }
}
