//! What both backends do the same way: the account, alias, quota and mailbox-map files and the
//! mailbox directory, changed in an order that leaves every crash recoverable by applying again.
//!
//! Order of a create, rename or update: quotas, aliases, mailbox map, mailbox directory, and the
//! account file last: until the account line is there, nothing else can be mistaken for an account
//! the admin made, and once it is there the change is whole. Order of a removal: the account file
//! first (logins and delivery stop), then the rest; the mailbox data, if it goes, goes last.

use super::{Account, BackendError};
use crate::escape::{shown, shown_reason};
use crate::scim::files::{self, Delim, Lines};
use base64::Engine as _;
use sha2::{Digest, Sha512};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Mode of a line file this service creates (DMS's own files are 0644 too).
pub(super) const NEW_FILE_MODE: u32 = 0o644;
/// The most directory entries looked at to decide a mailbox directory holds no mail.
const MAX_EMPTY_CHECK: usize = 10_000;

/// An unusable random password in a scheme Dovecot reads: `{SSHA512}` + base64(sha512(32 random
/// bytes ‖ 8-byte salt) ‖ salt), the random bytes discarded, so no password logs in (users log in with
/// tokens or app passwords).
pub fn unusable_password() -> String {
    let (mut secret, mut salt) = ([0u8; 32], [0u8; 8]);
    aws_lc_rs::rand::fill(&mut secret).expect("the system's random source");
    aws_lc_rs::rand::fill(&mut salt).expect("the system's random source");
    let mut h = Sha512::new();
    h.update(secret);
    h.update(salt);
    secret.zeroize();
    let mut out = h.finalize().to_vec();
    out.extend_from_slice(&salt);
    format!("{{SSHA512}}{}", base64::engine::general_purpose::STANDARD.encode(out))
}

/// Whether `q` is a quota as DMS's `setquota` accepts it (`^([0-9]+(B|k|M|G|T)|0)$`).
pub fn valid_quota(q: &str) -> bool {
    if q == "0" {
        return true;
    }
    let Some(num) = q.strip_suffix(['B', 'k', 'M', 'G', 'T']) else { return false };
    !num.is_empty() && num.len() <= 20 && num.bytes().all(|b| b.is_ascii_digit())
}

/// An address as `address::mail_address` makes them: nothing else is written into a line file or
/// used as a path. Anything else here is a bug upstream, refused rather than written.
fn checked_address(a: &str) -> Result<(&str, &str), BackendError> {
    let bad = || BackendError::Io(format!("refusing to write the address {}", shown(a)));
    let (local, domain) = a.split_once('@').ok_or_else(bad)?;
    let ok_part = |p: &str, extra: &[u8]| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.ends_with('.')
            && !p.contains("..")
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b) || extra.contains(&b))
    };
    if a.len() > 254 || local.len() > 64 || !ok_part(local, b"+") || !ok_part(domain, b"") {
        return Err(bad());
    }
    Ok((local, domain))
}

/// Checks every address and the quota of `a` before anything is written.
pub(super) fn check_account(a: &Account) -> Result<(), BackendError> {
    for x in a.addresses() {
        checked_address(x)?;
    }
    if let Some(q) = &a.quota {
        if !valid_quota(q) {
            return Err(BackendError::Io(format!("refusing to write the quota {}", shown(q))));
        }
    }
    Ok(())
}

/// The files of one backend and how its account line looks.
pub(super) trait Layout {
    fn accounts(&self) -> (&Path, Delim);
    fn aliases(&self) -> &Path;
    fn quotas(&self) -> Option<&Path>;
    /// A Postfix virtual mailbox map (`address domain/local/`), if the backend writes one.
    fn mailbox_map(&self) -> Option<&Path>;
    fn mail_root(&self) -> &Path;
    fn delete_mailbox(&self) -> bool;
    /// The account line for `address`, keeping the hash (and what else the admin may have set) of
    /// `old`, the line it replaces; `None`: a new account with an [`unusable_password`].
    fn account_line(&self, address: &str, old: Option<&str>) -> Result<String, BackendError>;
    /// Whether `line` (an entry for `address`) is what this backend writes, its hash aside.
    fn account_line_ok(&self, address: &str, line: &str) -> bool;
}

