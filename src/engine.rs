//! The per-process engine: one current-thread Tokio runtime, one HTTP client, one cache, built on the
//! first login in an auth-worker. A current-thread runtime owns no threads: when Dovecot closes the
//! Lua state and unloads the module, nothing of ours is left running.

use crate::config::Settings;
use crate::errors::ConfigError;
use crate::lookup::{Authenticator, FirstLook, Outcome};
use crate::password::{PasswordCheck, PasswordOutcome};
use std::path::Path;

pub struct Engine {
    rt: tokio::runtime::Runtime,
    auth: Authenticator,
    password: PasswordCheck,
}

impl Engine {
    pub fn load(path: &Path) -> Result<Engine, ConfigError> {
        Engine::new(Settings::load(path)?)
    }

    pub fn new(settings: Settings) -> Result<Engine, ConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            ConfigError::Incomplete { path: settings.path.clone(), reason: format!("cannot start runtime: {e}") }
        })?;
        let password = PasswordCheck::new(&settings, crate::clock::Clock::system())?;
        let auth = {
            let _guard = rt.enter();
            Authenticator::new(settings)?
        };
        Ok(Engine { rt, auth, password })
    }

    pub fn settings(&self) -> &Settings {
        self.auth.settings()
    }

    /// Verifies one login, blocking the calling thread (an auth-worker serves one login at a time).
    /// A cache hit is answered without entering the runtime.
    pub fn verify(&self, user: &str, token: &[u8]) -> Outcome {
        match self.auth.verify_cached(user, token) {
            FirstLook::Answered(cached) => cached,
            FirstLook::Pending(pending) => self.rt.block_on(self.auth.finish(pending)),
        }
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Verifies one PLAIN/LOGIN password login (issue 12), blocking; a fresh cached verdict is answered
    /// without entering the runtime.
    pub fn verify_password(&self, user: &str, password: &[u8]) -> PasswordOutcome {
        if let Some(cached) = self.password.cached(&self.auth, user, password) {
            return cached;
        }
        self.rt.block_on(self.password.verify(&self.auth, user, password))
    }

    /// Verifies one password login and returns the steps taken (for the troubleshooting command).
    pub fn explain_password(&self, user: &str, password: &[u8]) -> (PasswordOutcome, Vec<String>) {
        self.rt.block_on(crate::trace::traced(self.password.verify(&self.auth, user, password)))
    }

    /// Verifies one login and returns the steps taken (for the troubleshooting command).
    pub fn explain(&self, user: &str, token: &[u8]) -> (Outcome, Vec<String>) {
        self.rt.block_on(crate::trace::traced(self.auth.verify(user, token)))
    }
}
