//! Why the daemon cannot start, or cannot apply a reloaded settings file.

use crate::errors::ConfigError;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DaemonError {
    #[error("{0}")]
    Settings(#[from] ConfigError),
    #[error("settings file {path}: {key} is required by dovecot-oauth2d ({why})")]
    MissingKey { path: PathBuf, key: &'static str, why: &'static str },
    #[error("settings file {path}: {key}: {reason}")]
    BadKey { path: PathBuf, key: &'static str, reason: String },
    #[error("cannot listen on {address} ({key}): {reason}")]
    Listen { address: String, key: &'static str, reason: String },
    #[error("cannot start: {0}")]
    Start(String),
}