/// `domain/local/` of an address, as DMS's vmailbox and a Postfix virtual mailbox map say it.
pub(super) fn map_value(address: &str) -> Result<String, BackendError> {
    let (local, domain) = checked_address(address)?;
    Ok(format!("{domain}/{local}/"))
}

/// `<root>/<domain>/<local>`: the mailbox directory (DMS's `/var/mail/<domain>/<local>`).
pub(super) fn mailbox_dir(root: &Path, address: &str) -> Result<PathBuf, BackendError> {
    let (local, domain) = checked_address(address)?;
    Ok(root.join(domain).join(local))
}

/// Whether an alias line's recipients are exactly `target` (what this service writes: one alias,
/// one recipient; anything else is the admin's).
fn alias_of(lines: &Lines, key: &str, target: &str) -> bool {
    lines.value(key).is_some_and(|v| v.trim().eq_ignore_ascii_case(target))
}

fn has_alias(a: Option<&Account>, x: &str) -> bool {
    a.is_some_and(|a| a.aliases.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

fn has_address(a: Option<&Account>, x: &str) -> bool {
    a.is_some_and(|a| a.addresses().any(|y| y.eq_ignore_ascii_case(x)))
}

/// The account this change renames from (`prev` with another address than `next`).
fn renamed_from<'a>(prev: Option<&'a Account>, next: &Account) -> Option<&'a Account> {
    prev.filter(|p| !p.address.eq_ignore_ascii_case(&next.address))
}

/// The account file made to say `next` where it said `prev`. `adopt`: a line for `next`'s address
/// already there is this change, applied before a crash; otherwise it is the admin's and Taken.
fn accounts_step(
    l: &dyn Layout,
    lines: &mut Lines,
    prev: Option<&Account>,
    next: Option<&Account>,
    adopt: bool,
) -> Result<(), BackendError> {
    let Some(n) = next else {
        if let Some(p) = prev {
            lines.remove(&p.address);
        }
        return Ok(());
    };
    let from = renamed_from(prev, n);
    if let Some(existing) = lines.get(&n.address).map(str::to_string) {
        if (prev.is_none() || from.is_some()) && !adopt {
            return Err(BackendError::Taken(n.address.clone()));
        }
        if !l.account_line_ok(&n.address, &existing) {
            let line = l.account_line(&n.address, Some(&existing))?;
            lines.set(&n.address, line);
        }
        if let Some(p) = from {
            lines.remove(&p.address);
        }
        return Ok(());
    }
    match from.and_then(|p| lines.get(&p.address).map(|old| (p, old.to_string()))) {
        Some((p, old)) => {
            // In place of the old line, keeping its hash; then any duplicate of the old key goes.
            let line = l.account_line(&n.address, Some(&old))?;
            lines.set(&p.address, line);
            lines.remove(&p.address);
        }
        None => {
            let line = l.account_line(&n.address, None)?;
            lines.set(&n.address, line);
        }
    }
    Ok(())
}

