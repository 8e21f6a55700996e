//! Signals: SIGHUP rereads the settings file (a broken one keeps the running settings, and says why);
//! SIGTERM and SIGINT stop the daemon.
//!
//! A reload that changes nothing but `listen_client_id` / `listen_client_secret` keeps the engine and
//! its cache (a provider outage is a bad time to forget every verdict); any other change builds a new
//! engine, whose cache starts empty, since cached verdicts were reached under the old rules.
//! `listen` and `metrics_listen` are bound once: changing them needs a restart.

use super::error::DaemonError;
use super::log;
use super::state::{DaemonConfig, Generation, ListenAddr, Shared};
use crate::config::Settings;
use crate::lookup::Authenticator;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a successful reload changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The same settings: nothing to do.
    Unchanged,
    /// Only the client credentials: the engine and its cache are kept.
    Credentials,
    /// New engine settings: a new engine, its cache empty.
    Engine,
}

/// Reads the settings file again and puts it in use, or says why not (the running settings stay).
pub fn reload(shared: &Shared) -> Result<(Reloaded, Vec<String>), DaemonError> {
    let settings = Settings::load(&shared.path)?;
    let config = DaemonConfig::from_settings(&settings)?;
    let current = shared.current();
    let mut notes: Vec<String> = settings.warnings.iter().chain(&config.warnings).cloned().collect();
    let mut config = config;
    for (key, now, asked) in [
        ("listen", Some(&current.config.listen), Some(&config.listen)),
        ("metrics_listen", current.config.metrics_listen.as_ref(), config.metrics_listen.as_ref()),
    ] {
        if now != asked {
            let show = |a: Option<&ListenAddr>| a.map_or("(none)".to_string(), |a| a.to_string());
            notes.push(format!(
                "{key} changed to {} in {}: restart dovecot-oauth2d to apply it; still listening on {}",
                show(asked),
                shared.path.display(),
                show(now)
            ));
        }
    }
    if current.auth.settings().scim != settings.scim {
        notes.push(format!(
            "scim_* settings changed in {}: restart dovecot-oauth2d to apply them; the SCIM service keeps the ones it started with",
            shared.path.display()
        ));
    }
    // What is bound stays what the config says, so a later reload compares with it.
    config.listen = current.config.listen.clone();
    config.metrics_listen = current.config.metrics_listen.clone();
    let same_engine = same_engine_settings(current.auth.settings(), &settings);
    let what = match (same_engine, current.config.credentials == config.credentials) {
        (true, true) => Reloaded::Unchanged,
        (true, false) => Reloaded::Credentials,
        (false, _) => Reloaded::Engine,
    };
    let auth = if same_engine { current.auth.clone() } else { Arc::new(Authenticator::new(settings)?) };
    shared.replace(Generation { auth, config });
    Ok((what, notes))
}

