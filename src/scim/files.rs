//! Whole-file edits of the line files a mail system reads (DMS's `postfix-accounts.cf` `key|...`,
//! `postfix-virtual.cf` `key value[,value]`, `dovecot-quotas.cf` `key:value`, Postfix maps `key value`,
//! Dovecot passwd-files `key:...`): read, change in memory, write a temp file beside it, fsync, rename,
//! fsync the directory. A reader sees the old file or the new one, never half of either.
//!
//! Other writers take no lock: DMS's `setup email add` appends with `echo >>` and edits with `sed -i`.
//! So an edit keeps the file it read open, re-reads it just before the rename (and starts again if it
//! changed or was replaced), and after the rename reads the old file once more for lines appended in
//! between and appends them to the new one, as their writer meant to. What remains: a `sed -i` that
//! renames in the instant between that last check and our rename is overwritten, and an appender
//! preempted between its `open` and its `write` for longer than our rename and directory fsync writes
//! into the old file after we looked; the service's reapply on start repairs our own lines in either case.

use super::backend::BackendError;
use crate::escape::shown_reason;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest line file read: DMS's accounts file holds about 150 bytes per account.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// How often an edit starts again because another writer changed the file under it.
const MAX_ATTEMPTS: usize = 50;
/// How often lines appended to the replaced file are looked for and carried over.
const MAX_MERGES: usize = 16;

/// What ends a line's key, as DMS's `__db_get_delimiter_for` says per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delim {
    /// `postfix-accounts.cf`, `dovecot-masters.cf`.
    Pipe,
    /// `dovecot-quotas.cf`, passwd-files.
    Colon,
    /// `postfix-virtual.cf` and Postfix maps: any white space (DMS's `\s`); written as one space.
    Space,
}

impl Delim {
    fn ends_key(self, c: char) -> bool {
        match self {
            Delim::Pipe => c == '|',
            Delim::Colon => c == ':',
            Delim::Space => c == ' ' || c == '\t',
        }
    }
}

/// A line file's lines, in order, comments and blank lines included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    lines: Vec<String>,
    delim: Delim,
    changed: bool,
}

impl Lines {
    pub fn parse(text: &str, delim: Delim) -> Lines {
        Lines { lines: text.lines().map(str::to_string).collect(), delim, changed: false }
    }

    /// A line's key, if it is an entry: not blank, not a comment (`#` after optional white space),
    /// not a Postfix continuation (leading white space), and holding the delimiter (`^key<delim>`, as
    /// DMS's `_db_has_entry_with_key` matches).
    pub fn key_of(&self, line: &str) -> Option<usize> {
        key_end(line, self.delim)
    }

    fn index(&self, key: &str) -> Option<usize> {
        self.lines.iter().position(|l| is_entry_for(l, key, self.delim))
    }

    /// The first entry line for `key` (compared case-insensitively, as DMS's `grep -i`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.index(key).map(|i| self.lines[i].as_str())
    }

    /// What follows the key and its delimiter on the first entry line for `key` (for [`Delim::Space`],
    /// without the leading white space).
    pub fn value(&self, key: &str) -> Option<&str> {
        let line = self.get(key)?;
        let rest = &line[self.key_of(line)?..];
        let mut chars = rest.chars();
        chars.next();
        let rest = chars.as_str();
        Some(if self.delim == Delim::Space { rest.trim_start_matches([' ', '\t']) } else { rest })
    }

    /// Makes `line` the entry for `key`: replaces the first entry line for it in place, or appends.
    pub fn set(&mut self, key: &str, line: String) {
        match self.index(key) {
            Some(i) if self.lines[i] == line => {}
            Some(i) => {
                self.lines[i] = line;
                self.changed = true;
            }
            None => {
                self.lines.push(line);
                self.changed = true;
            }
        }
    }

    /// Removes every entry line for `key` for which `remove` says yes; returns how many were removed.
    pub fn remove_if(&mut self, key: &str, remove: impl Fn(&str) -> bool) -> usize {
        let before = self.lines.len();
        let delim = self.delim;
        self.lines.retain(|l| !(is_entry_for(l, key, delim) && remove(l)));
        let removed = before - self.lines.len();
        self.changed |= removed > 0;
        removed
    }

    /// Removes every entry line for `key`.
    pub fn remove(&mut self, key: &str) -> usize {
        self.remove_if(key, |_| true)
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether [`Lines::set`] or [`Lines::remove_if`] changed anything.
    pub fn changed(&self) -> bool {
        self.changed
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 1).sum());
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// Where the key of an entry line ends (see [`Lines::key_of`]).
fn key_end(line: &str, delim: Delim) -> Option<usize> {
    if line.starts_with([' ', '\t', '#']) {
        return None;
    }
    let end = line.find(|c| delim.ends_key(c))?;
    (end > 0).then_some(end)
}

