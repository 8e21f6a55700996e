//! docker-mailserver: its account files, written under the lock its changedetector takes.

use super::common::{self, unusable_password, Layout};
use super::{Account, Backend, BackendError, DmsConfig};
use crate::clock::Clock;
use crate::escape::shown_reason;
use crate::scim::files::{self, Delim};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The lock file DMS's changedetector (`check-for-changes.sh` with `helpers/lock.sh`) creates in the
/// config folder while it rebuilds Dovecot and Postfix from the files, and waits on while it exists.
pub const LOCK_NAME: &str = "check-for-changes.sh.lock";
/// A lock older than this is left from a crash: DMS removes it (`find -mmin +1`), and so do we.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How long a change waits for the changedetector before it is Busy (the identity provider retries).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often the lock is looked at while waiting.
pub const POLL: Duration = Duration::from_millis(200);

/// How a change waits for DMS's lock: the clock it measures with and how it sleeps, so a test moves
/// time instead of waiting.
#[derive(Clone)]
pub struct LockWait {
    pub clock: Clock,
    pub sleep: Arc<dyn Fn(Duration) + Send + Sync>,
    /// Busy after this long.
    pub bound: Duration,
}

impl LockWait {
    pub fn system() -> LockWait {
        LockWait { clock: Clock::system(), sleep: Arc::new(std::thread::sleep), bound: DEFAULT_LOCK_WAIT }
    }
}

pub struct Dms {
    c: DmsConfig,
    wait: LockWait,
    /// One change at a time from this process (the lock file would serialise them too, by polling).
    serial: Mutex<()>,
}

impl std::fmt::Debug for Dms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dms").field("config", &self.c).finish()
    }
}

impl Dms {
    pub fn new(c: DmsConfig) -> Dms {
        Dms::with_wait(c, LockWait::system())
    }

    pub fn with_wait(c: DmsConfig, wait: LockWait) -> Dms {
        Dms { c, wait, serial: Mutex::new(()) }
    }

    pub fn accounts_file(&self) -> PathBuf {
        self.c.dir.join("postfix-accounts.cf")
    }
    pub fn virtual_file(&self) -> PathBuf {
        self.c.dir.join("postfix-virtual.cf")
    }
    pub fn quotas_file(&self) -> PathBuf {
        self.c.dir.join("dovecot-quotas.cf")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.c.dir.join(LOCK_NAME)
    }
}

struct Files {
    accounts: PathBuf,
    aliases: PathBuf,
    quotas: PathBuf,
    mail_root: PathBuf,
    delete_mailbox: bool,
}

impl Dms {
    fn files(&self) -> Files {
        Files {
            accounts: self.accounts_file(),
            aliases: self.virtual_file(),
            quotas: self.quotas_file(),
            mail_root: self.c.mail_root.clone(),
            delete_mailbox: self.c.delete_mailbox,
        }
    }
}

impl Layout for Files {
    fn accounts(&self) -> (&Path, Delim) {
        (&self.accounts, Delim::Pipe)
    }
    fn aliases(&self) -> &Path {
        &self.aliases
    }
    fn quotas(&self) -> Option<&Path> {
        Some(&self.quotas)
    }
    fn mailbox_map(&self) -> Option<&Path> {
        None
    }
    fn mail_root(&self) -> &Path {
        &self.mail_root
    }
    fn delete_mailbox(&self) -> bool {
        self.delete_mailbox
    }
    /// `address|hash[|user attributes]`, as `helpers/accounts.sh` reads it (`IFS='|' read LOGIN PASS
    /// USER_ATTRIBUTES`): a rename keeps the hash and the attributes.
    fn account_line(&self, address: &str, old: Option<&str>) -> Result<String, BackendError> {
        Ok(match old.and_then(|o| o.split_once('|')) {
            Some((_, rest)) => format!("{address}|{rest}"),
            None => format!("{address}|{}", unusable_password()),
        })
    }
    fn account_line_ok(&self, _address: &str, line: &str) -> bool {
        line.split('|').nth(1).is_some_and(|h| !h.is_empty())
    }
}

/// DMS's config lock, held by this process: removed when dropped, if it is still ours.
pub(super) struct ConfigLock {
    path: PathBuf,
    id: String,
}

impl Drop for ConfigLock {
    fn drop(&mut self) {
        let mut content = String::new();
        let ours = fs::File::open(&self.path)
            .and_then(|f| f.take(4096).read_to_string(&mut content))
            .is_ok_and(|_| content.trim() == self.id);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn lock_io(path: &Path, e: &io::Error) -> BackendError {
    BackendError::Io(format!("cannot create {}: {e}", shown_reason(&path.display().to_string())))
}

/// Takes DMS's config lock: creates the file (only if absent) with our id inside, as `_create_lock`
/// writes its uuid; waits while another holds it, removing one older than [`STALE_AFTER`] as DMS does.
/// How the lock files this daemon writes begin: `dovecot-oauth2d-<pid>-<random>`.
const LOCK_OWNER: &str = "dovecot-oauth2d-";

/// Whether a lock file was left by a dovecot-oauth2d that is gone (killed while it held the lock):
/// its process no longer exists, or that pid is now another program. Then nobody will remove it, and
/// waiting a minute for it to turn stale would hold up the daemon's start (which finishes the killed
/// daemon's change under this lock). DMS's own lock files (a uuid) are left to the age rule.
fn left_by_a_dead_daemon(held: &str) -> bool {
    let Some(pid) = held.trim().strip_prefix(LOCK_OWNER).and_then(|r| r.split('-').next()) else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    if pid == std::process::id() || !Path::new("/proc/self").exists() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim_end() != "dovecot-oauth2d",
        Err(_) => true,
    }
}

pub(super) fn take_lock(path: &Path, wait: &LockWait) -> Result<ConfigLock, BackendError> {
    let id = format!("{LOCK_OWNER}{}-{}", std::process::id(), files::random_hex(16));
    let start = wait.clock.now();
    loop {
        match OpenOptions::new().write(true).create_new(true).mode(0o644).open(path) {
            Ok(mut f) => {
                let lock = ConfigLock { path: path.to_path_buf(), id };
                f.write_all(format!("{}\n", lock.id).as_bytes()).map_err(|e| lock_io(path, &e))?;
                return Ok(lock);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(lock_io(path, &e)),
        }
        if fs::read_to_string(path).is_ok_and(|held| left_by_a_dead_daemon(&held)) {
            let _ = fs::remove_file(path);
            continue;
        }
        match fs::metadata(path).and_then(|m| m.modified()) {
            Ok(modified) => {
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(wait.clock.unix());
                if now.duration_since(modified).is_ok_and(|age| age > STALE_AFTER) {
                    let _ = fs::remove_file(path);
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(lock_io(path, &e)),
        }
        if wait.clock.since(start) >= wait.bound {
            return Err(BackendError::Busy(format!(
                "{} is held by docker-mailserver's changedetector for more than {}s",
                shown_reason(&path.display().to_string()),
                wait.bound.as_secs()
            )));
        }
        (wait.sleep)(POLL);
    }
}

impl Backend for Dms {
    fn apply(&self, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = take_lock(&self.lock_file(), &self.wait)?;
        common::apply(&self.files(), prev, next).map(|_| ())
    }

    fn holds(&self, account: &Account) -> Result<bool, BackendError> {
        common::holds(&self.files(), account)
    }

    fn describe(&self) -> String {
        format!(
            "docker-mailserver config {} (mailboxes under {})",
            shown_reason(&self.c.dir.display().to_string()),
            shown_reason(&self.c.mail_root.display().to_string())
        )
    }
}