/// Whether two settings ask the engine for the same thing (everything but the daemon's own keys).
fn same_engine_settings(a: &Settings, b: &Settings) -> bool {
    let strip = |s: &Settings| Settings {
        listen: Default::default(),
        scim: Default::default(),
        warnings: Vec::new(),
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Logs a reload's result and counts it.
pub fn reload_and_log(shared: &Shared) {
    match reload(shared) {
        Ok((what, notes)) => {
            shared.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
            for n in notes {
                log::warning(&n);
            }
            let said = match what {
                Reloaded::Unchanged => "nothing changed",
                Reloaded::Credentials => "new client credentials in use; cache kept",
                Reloaded::Engine => "new settings in use; cache emptied",
            };
            log::info(&format!("reloaded {}: {said}", shared.path.display()));
        }
        Err(e) => {
            shared.counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
            log::error(&format!("reload failed, still running with the previous settings: {e}"));
        }
    }
}

/// The signals the daemon acts on, installed before it listens so none is missed.
pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Serves SIGHUP reloads until SIGTERM or SIGINT; returns which one came.
    pub async fn until_stop(&mut self, shared: &Arc<Shared>) -> &'static str {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    // File reads and a new HTTP client: off the runtime's worker threads.
                    let shared = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || reload_and_log(&shared)).await;
                }
                _ = self.terminate.recv() => return "SIGTERM",
                _ = self.interrupt.recv() => return "SIGINT",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("o2d-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    const BASE: &str = "introspection_url = http://127.0.0.1:9/u\nlisten_client_id = dovecot\n";

    fn start(path: &Path, text: &str) -> Shared {
        std::fs::write(path, text).unwrap();
        let s = Settings::load(path).unwrap();
        let config = DaemonConfig::from_settings(&s).unwrap();
        Shared::new(path.to_owned(), Generation { auth: Arc::new(Authenticator::new(s).unwrap()), config })
    }

    #[test]
    fn a_broken_file_keeps_the_running_settings_and_says_why() {
        let d = dir("broken");
        let path = d.0.join("d.conf");
        let shared = start(&path, &format!("{BASE}listen_client_secret = one-long-secret-value\n"));
        let before = shared.current();
        std::fs::write(&path, "introspection_url = http://127.0.0.1:9/u\nbogus_key = 1\n").unwrap();
        let e = reload(&shared).unwrap_err();
        assert!(e.to_string().contains("unknown key 'bogus_key'"), "{e}");
        assert!(Arc::ptr_eq(&before, &shared.current()));
    }

    #[test]
    fn a_file_without_the_daemons_keys_keeps_the_running_settings() {
        let d = dir("nokeys");
        let path = d.0.join("d.conf");
        let shared = start(&path, &format!("{BASE}listen_client_secret = one-long-secret-value\n"));
        std::fs::write(&path, "introspection_url = http://127.0.0.1:9/u\n").unwrap();
        let e = reload(&shared).unwrap_err();
        assert!(matches!(e, DaemonError::MissingKey { key: "listen_client_id", .. }), "{e}");
    }

    #[test]
    fn new_credentials_apply_and_keep_the_engine() {
        let d = dir("creds");
        let path = d.0.join("d.conf");
        let shared = start(&path, &format!("{BASE}listen_client_secret = one-long-secret-value\n"));
        let before = shared.current();
        std::fs::write(&path, format!("{BASE}listen_client_secret = another-long-secret\n")).unwrap();
        assert_eq!(reload(&shared).unwrap().0, Reloaded::Credentials);
        let now = shared.current();
        assert!(Arc::ptr_eq(&before.auth, &now.auth), "cache kept");
        let header =
            |s: &str| format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s));
        assert!(now.config.credentials.check(Some(header("dovecot:another-long-secret").as_bytes())).is_ok());
        assert!(now.config.credentials.check(Some(header("dovecot:one-long-secret-value").as_bytes())).is_err());
    }

    #[test]
    fn new_engine_settings_build_a_new_engine() {
        let d = dir("engine");
        let path = d.0.join("d.conf");
        let shared = start(&path, &format!("{BASE}listen_client_secret = one-long-secret-value\n"));
        let before = shared.current();
        std::fs::write(&path, format!("{BASE}listen_client_secret = one-long-secret-value\nscope = mail\n")).unwrap();
        assert_eq!(reload(&shared).unwrap().0, Reloaded::Engine);
        assert!(!Arc::ptr_eq(&before.auth, &shared.current().auth));
        assert_eq!(shared.current().auth.settings().scope, vec!["mail"]);
        assert_eq!(reload(&shared).unwrap().0, Reloaded::Unchanged);
    }

    #[test]
    fn a_new_listen_address_is_noted_and_not_applied() {
        let d = dir("listen");
        let path = d.0.join("d.conf");
        let shared = start(&path, &format!("{BASE}listen_client_secret = one-long-secret-value\n"));
        std::fs::write(&path, format!("{BASE}listen_client_secret = one-long-secret-value\nlisten = 127.0.0.1:7000\n"))
            .unwrap();
        let (what, notes) = reload(&shared).unwrap();
        assert_eq!(what, Reloaded::Unchanged);
        assert!(
            notes.iter().any(|n| n.contains("listen changed to 127.0.0.1:7000") && n.contains("restart")),
            "{notes:?}"
        );
        assert_eq!(shared.current().config.listen, ListenAddr::Tcp("127.0.0.1:7662".parse().unwrap()));
    }
}