fn is_entry_for(line: &str, key: &str, delim: Delim) -> bool {
    key_end(line, delim).is_some_and(|e| line[..e].eq_ignore_ascii_case(key))
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> BackendError {
    BackendError::Io(format!("{what} {}: {e}", shown_reason(&path.display().to_string())))
}

/// Reads a line file (absent: no lines).
pub fn read(path: &Path, delim: Delim) -> Result<Lines, BackendError> {
    let (_, bytes) = open_read(path)?;
    Lines::from_bytes(&bytes, delim, path)
}

impl Lines {
    fn from_bytes(bytes: &[u8], delim: Delim, path: &Path) -> Result<Lines, BackendError> {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            BackendError::Io(format!("{} is not UTF-8 text", shown_reason(&path.display().to_string())))
        })?;
        Ok(Lines::parse(text, delim))
    }
}

fn open_read(path: &Path) -> Result<(Option<File>, Vec<u8>), BackendError> {
    match File::open(path) {
        Ok(mut f) => {
            let bytes = read_rest(&mut f, path)?;
            Ok((Some(f), bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, Vec::new())),
        Err(e) => Err(io_error("cannot open", path, &e)),
    }
}

/// The rest of `f` from its current offset, bounded by [`MAX_FILE_BYTES`].
fn read_rest(f: &mut File, path: &Path) -> Result<Vec<u8>, BackendError> {
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io_error("cannot read", path, &e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(BackendError::Io(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            shown_reason(&path.display().to_string())
        )));
    }
    Ok(bytes)
}

/// Edits the line file at `path` with `change` (which may run more than once, on the file as it is
/// each time, so it must only depend on the lines it is given). An absent file is created with
/// `default_mode` (owner: this process); an existing one keeps its mode and owner. If `change` changes
/// nothing, nothing is written. An error from `change` writes nothing and is returned.
pub fn edit<T>(
    path: &Path,
    delim: Delim,
    default_mode: u32,
    mut change: impl FnMut(&mut Lines) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    edit_with(path, delim, default_mode, &mut change, &mut |_| {})
}

/// Where [`edit_with`] lets a test act as another writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// The temp file is written; the file is about to be checked for changes.
    BeforeCheck,
    /// The file was checked unchanged; the rename is next.
    BeforeRename,
}

fn edit_with<T>(
    path: &Path,
    delim: Delim,
    default_mode: u32,
    change: &mut dyn FnMut(&mut Lines) -> Result<T, BackendError>,
    hook: &mut dyn FnMut(Point),
) -> Result<T, BackendError> {
    let (dir, name) = split(path)?;
    for _ in 0..MAX_ATTEMPTS {
        let (file, bytes) = open_read(path)?;
        let mut lines = Lines::from_bytes(&bytes, delim, path)?;
        let result = change(&mut lines)?;
        if !lines.changed() {
            return Ok(result);
        }
        let (mode, owner) = match &file {
            Some(f) => {
                let m = f.metadata().map_err(|e| io_error("cannot stat", path, &e))?;
                (m.mode() & 0o7777, Some((m.uid(), m.gid())))
            }
            None => (default_mode, None),
        };
        let temp =
            write_temp(&dir, &name, &lines.render(), mode, owner).map_err(|e| io_error("cannot write", path, &e))?;
        hook(Point::BeforeCheck);
        let done = match file {
            None => create(&temp, path, &dir)?,
            Some(mut f) => {
                if !unchanged(&mut f, &bytes, path)? {
                    false
                } else {
                    hook(Point::BeforeRename);
                    replace(&mut f, bytes.len() as u64, &temp, path, &dir)?;
                    true
                }
            }
        };
        let _ = fs::remove_file(&temp);
        if done {
            return Ok(result);
        }
    }
    Err(BackendError::Busy(format!("{} kept changing while it was edited", shown_reason(&path.display().to_string()))))
}

