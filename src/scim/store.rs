//! The SCIM id to account mapping, across restarts: one JSON state file, rewritten whole and atomically
//! on every change, and held by one daemon at a time.

use super::{backend, files, resource};
use crate::escape::shown_reason;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The state file's format; a file of another version is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;
/// The largest state file read (each user's document is at most 64 KiB).
pub const MAX_STATE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub user: resource::User,
    /// The user was deleted; the entry stays until the backend removed the account (crash safety).
    pub deleted: bool,
    /// What the backend files are known to hold for this user (None: nothing). The service writes the
    /// store first (new user, applied unchanged), then the backend, then sets applied = desired.
    pub applied: Option<backend::Account>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// By SCIM id.
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the state file's lock (a second daemon on the same file).
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Io(String),
    /// The file is not a state file this version reads; it is left as it is for the admin.
    #[error("{0}")]
    Corrupt(String),
}

/// The file on disk: the state with its format version.
#[derive(Serialize)]
struct OnDiskRef<'a> {
    version: u32,
    entries: &'a BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(default)]
    entries: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: Option<serde_json::Value>,
}

pub struct Store {
    path: PathBuf,
    state: State,
    /// Holds the exclusive flock on `<path>.lock` while the store lives.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("entries", &self.state.entries.len()).finish()
    }
}

fn shown_path(p: &Path) -> String {
    shown_reason(&p.display().to_string())
}

impl Store {
    /// Reads the state file (absent: empty) and holds an exclusive flock on "<path>.lock" for the
    /// Store's lifetime: a second daemon on the same file fails to start (Locked). Corrupt file: error,
    /// never silently emptied.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", shown_path(&lock_path))))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(format!(
                    "{} is locked by another process (is another dovecot-oauth2d using {}?)",
                    shown_path(&lock_path),
                    shown_path(path)
                )))
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(StoreError::Io(format!("cannot lock {}: {e}", shown_path(&lock_path))))
            }
        }
        let state = read_state(path)?;
        Ok(Store { path: path.to_path_buf(), state, _lock: lock })
    }

    /// Reads the state file without the lock (for `--scim-status` beside a running daemon: the file
    /// is only ever replaced whole, so what is read is one committed state).
    pub fn read(path: &Path) -> Result<State, StoreError> {
        read_state(path)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Applies `change` to a copy, writes it atomically (temp beside, fsync, rename, fsync dir, mode
    /// 0600), then makes it current: memory never differs from disk, a failed write changes nothing.
    pub fn commit(&mut self, change: impl FnOnce(&mut State)) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        change(&mut next);
        write_state(&self.path, &next)?;
        self.state = next;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn read_state(path: &Path) -> Result<State, StoreError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(StoreError::Io(format!("cannot open {}: {e}", shown_path(path)))),
    };
    let mut bytes = Vec::new();
    (&mut f)
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::Io(format!("cannot read {}: {e}", shown_path(path))))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StoreError::Corrupt(format!("{} is larger than {MAX_STATE_BYTES} bytes", shown_path(path))));
    }
    // The version first, so a file of a later format says so instead of failing on a field.
    match serde_json::from_slice::<VersionOnly>(&bytes) {
        Ok(VersionOnly { version: Some(v) }) if v == serde_json::json!(FORMAT_VERSION) => {}
        Ok(VersionOnly { version: Some(v) }) => {
            return Err(StoreError::Corrupt(format!(
                "{} has format version {}; this version reads {FORMAT_VERSION}",
                shown_path(path),
                shown_reason(&v.to_string())
            )))
        }
        Ok(VersionOnly { version: None }) => {
            return Err(StoreError::Corrupt(format!("{} has no format version", shown_path(path))))
        }
        Err(e) => return Err(StoreError::Corrupt(format!("{} is not a state file: {e}", shown_path(path)))),
    }
    let on_disk: OnDisk = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("{} is not a state file: {e}", shown_path(path))))?;
    debug_assert_eq!(on_disk.version, FORMAT_VERSION);
    Ok(State { entries: on_disk.entries })
}

