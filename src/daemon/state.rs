//! What the daemon runs with: the listener keys read from the settings file, and the engine. A reload
//! replaces them whole ([`Shared::replace`]); a request keeps the generation it started with.

use super::auth::Credentials;
use super::error::DaemonError;
use super::metrics::{self, Counters};
use crate::config::Settings;
use crate::lookup::Authenticator;
use crate::stats::Snapshot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// The shortest `listen_client_secret` accepted without a warning.
const SHORT_SECRET_CHARS: usize = 16;

/// The daemon's keys of a settings file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
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
        if metrics_listen.is_some_and(|m| m == listen && listen.port() != 0) {
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
        for (key, addr) in [("listen", Some(listen)), ("metrics_listen", metrics_listen)] {
            if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
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

/// `IP:PORT` (`[::1]:7662` for IPv6). Port 0 picks a free port (the startup line names it; for tests).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if value.starts_with("unix:") {
        return Err(format!(
            "'{value}': unix sockets are not served: Dovecot's oauth2 client connects to introspection_url over \
             TCP; use IP:PORT such as 127.0.0.1:7662"
        ));
    }
    value.parse().map_err(|_| format!("'{value}' is not IP:PORT (for example 127.0.0.1:7662 or [::1]:7662)"))
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
        assert_eq!(c.listen, "127.0.0.1:7662".parse().unwrap());
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
            ("[::1]:8000".parse().unwrap(), Some("127.0.0.1:9100".parse().unwrap()))
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
    fn a_unix_socket_is_refused_with_the_reason() {
        let e = DaemonConfig::from_settings(&settings(&format!("{CREDS}listen = unix:/run/o2.sock\n"))).unwrap_err();
        assert!(e.to_string().contains("over TCP"), "{e}");
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