fn split(path: &Path) -> Result<(PathBuf, String), BackendError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BackendError::Io(format!("{} is not a file name", shown_reason(&path.display().to_string()))))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string()))
}

/// Whether the file at `path` is still the one `f` has open, with the content read.
fn unchanged(f: &mut File, read: &[u8], path: &Path) -> Result<bool, BackendError> {
    let now = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("cannot stat", path, &e)),
    };
    let ours = f.metadata().map_err(|e| io_error("cannot stat", path, &e))?;
    if (now.dev(), now.ino()) != (ours.dev(), ours.ino()) || ours.len() != read.len() as u64 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| io_error("cannot read", path, &e))?;
    Ok(read_rest(f, path)? == read)
}

/// Creates `path` from `temp` only if it still does not exist (a hard link fails if another writer
/// created it meanwhile, where a rename would replace its lines). False: it exists now.
fn create(temp: &Path, path: &Path, dir: &Path) -> Result<bool, BackendError> {
    match fs::hard_link(temp, path) {
        Ok(()) => {
            sync_dir(dir).map_err(|e| io_error("cannot sync", dir, &e))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error("cannot create", path, &e)),
    }
}

/// Renames `temp` over `path`, then carries over what was appended to the replaced file `old` after
/// its first `read_len` bytes.
fn replace(old: &mut File, read_len: u64, temp: &Path, path: &Path, dir: &Path) -> Result<(), BackendError> {
    fs::rename(temp, path).map_err(|e| io_error("cannot rename into", path, &e))?;
    sync_dir(dir).map_err(|e| io_error("cannot sync", dir, &e))?;
    let mut seen = read_len;
    for _ in 0..MAX_MERGES {
        old.seek(SeekFrom::Start(seen)).map_err(|e| io_error("cannot read", path, &e))?;
        let extra = read_rest(old, path)?;
        if extra.is_empty() {
            return Ok(());
        }
        seen += extra.len() as u64;
        append(path, &extra)?;
    }
    Ok(())
}

/// Appends `extra` (lines another writer appended to the replaced file) with one write, as that writer
/// did, on a line of its own.
fn append(path: &Path, extra: &[u8]) -> Result<(), BackendError> {
    let mut f = OpenOptions::new().read(true).append(true).open(path).map_err(|e| io_error("cannot open", path, &e))?;
    let len = f.metadata().map_err(|e| io_error("cannot stat", path, &e))?.len();
    let mut out = Vec::with_capacity(extra.len() + 2);
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))
            .and_then(|_| f.read_exact(&mut last))
            .map_err(|e| io_error("cannot read", path, &e))?;
        if last[0] != b'\n' {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(extra);
    if !extra.ends_with(b"\n") {
        out.push(b'\n');
    }
    f.write_all(&out).and_then(|_| f.sync_all()).map_err(|e| io_error("cannot append to", path, &e))
}

