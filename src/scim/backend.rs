//! What a provisioned user is in the mail system, and the two mail systems it can be written to:
//! docker-mailserver's account files ([`Dms`]) or a plain Dovecot passwd-file with Postfix maps
//! ([`Plain`]). The service decides *what* each user should be ([`Account`]); a backend makes the
//! files say so, atomically and under the lock their other writers respect.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One user as the mail system holds it. Addresses are lowercase and checked ([`super::address`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account: its login name and primary mail address.
    pub address: String,
    /// Further addresses delivered to `address` (from the user's other `emails`, when enabled).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A Dovecot quota as DMS writes it (`10M`, `1G`, `0` for none), when a quota attribute is set.
    #[serde(default)]
    pub quota: Option<String>,
}

impl Account {
    /// Every address this account holds: the account itself, then its aliases.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.address.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// An address the change would add is already an account or alias in the files that this user
    /// does not hold (made by the admin, or by another user).
    #[error("{0} is already an account or alias")]
    Taken(String),
    /// The lock other writers take was not released in time.
    #[error("{0}")]
    Busy(String),
    /// A file or directory could not be read or written (named, with the system's reason).
    #[error("{0}")]
    Io(String),
}

/// A mail system the service provisions into.
pub trait Backend: Send + Sync {
    /// Makes the files hold `next` for one user where they held `prev` (`None`: absent).
    /// `None -> Some`: create; `Some -> Some` with another address: rename (the mailbox moves with it);
    /// `Some -> None`: remove (the mailbox data stays unless the settings say otherwise).
    /// Idempotent: applying a change the files already reflect changes nothing, so the service can
    /// repeat it after a crash, or with `prev == next` to repair an entry lost to another writer.
    /// An address of `next` that is not in `prev` and is already in the files is [`BackendError::Taken`],
    /// checked under the lock, and nothing is written.
    fn apply(&self, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError>;

    /// Whether the files hold `account` exactly as given (for `--scim-status` and reconciliation).
    fn holds(&self, account: &Account) -> Result<bool, BackendError>;

    /// Where the files are, for the status output and log lines.
    fn describe(&self) -> String;
}

/// docker-mailserver (v15 and edge): `postfix-accounts.cf` (`address|{SSHA512}...`), `postfix-virtual.cf`
/// (`alias address`), `dovecot-quotas.cf` (`address:quota`) in DMS's config folder, written under DMS's
/// shared config lock, so its changedetector never reads a change half made; it then rebuilds Dovecot's
/// userdb and Postfix's maps itself.
#[derive(Debug, Clone)]
pub struct DmsConfig {
    /// `scim_dms_config_dir` (default `/tmp/docker-mailserver`).
    pub dir: PathBuf,
    /// `scim_mail_root` (default `/var/mail`): mailboxes are `<root>/<domain>/<local part>/`.
    pub mail_root: PathBuf,
    /// `scim_delete_mailbox` (default no): whether removing an account also removes its mailbox.
    pub delete_mailbox: bool,
}

/// A plain Dovecot and Postfix: a passwd-file (userdb and passdb), a Postfix virtual mailbox map and
/// alias map, and an optional command run after each change (for `postmap` or `postfix reload`).
#[derive(Debug, Clone)]
pub struct PlainConfig {
    /// `scim_passwd_file`: `address:{SSHA512}...:uid:gid::home::`.
    pub passwd_file: PathBuf,
    /// `scim_mailbox_map`: `address domain/local/`.
    pub mailbox_map: PathBuf,
    /// `scim_alias_map`: `alias address`.
    pub alias_map: PathBuf,
    /// `scim_uid`, `scim_gid`: the passwd-file's uid and gid fields.
    pub uid: u32,
    pub gid: u32,
    /// `scim_mail_root` (default `/var/mail`): home is `<root>/<domain>/<local part>`.
    pub mail_root: PathBuf,
    pub delete_mailbox: bool,
    /// `scim_after_change`: a command (split on white space, no shell) run after each change.
    pub after_change: Vec<String>,
}

mod common;
mod dms;
mod plain;

pub use common::{unusable_password, valid_quota};
pub use dms::{Dms, LockWait};
pub use plain::Plain;

#[cfg(test)]
mod tests;