fn write_state(path: &Path, state: &State) -> Result<(), StoreError> {
    let io = |what: &str, e: io::Error| StoreError::Io(format!("cannot {what} {}: {e}", shown_path(path)));
    let mut bytes = serde_json::to_vec_pretty(&OnDiskRef { version: FORMAT_VERSION, entries: &state.entries })
        .map_err(|e| StoreError::Io(format!("cannot serialise the state: {e}")))?;
    bytes.push(b'\n');
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StoreError::Io(format!("{} is not a file name", shown_path(path))))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = files::write_temp(&dir, name, &bytes, 0o600, None).map_err(|e| io("write", e))?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(io("rename into", e));
    }
    files::sync_dir(&dir).map_err(|e| io("sync the directory of", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::files::tests::TempDir;
    use std::os::unix::fs::MetadataExt;

    fn entry(id: &str, address: &str) -> Entry {
        Entry {
            user: resource::User {
                id: id.into(),
                doc: serde_json::json!({"userName": address}).as_object().unwrap().clone(),
                created: 1,
                modified: 2,
                version: 3,
            },
            deleted: false,
            applied: Some(backend::Account { address: address.into(), aliases: vec![], quota: None }),
        }
    }

    #[test]
    fn an_absent_state_file_is_an_empty_state() {
        let d = TempDir::new();
        let s = Store::open(&d.path("state.json")).unwrap();
        assert_eq!(s.state(), &State::default());
        assert!(!d.path("state.json").exists(), "opening writes nothing");
    }

    #[test]
    fn a_committed_change_is_read_back_after_a_restart() {
        let d = TempDir::new();
        let p = d.path("state.json");
        {
            let mut s = Store::open(&p).unwrap();
            s.commit(|st| {
                st.entries.insert("a1".into(), entry("a1", "ann@x.org"));
            })
            .unwrap();
            assert_eq!(s.state().entries.len(), 1);
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.state().entries["a1"], entry("a1", "ann@x.org"));
    }

    #[test]
    fn the_state_file_is_mode_0600_and_carries_its_format_version() {
        let d = TempDir::new();
        let p = d.path("state.json");
        let mut s = Store::open(&p).unwrap();
        s.commit(|st| {
            st.entries.insert("a1".into(), entry("a1", "ann@x.org"));
        })
        .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["version"], FORMAT_VERSION);
        assert_eq!(v["entries"]["a1"]["applied"]["address"], "ann@x.org");
    }

    #[test]
    fn a_second_store_on_the_same_file_is_locked_out() {
        let d = TempDir::new();
        let p = d.path("state.json");
        let first = Store::open(&p).unwrap();
        assert!(matches!(Store::open(&p), Err(StoreError::Locked(_))));
        drop(first);
        Store::open(&p).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_and_is_left_as_it_is() {
        let d = TempDir::new();
        let p = d.path("state.json");
        fs::write(&p, "{\"version\":1,\"entries\":{\"a1\":{\"user\":").unwrap();
        assert!(matches!(Store::open(&p), Err(StoreError::Corrupt(_))));
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"version\":1,\"entries\":{\"a1\":{\"user\":");
    }

    #[test]
    fn a_state_file_of_another_format_version_is_refused() {
        let d = TempDir::new();
        let p = d.path("state.json");
        fs::write(&p, "{\"version\":2,\"entries\":{},\"more\":[]}").unwrap();
        match Store::open(&p) {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("format version 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        fs::write(&p, "{\"entries\":{}}").unwrap();
        assert!(matches!(Store::open(&p), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_failed_write_changes_neither_memory_nor_disk() {
        let d = TempDir::new();
        let p = d.path("state.json");
        let mut s = Store::open(&p).unwrap();
        s.commit(|st| {
            st.entries.insert("a1".into(), entry("a1", "ann@x.org"));
        })
        .unwrap();
        // The rename cannot replace a non-empty directory (and root, who runs these tests, would write
        // into a read-only one), so put one where the file is for the next commit.
        fs::rename(&p, d.path("kept")).unwrap();
        fs::create_dir(&p).unwrap();
        fs::write(p.join("x"), "").unwrap();
        let r = s.commit(|st| {
            st.entries.insert("b2".into(), entry("b2", "bob@x.org"));
        });
        assert!(matches!(r, Err(StoreError::Io(_))), "{r:?}");
        assert_eq!(s.state().entries.keys().collect::<Vec<_>>(), ["a1"]);
        fs::remove_dir_all(&p).unwrap();
        fs::rename(d.path("kept"), &p).unwrap();
        drop(s);
        assert_eq!(Store::open(&p).unwrap().state().entries.keys().collect::<Vec<_>>(), ["a1"]);
        let left: Vec<_> = fs::read_dir(&d.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "no temp file is left: {left:?}");
    }
}