/// Writes `bytes` to a new temp file in `dir` named after `name`, with `mode` and `owner` (uid, gid),
/// synced. The caller renames it into place (and removes it on failure).
pub(super) fn write_temp(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<PathBuf> {
    let temp = dir.join(format!(".{name}.{}.tmp", random_hex(8)));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        if let Some((uid, gid)) = owner {
            let m = f.metadata()?;
            if (m.uid(), m.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
        }
        // After the chown (which clears set-id bits), and not reduced by the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Makes a rename or link in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `n` random bytes as lowercase hex.
pub(super) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A fresh directory under the system's temp dir, removed when dropped.
    pub struct TempDir(pub PathBuf);
    impl TempDir {
        pub fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!("scim-test-{}", random_hex(8)));
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
        pub fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn set(key: &'static str, line: &'static str) -> impl FnMut(&mut Lines) -> Result<(), BackendError> {
        move |l| {
            l.set(key, line.to_string());
            Ok(())
        }
    }

    #[test]
    fn keys_are_matched_case_insensitively_up_to_the_delimiter() {
        let l = Lines::parse("Ann@X.org|h1\nann@x.orgy|h2\n", Delim::Pipe);
        assert_eq!(l.get("ann@x.org"), Some("Ann@X.org|h1"));
        assert_eq!(l.get("ann@x.orgy"), Some("ann@x.orgy|h2"));
        assert_eq!(l.get("ann@x.or"), None);
    }

    #[test]
    fn comments_blank_lines_and_continuations_are_not_entries() {
        let l = Lines::parse("# ann@x.org|h\n\n ann@x.org|h\n\tann@x.org other\n", Delim::Pipe);
        assert_eq!(l.get("ann@x.org"), None);
        let v = Lines::parse("  ann@x.org other\n", Delim::Space);
        assert_eq!(v.get("ann@x.org"), None);
    }

    #[test]
    fn a_space_delimited_value_is_read_after_any_white_space() {
        let l = Lines::parse("al@x.org \t ann@x.org,bob@x.org\n", Delim::Space);
        assert_eq!(l.value("AL@x.org"), Some("ann@x.org,bob@x.org"));
        let q = Lines::parse("ann@x.org:1G\n", Delim::Colon);
        assert_eq!(q.value("ann@x.org"), Some("1G"));
    }

    #[test]
    fn an_edit_keeps_comments_blank_lines_and_other_entries() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        fs::write(&p, "# admin comment\n\nadmin@x.org|h0\nann@x.org|h1\n").unwrap();
        edit(&p, Delim::Pipe, 0o644, set("ANN@x.org", "ann@x.org|h2")).unwrap();
        edit(&p, Delim::Pipe, 0o644, set("new@x.org", "new@x.org|h3")).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "# admin comment\n\nadmin@x.org|h0\nann@x.org|h2\nnew@x.org|h3\n");
    }

    #[test]
    fn an_edit_that_changes_nothing_does_not_write() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        fs::write(&p, "ann@x.org|h1").unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        edit(&p, Delim::Pipe, 0o644, set("ann@x.org", "ann@x.org|h1")).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(fs::read_to_string(&p).unwrap(), "ann@x.org|h1");
    }

    #[test]
    fn an_error_from_the_change_writes_nothing() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        fs::write(&p, "ann@x.org|h1\n").unwrap();
        let r: Result<(), _> = edit(&p, Delim::Pipe, 0o644, |l| {
            l.remove("ann@x.org");
            Err(BackendError::Taken("ann@x.org".into()))
        });
        assert_eq!(r, Err(BackendError::Taken("ann@x.org".into())));
        assert_eq!(fs::read_to_string(&p).unwrap(), "ann@x.org|h1\n");
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 1, "no temp file is left");
    }

    #[test]
    fn an_absent_file_is_created_with_the_default_mode() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        edit(&p, Delim::Colon, 0o640, set("ann@x.org", "ann@x.org:1G")).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "ann@x.org:1G\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 1, "no temp file is left");
    }

    #[test]
    fn an_existing_file_keeps_its_mode() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        fs::write(&p, "").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o604)).unwrap();
        edit(&p, Delim::Colon, 0o644, set("ann@x.org", "ann@x.org:1G")).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o604);
    }

    #[test]
    fn remove_if_removes_only_the_matching_lines_of_the_key() {
        let mut l = Lines::parse("al@x.org ann@x.org\nal@x.org bob@x.org\nbl@x.org ann@x.org\n", Delim::Space);
        assert_eq!(l.remove_if("AL@x.org", |line| line.ends_with(" ann@x.org")), 1);
        assert_eq!(l.lines(), ["al@x.org bob@x.org", "bl@x.org ann@x.org"]);
        assert!(l.changed());
    }

    #[test]
    fn a_line_appended_before_the_check_makes_the_edit_start_again_on_the_new_content() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        fs::write(&p, "a@x.org|1\n").unwrap();
        let (mut runs, mut appended) = (0, false);
        let pc = p.clone();
        edit_with(
            &p,
            Delim::Pipe,
            0o644,
            &mut |l: &mut Lines| {
                runs += 1;
                l.set("b@x.org", "b@x.org|2".into());
                Ok(())
            },
            &mut |at| {
                if at == Point::BeforeCheck && !appended {
                    appended = true;
                    let mut f = OpenOptions::new().append(true).open(&pc).unwrap();
                    f.write_all(b"admin@x.org|3\n").unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(runs, 2);
        assert_eq!(fs::read_to_string(&p).unwrap(), "a@x.org|1\nadmin@x.org|3\nb@x.org|2\n");
    }

    #[test]
    fn a_line_appended_to_the_replaced_file_after_the_check_is_carried_over() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        fs::write(&p, "a@x.org|1\n").unwrap();
        let pc = p.clone();
        edit_with(
            &p,
            Delim::Pipe,
            0o644,
            &mut |l: &mut Lines| {
                l.remove("a@x.org");
                Ok(())
            },
            &mut |at| {
                if at == Point::BeforeRename {
                    // After the check, before the rename: into the file about to be replaced.
                    let mut f = OpenOptions::new().append(true).open(&pc).unwrap();
                    f.write_all(b"admin@x.org|3\n").unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "admin@x.org|3\n");
    }

    #[test]
    fn a_file_created_by_another_writer_before_ours_is_not_replaced() {
        let d = TempDir::new();
        let p = d.path("f.cf");
        let pc = p.clone();
        let mut created = false;
        edit_with(
            &p,
            Delim::Pipe,
            0o644,
            &mut |l: &mut Lines| {
                l.set("b@x.org", "b@x.org|2".into());
                Ok(())
            },
            &mut |at| {
                if at == Point::BeforeCheck && !created {
                    created = true;
                    fs::write(&pc, "admin@x.org|3\n").unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "admin@x.org|3\nb@x.org|2\n");
    }

    /// Edits `p` (setting and removing keys) at least `n` times and until `appender` has finished;
    /// then checks that every line it appended is in the file, once.
    fn edits_lose_no_appended_line(p: &Path, n: usize, mut appender: impl FnMut() -> Option<Vec<String>>) {
        let mut i = 0;
        let appended = loop {
            let key = format!("k{}@x.org", i % 7);
            if i % 3 == 2 {
                edit(p, Delim::Pipe, 0o644, |l| Ok(l.remove(&key))).unwrap();
            } else {
                edit(p, Delim::Pipe, 0o644, |l| {
                    l.set(&key, format!("{key}|{i}"));
                    Ok(())
                })
                .unwrap();
            }
            i += 1;
            if i >= n {
                if let Some(lines) = appender() {
                    break lines;
                }
            }
        };
        let text = fs::read_to_string(p).unwrap();
        for line in appended {
            assert_eq!(text.lines().filter(|l| *l == line).count(), 1, "{line} is in the file once");
        }
    }

    #[test]
    fn no_line_appended_by_another_thread_in_a_tight_loop_is_lost() {
        const LINES: usize = 3_000;
        let d = TempDir::new();
        let p = d.path("postfix-accounts.cf");
        fs::write(&p, "# accounts\n").unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (pc, dc) = (p.clone(), done.clone());
        let writer = std::thread::spawn(move || {
            for n in 0..LINES {
                // As bash's `echo ... >>file`: open for append, one write, close.
                let mut f = OpenOptions::new().append(true).open(&pc).unwrap();
                f.write_all(format!("admin{n}@x.org|h\n").as_bytes()).unwrap();
            }
            dc.store(true, Ordering::SeqCst);
        });
        let mut writer = Some(writer);
        edits_lose_no_appended_line(&p, 200, || {
            if !done.load(Ordering::SeqCst) {
                return None;
            }
            writer.take().unwrap().join().unwrap();
            Some((0..LINES).map(|i| format!("admin{i}@x.org|h")).collect())
        });
    }

    #[test]
    fn no_line_appended_by_a_shell_echo_loop_is_lost() {
        let d = TempDir::new();
        let p = d.path("postfix-virtual.cf");
        fs::write(&p, "").unwrap();
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg("for i in $(seq 0 999); do echo \"al$i@x.org ann@x.org\" >>\"$1\"; done")
            .arg("bash")
            .arg(&p)
            .spawn()
            .unwrap();
        edits_lose_no_appended_line(&p, 200, || {
            let status = child.try_wait().unwrap()?;
            assert!(status.success());
            Some((0..1000).map(|i| format!("al{i}@x.org ann@x.org")).collect())
        });
    }
}
