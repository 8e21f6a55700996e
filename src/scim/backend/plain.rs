//! A plain Dovecot and Postfix: a passwd-file, a virtual mailbox map and an alias map, then the
//! admin's command (`postmap`, `postfix reload`).

use super::common::{self, unusable_password, Layout};
use super::{Account, Backend, BackendError, PlainConfig};
use crate::escape::{shown, shown_max};
use crate::scim::files::Delim;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the after-change command may run before it is killed.
pub const AFTER_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the command's output is kept for the error.
const MAX_OUTPUT: usize = 4096;

pub struct Plain {
    c: PlainConfig,
    timeout: Duration,
    /// One change at a time (the Store's flock makes this process the only writer of these files).
    serial: Mutex<()>,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain").field("config", &self.c).finish()
    }
}

impl Plain {
    pub fn new(c: PlainConfig) -> Plain {
        Plain { c, timeout: AFTER_CHANGE_TIMEOUT, serial: Mutex::new(()) }
    }

    /// [`Plain::new`] with another bound on the after-change command.
    pub fn with_timeout(c: PlainConfig, timeout: Duration) -> Plain {
        Plain { c, timeout, serial: Mutex::new(()) }
    }

    fn home(&self, address: &str) -> Result<String, BackendError> {
        let home = common::mailbox_dir(&self.c.mail_root, address)?;
        let home = home.to_str().filter(|h| !h.contains([':', '\n', '\r'])).ok_or_else(|| {
            BackendError::Io(format!(
                "the mail root {} cannot be a passwd-file home",
                shown(&home.display().to_string())
            ))
        })?;
        Ok(home.to_string())
    }

    /// Runs `after_change`: no shell, stdin closed, output captured, killed after the timeout.
    fn after_change(&self) -> Result<(), BackendError> {
        let Some((cmd, args)) = self.c.after_change.split_first() else { return Ok(()) };
        let name = shown(&self.c.after_change.join(" "));
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BackendError::Io(format!("cannot run {name}: {e}")))?;
        // Read both pipes to the end (so a chatty command never blocks on a full pipe), keeping the start.
        let readers: Vec<_> = [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
            child.stderr.take().map(|e| Box::new(e) as _),
        ]
        .into_iter()
        .flatten()
        .map(|mut r| {
            std::thread::spawn(move || {
                let (mut kept, mut buf) = (Vec::new(), [0u8; 4096]);
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                kept
            })
        })
        .collect();
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if start.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("did not finish within {}s and was killed", self.timeout.as_secs_f32()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("could not be waited for: {e}")),
            }
        };
        let mut output = Vec::new();
        for r in readers {
            output.extend(r.join().unwrap_or_default());
        }
        let output = String::from_utf8_lossy(&output);
        let output = shown_max(output.trim(), 512);
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(BackendError::Io(format!("{name} failed ({s}): {output}"))),
            Err(why) => Err(BackendError::Io(format!("{name} {why}: {output}"))),
        }
    }
}

struct Files<'a> {
    p: &'a Plain,
}

impl Layout for Files<'_> {
    fn accounts(&self) -> (&Path, Delim) {
        (&self.p.c.passwd_file, Delim::Colon)
    }
    fn aliases(&self) -> &Path {
        &self.p.c.alias_map
    }
    fn quotas(&self) -> Option<&Path> {
        None
    }
    fn mailbox_map(&self) -> Option<&Path> {
        Some(&self.p.c.mailbox_map)
    }
    fn mail_root(&self) -> &Path {
        &self.p.c.mail_root
    }
    fn delete_mailbox(&self) -> bool {
        self.p.c.delete_mailbox
    }
    /// `user:password:uid:gid:(gecos):home:(shell):extra_fields`; a rename keeps the hash and the extra
    /// fields.
    fn account_line(&self, address: &str, old: Option<&str>) -> Result<String, BackendError> {
        let home = self.p.home(address)?;
        let fields: Vec<&str> = old.map(|o| o.splitn(8, ':').collect()).unwrap_or_default();
        let hash = match fields.get(1) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => unusable_password(),
        };
        let extra = fields.get(7).copied().unwrap_or("");
        Ok(format!("{address}:{hash}:{}:{}::{home}::{extra}", self.p.c.uid, self.p.c.gid))
    }
    fn account_line_ok(&self, address: &str, line: &str) -> bool {
        let f: Vec<&str> = line.splitn(8, ':').collect();
        let (uid, gid) = (self.p.c.uid.to_string(), self.p.c.gid.to_string());
        f.len() >= 7 && !f[1].is_empty() && f[2] == uid && f[3] == gid && self.p.home(address).is_ok_and(|h| f[5] == h)
    }
}

impl Backend for Plain {
    fn apply(&self, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let wrote = common::apply(&Files { p: self }, prev, next)?;
        // Also when a crash came between the files and the command: a requested change runs it.
        if wrote || prev != next {
            self.after_change()?;
        }
        Ok(())
    }

    fn holds(&self, account: &Account) -> Result<bool, BackendError> {
        common::holds(&Files { p: self }, account)
    }

    fn describe(&self) -> String {
        let s = |p: &PathBuf| shown(&p.display().to_string());
        format!(
            "passwd-file {}, mailbox map {}, alias map {} (mailboxes under {})",
            s(&self.c.passwd_file),
            s(&self.c.mailbox_map),
            s(&self.c.alias_map),
            s(&self.c.mail_root)
        )
    }
}