/// The alias file (`alias address`) made to say `next`'s aliases where it said `prev`'s. Only lines
/// this service owns are changed: key one of the user's aliases, one recipient, the user's address.
fn aliases_step(lines: &mut Lines, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError> {
    if let Some(n) = next {
        if !has_address(prev, &n.address) && lines.get(&n.address).is_some() {
            return Err(BackendError::Taken(n.address.clone()));
        }
    }
    if let Some(p) = prev {
        for x in &p.aliases {
            if !has_alias(next, x) {
                let owners: Vec<&str> =
                    std::iter::once(p.address.as_str()).chain(next.map(|n| n.address.as_str())).collect();
                let mine = lines.get(x).is_some() && owners.iter().any(|o| alias_of(lines, x, o));
                if mine {
                    lines.remove(x);
                }
            }
        }
    }
    if let Some(n) = next {
        for x in &n.aliases {
            let line = format!("{x} {}", n.address);
            if lines.get(x).is_none() {
                lines.set(x, line);
            } else if alias_of(lines, x, &n.address) {
                // Already ours.
            } else if has_alias(prev, x) {
                // Ours, pointing at the old address (a rename), or taken over by the admin: left alone.
                if prev.is_some_and(|p| alias_of(lines, x, &p.address)) {
                    lines.set(x, line);
                }
            } else {
                return Err(BackendError::Taken(x.clone()));
            }
        }
    }
    Ok(())
}

/// The quota file (`address:quota`): `next.quota` written when set; removed when the user's quota was
/// written before and is now unset, or the account goes. On a rename a quota the admin set follows the
/// account.
fn quotas_step(lines: &mut Lines, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError> {
    let Some(n) = next else {
        if let Some(p) = prev {
            lines.remove(&p.address);
        }
        return Ok(());
    };
    let mut quota = n.quota.clone();
    if let Some(p) = renamed_from(prev, n) {
        if quota.is_none() && p.quota.is_none() {
            quota = lines.value(&p.address).map(str::to_string);
        }
        lines.remove(&p.address);
    }
    match quota {
        Some(q) => lines.set(&n.address, format!("{}:{q}", n.address)),
        None => {
            if prev.is_some_and(|p| p.quota.is_some() && p.address.eq_ignore_ascii_case(&n.address)) {
                lines.remove(&n.address);
            }
        }
    }
    Ok(())
}

/// The mailbox map (`address domain/local/`).
fn mailbox_map_step(lines: &mut Lines, prev: Option<&Account>, next: Option<&Account>) -> Result<(), BackendError> {
    let Some(n) = next else {
        if let Some(p) = prev {
            lines.remove(&p.address);
        }
        return Ok(());
    };
    let want = map_value(&n.address)?;
    let from = renamed_from(prev, n);
    match lines.value(&n.address) {
        Some(v) if v.trim() == want => {}
        Some(_) if prev.is_none() || from.is_some() => return Err(BackendError::Taken(n.address.clone())),
        _ => lines.set(&n.address, format!("{} {want}", n.address)),
    }
    if let Some(p) = from {
        lines.remove(&p.address);
    }
    Ok(())
}

fn io_at(what: &str, p: &Path, e: &io::Error) -> BackendError {
    BackendError::Io(format!("cannot {what} {}: {e}", shown_reason(&p.display().to_string())))
}

/// Whether a directory holds anything but (nested) empty directories; past [`MAX_EMPTY_CHECK`]
/// entries it is taken to hold mail.
fn holds_mail(dir: &Path) -> Result<bool, BackendError> {
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).map_err(|e| io_at("read", &d, &e))? {
            let e = e.map_err(|e| io_at("read", &d, &e))?;
            seen += 1;
            if seen > MAX_EMPTY_CHECK {
                return Ok(true);
            }
            if e.file_type().map_err(|err| io_at("read", &e.path(), &err))?.is_dir() {
                todo.push(e.path());
            } else {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn exists(p: &Path) -> Result<bool, BackendError> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_at("stat", p, &e)),
    }
}

/// A rename whose target mailbox directory holds mail while the source still exists would merge two
/// users' mail: refused (Taken). A target of empty directories only (DMS makes `<local>/home` for
/// an account it saw) is replaced.
fn check_mailbox_move(root: &Path, from: &str, to: &str) -> Result<(), BackendError> {
    let (src, dst) = (mailbox_dir(root, from)?, mailbox_dir(root, to)?);
    if exists(&src)? && exists(&dst)? && holds_mail(&dst)? {
        return Err(BackendError::Taken(to.to_string()));
    }
    Ok(())
}

/// Moves the mailbox directory (the mail stays with the renamed account). Nothing to move: done before,
/// or there was no mail yet.
fn move_mailbox(root: &Path, from: &str, to: &str) -> Result<bool, BackendError> {
    check_mailbox_move(root, from, to)?;
    let (src, dst) = (mailbox_dir(root, from)?, mailbox_dir(root, to)?);
    if !exists(&src)? {
        return Ok(false);
    }
    if exists(&dst)? {
        fs::remove_dir_all(&dst).map_err(|e| io_at("remove the empty", &dst, &e))?;
    }
    let (src_parent, dst_parent) = (src.parent().expect("under root"), dst.parent().expect("under root"));
    if !exists(dst_parent)? {
        fs::create_dir(dst_parent).map_err(|e| io_at("create", dst_parent, &e))?;
        // The new domain directory as the old one is (DMS's are the mail user's).
        let m = fs::metadata(src_parent).map_err(|e| io_at("stat", src_parent, &e))?;
        std::os::unix::fs::chown(dst_parent, Some(m.uid()), Some(m.gid()))
            .map_err(|e| io_at("chown", dst_parent, &e))?;
        fs::set_permissions(dst_parent, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| io_at("chmod", dst_parent, &e))?;
        files::sync_dir(root).map_err(|e| io_at("sync", root, &e))?;
    }
    fs::rename(&src, &dst).map_err(|e| io_at("move the mailbox to", &dst, &e))?;
    files::sync_dir(dst_parent).map_err(|e| io_at("sync", dst_parent, &e))?;
    files::sync_dir(src_parent).map_err(|e| io_at("sync", src_parent, &e))?;
    Ok(true)
}

/// Removes a mailbox directory, and its domain directory if that is then empty (as DMS's
/// `delmailuser -y` does).
fn remove_mailbox(root: &Path, address: &str) -> Result<bool, BackendError> {
    let dir = mailbox_dir(root, address)?;
    if !exists(&dir)? {
        return Ok(false);
    }
    fs::remove_dir_all(&dir).map_err(|e| io_at("remove the mailbox", &dir, &e))?;
    let parent = dir.parent().expect("under root");
    let _ = fs::remove_dir(parent);
    files::sync_dir(root).map_err(|e| io_at("sync", root, &e))?;
    Ok(true)
}

type Step = fn(&mut Lines, Option<&Account>, Option<&Account>) -> Result<(), BackendError>;

/// Edits one file with a step; whether it changed.
fn edit(
    path: &Path,
    delim: Delim,
    step: Step,
    prev: Option<&Account>,
    next: Option<&Account>,
) -> Result<bool, BackendError> {
    files::edit(path, delim, NEW_FILE_MODE, |lines| {
        step(lines, prev, next)?;
        Ok(lines.changed())
    })
}

fn edit_accounts(
    l: &dyn Layout,
    prev: Option<&Account>,
    next: Option<&Account>,
    adopt: bool,
) -> Result<bool, BackendError> {
    let (path, delim) = l.accounts();
    files::edit(path, delim, NEW_FILE_MODE, |lines| {
        accounts_step(l, lines, prev, next, adopt)?;
        Ok(lines.changed())
    })
}

/// The files other than the account file, in write order: (path, delimiter, step).
fn other_files(l: &dyn Layout) -> Vec<(&Path, Delim, Step)> {
    let mut v: Vec<(&Path, Delim, Step)> = Vec::new();
    if let Some(q) = l.quotas() {
        v.push((q, Delim::Colon, quotas_step));
    }
    v.push((l.aliases(), Delim::Space, aliases_step));
    if let Some(m) = l.mailbox_map() {
        v.push((m, Delim::Space, mailbox_map_step));
    }
    v
}

/// Whether the account file already says `next` and no longer `prev`'s address (the change was
/// applied up to its last step before a crash).
fn accounts_done(l: &dyn Layout, prev: Option<&Account>, next: &Account) -> Result<bool, BackendError> {
    let (path, delim) = l.accounts();
    let lines = files::read(path, delim)?;
    let gone = renamed_from(prev, next).is_none_or(|p| lines.get(&p.address).is_none());
    Ok(gone && holds(l, next)?)
}

/// Makes the files say `next` where they said `prev` (see [`super::Backend::apply`]); whether
/// anything was written. The caller holds whatever lock the files' other writers take.
pub(super) fn apply(l: &dyn Layout, prev: Option<&Account>, next: Option<&Account>) -> Result<bool, BackendError> {
    for a in prev.into_iter().chain(next) {
        check_account(a)?;
    }
    let root = l.mail_root();
    let Some(n) = next else {
        let Some(p) = prev else { return Ok(false) };
        let mut wrote = edit_accounts(l, prev, None, false)?;
        for (path, delim, step) in other_files(l) {
            wrote |= edit(path, delim, step, prev, None)?;
        }
        if l.delete_mailbox() {
            wrote |= remove_mailbox(root, &p.address)?;
        }
        return Ok(wrote);
    };
    let adopt = accounts_done(l, prev, n)?;
    // Every refusal before the first write: each step on the files as they are, nothing kept.
    if !adopt {
        let (path, delim) = l.accounts();
        accounts_step(l, &mut files::read(path, delim)?, prev, next, false)?;
        for (path, delim, step) in other_files(l) {
            step(&mut files::read(path, delim)?, prev, next)?;
        }
        let accounts = files::read(path, delim)?;
        let map = l.mailbox_map().map(|m| files::read(m, Delim::Space)).transpose()?;
        for x in &n.aliases {
            let is_account = accounts.get(x).is_some() || map.as_ref().is_some_and(|m| m.get(x).is_some());
            if !has_alias(prev, x) && !has_address(prev, x) && is_account {
                return Err(BackendError::Taken(x.clone()));
            }
        }
        if let Some(p) = renamed_from(prev, n) {
            check_mailbox_move(root, &p.address, &n.address)?;
        }
    }
    let mut done: Vec<(&Path, Delim, Step)> = Vec::new();
    let mut wrote = false;
    let result = (|| {
        for (path, delim, step) in other_files(l) {
            wrote |= edit(path, delim, step, prev, next)?;
            done.push((path, delim, step));
        }
        if let Some(p) = renamed_from(prev, n) {
            wrote |= move_mailbox(root, &p.address, &n.address)?;
        }
        wrote |= edit_accounts(l, prev, next, adopt)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(wrote),
        Err(e @ BackendError::Taken(_)) => {
            // Another writer made one of the addresses meanwhile: what was written goes back.
            if let Some(p) = renamed_from(prev, n) {
                let _ = move_mailbox(root, &n.address, &p.address);
            }
            for (path, delim, step) in done.into_iter().rev() {
                let _ = edit(path, delim, step, next, prev);
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Whether the files hold `a` as [`apply`] writes it (the quota only where there is a quota file
/// and `a` has one).
pub(super) fn holds(l: &dyn Layout, a: &Account) -> Result<bool, BackendError> {
    check_account(a)?;
    let (path, delim) = l.accounts();
    let accounts = files::read(path, delim)?;
    if !accounts.get(&a.address).is_some_and(|line| l.account_line_ok(&a.address, line)) {
        return Ok(false);
    }
    let aliases = files::read(l.aliases(), Delim::Space)?;
    if !a.aliases.iter().all(|x| alias_of(&aliases, x, &a.address)) {
        return Ok(false);
    }
    if let (Some(q), Some(path)) = (&a.quota, l.quotas()) {
        if files::read(path, Delim::Colon)?.value(&a.address) != Some(q.as_str()) {
            return Ok(false);
        }
    }
    if let Some(m) = l.mailbox_map() {
        let want = map_value(&a.address)?;
        if files::read(m, Delim::Space)?.value(&a.address).map(str::trim) != Some(want.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_password_is_an_ssha512_of_64_bytes_and_an_8_byte_salt_and_never_repeats() {
        let p = unusable_password();
        let b64 = p.strip_prefix("{SSHA512}").unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(raw.len(), 64 + 8);
        assert!(!p.contains(['|', ':', ' ', '\n']));
        assert_ne!(p, unusable_password());
    }

    #[test]
    fn quotas_are_those_dms_setquota_accepts() {
        for ok in ["0", "10M", "1G", "302k", "5B", "2T"] {
            assert!(valid_quota(ok), "{ok}");
        }
        for bad in ["", "M", "10m", "1.5G", "10 M", "1G:x", "00x", "-1G", "10MB"] {
            assert!(!valid_quota(bad), "{bad}");
        }
    }

    #[test]
    fn addresses_that_could_break_a_line_or_a_path_are_refused() {
        for bad in [
            "a|b@x.org",
            "a:b@x.org",
            "a b@x.org",
            "a\n@x.org",
            "../x@x.org",
            "a@../x",
            "a@x/y",
            "A@x.org",
            "a@",
            "@x.org",
            "a@x..org",
            ".a@x.org",
        ] {
            assert!(checked_address(bad).is_err(), "{bad:?}");
        }
        assert_eq!(checked_address("ann.b+tag@mail.x.org").unwrap(), ("ann.b+tag", "mail.x.org"));
    }
}
