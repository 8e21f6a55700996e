//! The backends on real files in a temp dir, read back the way DMS's scripts read them.

use super::*;
use crate::clock::Clock;
use crate::scim::files::tests::TempDir;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn acct(address: &str, aliases: &[&str], quota: Option<&str>) -> Account {
    Account {
        address: address.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        quota: quota.map(str::to_string),
    }
}

struct Env {
    d: TempDir,
    clock: Clock,
}

impl Env {
    fn new() -> Env {
        let d = TempDir::new();
        fs::create_dir(d.path("dms")).unwrap();
        fs::create_dir(d.path("mail")).unwrap();
        Env { d, clock: Clock::manual() }
    }
    fn config(&self, delete_mailbox: bool) -> DmsConfig {
        DmsConfig { dir: self.d.path("dms"), mail_root: self.d.path("mail"), delete_mailbox }
    }
    /// A Dms whose waits move the manual clock instead of sleeping.
    fn dms(&self) -> Dms {
        self.dms_sleeping(|_| {})
    }
    fn dms_sleeping(&self, on_sleep: impl Fn(usize) + Send + Sync + 'static) -> Dms {
        let clock = self.clock.clone();
        let n = AtomicUsize::new(0);
        let sleep = Arc::new(move |d: Duration| {
            clock.advance(d);
            on_sleep(n.fetch_add(1, Ordering::SeqCst) + 1);
        });
        Dms::with_wait(
            self.config(false),
            LockWait { clock: self.clock.clone(), sleep, bound: Duration::from_secs(30) },
        )
    }
    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.d.path("dms").join(name)).unwrap_or_default()
    }
    fn write(&self, name: &str, text: &str) {
        fs::write(self.d.path("dms").join(name), text).unwrap();
    }
    fn accounts(&self) -> String {
        self.file("postfix-accounts.cf")
    }
    fn virt(&self) -> String {
        self.file("postfix-virtual.cf")
    }
    fn quotas(&self) -> String {
        self.file("dovecot-quotas.cf")
    }
    fn all(&self) -> (String, String, String) {
        (self.accounts(), self.virt(), self.quotas())
    }
    fn mailbox(&self, domain_local: &str) -> std::path::PathBuf {
        self.d.path("mail").join(domain_local)
    }
}

/// Runs a bash snippet with `$1` the file (DMS's scripts are bash).
fn bash(script: &str, file: &Path) -> String {
    let out = std::process::Command::new("bash").arg("-c").arg(script).arg("bash").arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_created_account_line_is_found_and_read_as_dms_scripts_do() {
    let e = Env::new();
    e.dms().apply(None, Some(&acct("ann@x.org", &["a.nn@x.org"], Some("1G")))).unwrap();
    let accounts = e.d.path("dms").join("postfix-accounts.cf");
    // db.sh `_db_has_entry_with_key`: grep -i "^$(_escape KEY)|".
    bash(r#"grep --quiet --no-messages --ignore-case "^ann@x\.org|" "$1""#, &accounts);
    // accounts.sh `_create_accounts`: IFS='|' read LOGIN PASS USER_ATTRIBUTES over the valid lines.
    let read = bash(
        r#"grep -Ev '^\s*$|^\s*#' "$1" | while IFS=$'|' read -r LOGIN PASS ATTR; do echo "$LOGIN;${PASS:0:9};${#PASS};$ATTR"; done"#,
        &accounts,
    );
    assert_eq!(read, "ann@x.org;{SSHA512};105;\n");
    // The alias as `_create_dovecot_alias_dummy_accounts` reads it, and as `_db_has_entry_with_key` finds it.
    let virt = e.d.path("dms").join("postfix-virtual.cf");
    assert_eq!(
        bash(r#"while read -r ALIAS ALIASED; do echo "$ALIAS=$ALIASED"; done <"$1""#, &virt),
        "a.nn@x.org=ann@x.org\n"
    );
    bash(r#"grep -qi "^a\.nn@x\.org\s" "$1""#, &virt);
    // `_add_attribute_dovecot_quota`: IFS=':' read -a USER_QUOTA < <(grep -i "ACCOUNT:"): two fields.
    let quota = bash(
        r#"IFS=':' read -r -a Q < <(grep -i "ann@x.org:" "$1"); echo "${#Q[@]} ${Q[1]}""#,
        &e.d.path("dms").join("dovecot-quotas.cf"),
    );
    assert_eq!(quota, "2 1G\n");
}

#[test]
fn a_created_account_is_held() {
    let e = Env::new();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    let dms = e.dms();
    assert!(!dms.holds(&a).unwrap());
    dms.apply(None, Some(&a)).unwrap();
    assert!(dms.holds(&a).unwrap());
    assert!(!dms.holds(&acct("ann@x.org", &["a.nn@x.org"], Some("2G"))).unwrap());
    assert!(!dms.holds(&acct("ann@x.org", &["other@x.org"], Some("1G"))).unwrap());
}

#[test]
fn reapplying_a_change_the_files_hold_writes_nothing() {
    let e = Env::new();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    let dms = e.dms();
    dms.apply(None, Some(&a)).unwrap();
    let before = e.all();
    let ino = fs::metadata(e.d.path("dms/postfix-accounts.cf")).unwrap().ino();
    dms.apply(None, Some(&a)).unwrap();
    dms.apply(Some(&a), Some(&a)).unwrap();
    assert_eq!(e.all(), before);
    assert_eq!(fs::metadata(e.d.path("dms/postfix-accounts.cf")).unwrap().ino(), ino);
}

#[test]
fn an_account_the_admin_made_is_taken_and_nothing_is_written() {
    let e = Env::new();
    e.write("postfix-accounts.cf", "# admin\nAnn@x.org|{SHA512-CRYPT}$6$abc\n");
    let r = e.dms().apply(None, Some(&acct("ann@x.org", &["a.nn@x.org"], Some("1G"))));
    assert_eq!(r, Err(BackendError::Taken("ann@x.org".into())));
    assert_eq!(e.all(), ("# admin\nAnn@x.org|{SHA512-CRYPT}$6$abc\n".into(), String::new(), String::new()));
}

#[test]
fn an_alias_key_the_admin_owns_is_taken_and_nothing_is_written() {
    let e = Env::new();
    e.write("postfix-virtual.cf", "info@x.org bob@x.org\n");
    let r = e.dms().apply(None, Some(&acct("ann@x.org", &["info@x.org"], Some("1G"))));
    assert_eq!(r, Err(BackendError::Taken("info@x.org".into())));
    assert_eq!(e.all(), (String::new(), "info@x.org bob@x.org\n".into(), String::new()));
}

#[test]
fn an_alias_that_is_an_account_is_taken() {
    let e = Env::new();
    e.write("postfix-accounts.cf", "bob@x.org|h\n");
    let r = e.dms().apply(None, Some(&acct("ann@x.org", &["bob@x.org"], None)));
    assert_eq!(r, Err(BackendError::Taken("bob@x.org".into())));
    assert_eq!(e.accounts(), "bob@x.org|h\n");
}

#[test]
fn an_account_address_that_is_an_admin_alias_is_taken() {
    let e = Env::new();
    e.write("postfix-virtual.cf", "ann@x.org bob@x.org\n");
    let r = e.dms().apply(None, Some(&acct("ann@x.org", &[], None)));
    assert_eq!(r, Err(BackendError::Taken("ann@x.org".into())));
    assert_eq!(e.accounts(), "");
}

#[test]
fn admin_lines_and_comments_are_untouched_by_create_rename_and_delete() {
    let e = Env::new();
    let admin = (
        "# accounts\nadmin@x.org|{SHA512-CRYPT}$6$a\n\n".to_string(),
        "# aliases\npostmaster@x.org admin@x.org\nlist@x.org ann@x.org,admin@x.org\n".to_string(),
        "# quotas\nadmin@x.org:5G\n".to_string(),
    );
    e.write("postfix-accounts.cf", &admin.0);
    e.write("postfix-virtual.cf", &admin.1);
    e.write("dovecot-quotas.cf", &admin.2);
    let dms = e.dms();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    let b = acct("bea@x.org", &["b.ea@x.org"], Some("2G"));
    dms.apply(None, Some(&a)).unwrap();
    dms.apply(Some(&a), Some(&b)).unwrap();
    dms.apply(Some(&b), None).unwrap();
    assert_eq!(e.all(), admin);
}

#[test]
fn a_rename_keeps_the_hash_and_attributes_moves_aliases_quota_and_mailbox() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    dms.apply(None, Some(&a)).unwrap();
    // DMS made the mailbox; the admin added a user attribute.
    fs::create_dir_all(e.mailbox("x.org/ann/home")).unwrap();
    fs::write(e.mailbox("x.org/ann/home/mail"), "hello").unwrap();
    let line = e.accounts().trim_end().to_string();
    e.write("postfix-accounts.cf", &format!("{line}|userdb_mail=maildir:~/x\n"));
    let hash = line.split('|').nth(1).unwrap().to_string();
    let b = acct("bea@y.org", &["a.nn@x.org"], Some("1G"));
    dms.apply(Some(&a), Some(&b)).unwrap();
    assert_eq!(e.accounts(), format!("bea@y.org|{hash}|userdb_mail=maildir:~/x\n"));
    assert_eq!(e.virt(), "a.nn@x.org bea@y.org\n");
    assert_eq!(e.quotas(), "bea@y.org:1G\n");
    assert_eq!(fs::read_to_string(e.mailbox("y.org/bea/home/mail")).unwrap(), "hello");
    assert!(!e.mailbox("x.org/ann").exists());
    assert!(dms.holds(&b).unwrap());
}

#[test]
fn a_rename_onto_a_mailbox_that_holds_mail_is_taken() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &[], None);
    dms.apply(None, Some(&a)).unwrap();
    fs::create_dir_all(e.mailbox("x.org/ann/cur")).unwrap();
    fs::create_dir_all(e.mailbox("x.org/bea/cur")).unwrap();
    fs::write(e.mailbox("x.org/bea/cur/1"), "old mail").unwrap();
    let before = e.all();
    assert_eq!(dms.apply(Some(&a), Some(&acct("bea@x.org", &[], None))), Err(BackendError::Taken("bea@x.org".into())));
    assert_eq!(e.all(), before);
    assert!(e.mailbox("x.org/ann/cur").exists());
}

#[test]
fn a_rename_onto_a_mailbox_of_empty_directories_replaces_it() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &[], None);
    dms.apply(None, Some(&a)).unwrap();
    fs::create_dir_all(e.mailbox("x.org/ann/home")).unwrap();
    fs::write(e.mailbox("x.org/ann/home/m"), "mine").unwrap();
    fs::create_dir_all(e.mailbox("x.org/bea/home")).unwrap();
    dms.apply(Some(&a), Some(&acct("bea@x.org", &[], None))).unwrap();
    assert_eq!(fs::read_to_string(e.mailbox("x.org/bea/home/m")).unwrap(), "mine");
}

#[test]
fn a_delete_removes_account_aliases_and_quota_and_keeps_the_mailbox() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    dms.apply(None, Some(&a)).unwrap();
    fs::create_dir_all(e.mailbox("x.org/ann/cur")).unwrap();
    dms.apply(Some(&a), None).unwrap();
    assert_eq!(e.all(), (String::new(), String::new(), String::new()));
    assert!(e.mailbox("x.org/ann/cur").exists());
    dms.apply(Some(&a), None).unwrap();
}

#[test]
fn a_delete_with_delete_mailbox_removes_the_mailbox_and_an_empty_domain_dir() {
    let e = Env::new();
    let dms = Dms::with_wait(
        e.config(true),
        LockWait { clock: e.clock.clone(), sleep: Arc::new(|_| {}), bound: Duration::ZERO },
    );
    let a = acct("ann@x.org", &[], None);
    dms.apply(None, Some(&a)).unwrap();
    fs::create_dir_all(e.mailbox("x.org/ann/cur")).unwrap();
    fs::write(e.mailbox("x.org/ann/cur/1"), "m").unwrap();
    dms.apply(Some(&a), None).unwrap();
    assert!(!e.mailbox("x.org").exists());
}

#[test]
fn an_update_changes_aliases_and_quota_and_removes_a_quota_no_longer_set() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &["one@x.org", "two@x.org"], Some("1G"));
    dms.apply(None, Some(&a)).unwrap();
    let line = e.accounts();
    let b = acct("ann@x.org", &["two@x.org", "three@x.org"], None);
    dms.apply(Some(&a), Some(&b)).unwrap();
    assert_eq!(e.accounts(), line, "the account line (and its hash) stays");
    assert_eq!(e.virt(), "two@x.org ann@x.org\nthree@x.org ann@x.org\n");
    assert_eq!(e.quotas(), "");
}

#[test]
fn a_quota_the_admin_set_is_left_when_the_quota_is_not_managed() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &[], None);
    dms.apply(None, Some(&a)).unwrap();
    e.write("dovecot-quotas.cf", "ann@x.org:5G\n");
    dms.apply(Some(&a), Some(&a)).unwrap();
    assert_eq!(e.quotas(), "ann@x.org:5G\n");
    let b = acct("bea@x.org", &[], None);
    dms.apply(Some(&a), Some(&b)).unwrap();
    assert_eq!(e.quotas(), "bea@x.org:5G\n", "it follows the renamed account");
}

#[test]
fn an_account_line_lost_to_another_writer_is_repaired_by_reapplying() {
    let e = Env::new();
    let dms = e.dms();
    let a = acct("ann@x.org", &["a.nn@x.org"], None);
    dms.apply(None, Some(&a)).unwrap();
    e.write("postfix-accounts.cf", "admin@x.org|h\n");
    dms.apply(Some(&a), Some(&a)).unwrap();
    assert!(dms.holds(&a).unwrap());
    assert!(e.accounts().starts_with("admin@x.org|h\nann@x.org|{SSHA512}"));
}

#[test]
fn a_create_cut_short_before_the_account_line_is_completed_by_reapplying() {
    let e = Env::new();
    // What a crash after the quota and alias files, before the account file, leaves.
    e.write("dovecot-quotas.cf", "ann@x.org:1G\n");
    e.write("postfix-virtual.cf", "a.nn@x.org ann@x.org\n");
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    e.dms().apply(None, Some(&a)).unwrap();
    assert!(e.dms().holds(&a).unwrap());
    assert_eq!(e.virt(), "a.nn@x.org ann@x.org\n");
}

#[test]
fn a_create_whose_files_were_all_written_before_a_crash_is_reapplied_without_taken() {
    let e = Env::new();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    e.dms().apply(None, Some(&a)).unwrap();
    // The store still says nothing was applied: the service applies None -> a again.
    let before = e.all();
    e.dms().apply(None, Some(&a)).unwrap();
    assert_eq!(e.all(), before);
}

#[test]
fn a_rename_cut_short_after_the_mailbox_move_is_completed_by_reapplying() {
    let e = Env::new();
    let a = acct("ann@x.org", &["a.nn@x.org"], Some("1G"));
    let b = acct("bea@x.org", &["a.nn@x.org"], Some("1G"));
    e.dms().apply(None, Some(&a)).unwrap();
    let hash = e.accounts().trim_end().split('|').nth(1).unwrap().to_string();
    // Quota and alias files say b, the mailbox moved, the account file still says a.
    e.write("dovecot-quotas.cf", "bea@x.org:1G\n");
    e.write("postfix-virtual.cf", "a.nn@x.org bea@x.org\n");
    fs::create_dir_all(e.mailbox("x.org/bea/cur")).unwrap();
    fs::write(e.mailbox("x.org/bea/cur/1"), "m").unwrap();
    e.dms().apply(Some(&a), Some(&b)).unwrap();
    assert_eq!(e.accounts(), format!("bea@x.org|{hash}\n"));
    assert!(e.dms().holds(&b).unwrap());
    assert_eq!(fs::read_to_string(e.mailbox("x.org/bea/cur/1")).unwrap(), "m");
}

#[test]
fn a_rename_whose_files_were_all_written_before_a_crash_is_reapplied_without_taken() {
    let e = Env::new();
    let a = acct("ann@x.org", &[], None);
    let b = acct("bea@x.org", &[], None);
    e.dms().apply(None, Some(&a)).unwrap();
    e.dms().apply(Some(&a), Some(&b)).unwrap();
    let before = e.all();
    e.dms().apply(Some(&a), Some(&b)).unwrap();
    assert_eq!(e.all(), before);
}

#[test]
fn a_swap_of_address_and_alias_is_one_change() {
    let e = Env::new();
    let a = acct("ann@x.org", &["bea@x.org"], None);
    let b = acct("bea@x.org", &["ann@x.org"], None);
    e.dms().apply(None, Some(&a)).unwrap();
    e.dms().apply(Some(&a), Some(&b)).unwrap();
    assert!(e.accounts().starts_with("bea@x.org|"));
    assert_eq!(e.virt(), "ann@x.org bea@x.org\n");
}

#[test]
fn the_lock_holds_our_id_keeps_others_out_and_is_removed_when_released() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    let wait = LockWait { clock: e.clock.clone(), sleep: Arc::new(|_| {}), bound: Duration::ZERO };
    let held = dms::take_lock(&lock, &wait).unwrap();
    let id = fs::read_to_string(&lock).unwrap();
    assert!(id.starts_with("dovecot-oauth2d-") && id.ends_with('\n'), "{id:?}");
    // DMS's `_create_lock` waits while the file exists; so does a second change of ours.
    assert!(matches!(dms::take_lock(&lock, &wait), Err(BackendError::Busy(_))));
    drop(held);
    assert!(!lock.exists());
}

#[test]
fn the_lock_is_released_after_a_failed_change() {
    let e = Env::new();
    fs::create_dir(e.d.path("dms/dovecot-quotas.cf")).unwrap();
    let r = e.dms().apply(None, Some(&acct("ann@x.org", &[], Some("1G"))));
    assert!(matches!(r, Err(BackendError::Io(_))), "{r:?}");
    assert!(!e.d.path("dms/check-for-changes.sh.lock").exists());
}

#[test]
fn a_change_waits_while_the_changedetector_holds_its_lock() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    fs::write(&lock, "1b4e28ba-2fa1-11d2-883f-0016d3cca427\n").unwrap();
    let (l, accounts) = (lock.clone(), e.d.path("dms").join("postfix-accounts.cf"));
    let dms = e.dms_sleeping(move |n| {
        assert!(!accounts.exists(), "nothing is written while DMS holds the lock");
        if n == 3 {
            fs::remove_file(&l).unwrap();
        }
    });
    dms.apply(None, Some(&acct("ann@x.org", &[], None))).unwrap();
    assert!(e.accounts().starts_with("ann@x.org|"));
    assert!(!lock.exists());
}

#[test]
fn a_change_is_busy_when_the_lock_is_held_past_the_bound() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    fs::write(&lock, "theirs\n").unwrap();
    let r = e.dms().apply(None, Some(&acct("ann@x.org", &[], None)));
    assert!(matches!(r, Err(BackendError::Busy(_))), "{r:?}");
    assert_eq!(fs::read_to_string(&lock).unwrap(), "theirs\n", "their lock stays");
    assert_eq!(e.accounts(), "");
}

#[test]
fn a_lock_older_than_a_minute_is_stale_and_removed() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    fs::write(&lock, "theirs\n").unwrap();
    let old = SystemTime::now() - Duration::from_secs(61);
    fs::File::options().write(true).open(&lock).unwrap().set_modified(old).unwrap();
    e.dms().apply(None, Some(&acct("ann@x.org", &[], None))).unwrap();
    assert!(e.accounts().starts_with("ann@x.org|"));
    assert!(!lock.exists());
}

#[test]
fn a_lock_that_becomes_stale_while_waiting_is_removed() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    fs::write(&lock, "theirs\n").unwrap();
    let clock = e.clock.clone();
    let dms = Dms::with_wait(
        e.config(false),
        LockWait { clock: e.clock.clone(), sleep: Arc::new(move |d| clock.advance(d)), bound: Duration::from_secs(90) },
    );
    dms.apply(None, Some(&acct("ann@x.org", &[], None))).unwrap();
    assert!(e.accounts().starts_with("ann@x.org|"));
}

#[test]
fn a_lock_another_process_took_over_is_not_removed() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    let wait = LockWait { clock: e.clock.clone(), sleep: Arc::new(|_| {}), bound: Duration::ZERO };
    let held = dms::take_lock(&lock, &wait).unwrap();
    // DMS's `_create_lock` (test -e, then echo >) can overwrite a lock created in between.
    fs::write(&lock, "1b4e28ba-2fa1-11d2-883f-0016d3cca427\n").unwrap();
    drop(held);
    assert_eq!(fs::read_to_string(&lock).unwrap(), "1b4e28ba-2fa1-11d2-883f-0016d3cca427\n");
}

fn plain_config(e: &Env, after_change: &[&str]) -> PlainConfig {
    PlainConfig {
        passwd_file: e.d.path("passwd"),
        mailbox_map: e.d.path("vmailbox"),
        alias_map: e.d.path("virtual"),
        uid: 5000,
        gid: 5001,
        mail_root: e.d.path("mail"),
        delete_mailbox: false,
        after_change: after_change.iter().map(|s| s.to_string()).collect(),
    }
}

fn read(e: &Env, name: &str) -> String {
    fs::read_to_string(e.d.path(name)).unwrap_or_default()
}

/// An after-change command that counts its runs in `<dir>/runs`.
fn counting(e: &Env) -> Vec<String> {
    vec!["sh".into(), "-c".into(), "echo run >>\"$0\"".into(), e.d.path("runs").display().to_string()]
}

fn runs(e: &Env) -> usize {
    read(e, "runs").lines().count()
}

#[test]
fn a_plain_account_is_a_passwd_file_line_a_mailbox_map_line_and_alias_lines() {
    let e = Env::new();
    let p = Plain::new(plain_config(&e, &[]));
    let a = acct("ann@x.org", &["a.nn@x.org"], None);
    p.apply(None, Some(&a)).unwrap();
    let line = read(&e, "passwd");
    let f: Vec<&str> = line.trim_end().split(':').collect();
    let home = e.d.path("mail/x.org/ann").display().to_string();
    assert_eq!(
        (f[0], &f[1][..9], f[2], f[3], f[4], f[5], f[6], f[7]),
        ("ann@x.org", "{SSHA512}", "5000", "5001", "", home.as_str(), "", "")
    );
    assert_eq!(f.len(), 8);
    assert_eq!(read(&e, "vmailbox"), "ann@x.org x.org/ann/\n");
    assert_eq!(read(&e, "virtual"), "a.nn@x.org ann@x.org\n");
    assert!(p.holds(&a).unwrap());
}

#[test]
fn a_plain_change_runs_the_after_change_command_and_a_reapply_that_writes_nothing_does_not() {
    let e = Env::new();
    let cmd = counting(&e);
    let p = Plain::new(PlainConfig { after_change: cmd, ..plain_config(&e, &[]) });
    let a = acct("ann@x.org", &[], None);
    p.apply(None, Some(&a)).unwrap();
    assert_eq!(runs(&e), 1);
    p.apply(Some(&a), Some(&a)).unwrap();
    assert_eq!(runs(&e), 1);
    // A requested change the files already hold (a crash before the command ran) runs it again.
    p.apply(None, Some(&a)).unwrap();
    assert_eq!(runs(&e), 2);
}

#[test]
fn a_failing_after_change_command_is_an_io_error_with_its_output_escaped() {
    let e = Env::new();
    let p = Plain::new(plain_config(&e, &["sh", "-c", "printf 'postmap: bad\\nline\\033[31m' >&2; exit 3"]));
    match p.apply(None, Some(&acct("ann@x.org", &[], None))) {
        Err(BackendError::Io(m)) => {
            assert!(m.contains("postmap: bad\\nline\\u{1b}[31m"), "{m}");
            assert!(m.contains("exit status: 3"), "{m}");
            assert!(!m.contains('\n') && !m.contains('\x1b'), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_after_change_command_that_does_not_finish_is_killed_after_the_timeout() {
    let e = Env::new();
    let p = Plain::with_timeout(plain_config(&e, &["sleep", "60"]), Duration::from_millis(100));
    match p.apply(None, Some(&acct("ann@x.org", &[], None))) {
        Err(BackendError::Io(m)) => assert!(m.contains("killed"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_after_change_command_that_cannot_be_started_is_an_io_error() {
    let e = Env::new();
    let p = Plain::new(plain_config(&e, &["/nonexistent/postmap"]));
    assert!(matches!(p.apply(None, Some(&acct("ann@x.org", &[], None))), Err(BackendError::Io(_))));
}

#[test]
fn a_plain_rename_keeps_hash_and_extra_fields_and_moves_map_aliases_and_mailbox() {
    let e = Env::new();
    let p = Plain::new(plain_config(&e, &[]));
    let a = acct("ann@x.org", &["a.nn@x.org"], None);
    p.apply(None, Some(&a)).unwrap();
    let line = read(&e, "passwd");
    let hash = line.split(':').nth(1).unwrap().to_string();
    fs::write(e.d.path("passwd"), format!("{}userdb_quota_rule=*:storage=1G\n", line.trim_end())).unwrap();
    fs::create_dir_all(e.mailbox("x.org/ann/cur")).unwrap();
    let b = acct("bea@x.org", &["a.nn@x.org"], None);
    p.apply(Some(&a), Some(&b)).unwrap();
    let home = e.d.path("mail/x.org/bea").display().to_string();
    assert_eq!(read(&e, "passwd"), format!("bea@x.org:{hash}:5000:5001::{home}::userdb_quota_rule=*:storage=1G\n"));
    assert_eq!(read(&e, "vmailbox"), "bea@x.org x.org/bea/\n");
    assert_eq!(read(&e, "virtual"), "a.nn@x.org bea@x.org\n");
    assert!(e.mailbox("x.org/bea/cur").exists());
}

#[test]
fn a_plain_account_the_admin_made_is_taken() {
    let e = Env::new();
    fs::write(e.d.path("passwd"), "ann@x.org:{PLAIN}x:1:1::/home/ann::\n").unwrap();
    let p = Plain::new(plain_config(&e, &[]));
    assert_eq!(p.apply(None, Some(&acct("ann@x.org", &[], None))), Err(BackendError::Taken("ann@x.org".into())));
    assert_eq!(read(&e, "vmailbox"), "");
}

#[test]
fn a_plain_mailbox_map_entry_of_the_admin_is_taken() {
    let e = Env::new();
    fs::write(e.d.path("vmailbox"), "# admin\nann@x.org elsewhere/ann/\n").unwrap();
    let p = Plain::new(plain_config(&e, &[]));
    assert_eq!(p.apply(None, Some(&acct("ann@x.org", &[], None))), Err(BackendError::Taken("ann@x.org".into())));
    assert_eq!(read(&e, "passwd"), "");
}

#[test]
fn a_plain_delete_removes_the_lines_and_keeps_admin_lines() {
    let e = Env::new();
    fs::write(e.d.path("virtual"), "# aliases\npostmaster@x.org admin@x.org\n").unwrap();
    let p = Plain::new(plain_config(&e, &[]));
    let a = acct("ann@x.org", &["a.nn@x.org"], None);
    p.apply(None, Some(&a)).unwrap();
    p.apply(Some(&a), None).unwrap();
    assert_eq!(read(&e, "passwd"), "");
    assert_eq!(read(&e, "vmailbox"), "");
    assert_eq!(read(&e, "virtual"), "# aliases\npostmaster@x.org admin@x.org\n");
}

#[test]
fn a_plain_account_line_with_another_uid_is_rewritten_keeping_its_hash() {
    let e = Env::new();
    let a = acct("ann@x.org", &[], None);
    Plain::new(plain_config(&e, &[])).apply(None, Some(&a)).unwrap();
    let hash = read(&e, "passwd").split(':').nth(1).unwrap().to_string();
    let p = Plain::new(PlainConfig { uid: 6000, ..plain_config(&e, &[]) });
    assert!(!p.holds(&a).unwrap());
    p.apply(Some(&a), Some(&a)).unwrap();
    assert!(p.holds(&a).unwrap());
    assert_eq!(read(&e, "passwd").split(':').nth(1).unwrap(), hash);
}

#[test]
fn a_lock_left_by_a_daemon_that_is_gone_is_removed_at_once() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    // a pid above any kernel's pid_max: no such process
    fs::write(&lock, "dovecot-oauth2d-4294967-0123456789abcdef\n").unwrap();
    let wait = LockWait { clock: e.clock.clone(), sleep: Arc::new(|_| panic!("no wait")), bound: Duration::ZERO };
    Dms::with_wait(e.config(false), wait).apply(None, Some(&acct("ann@x.org", &[], None))).unwrap();
    assert!(e.accounts().starts_with("ann@x.org|"));
}

#[test]
fn a_lock_of_ours_whose_pid_is_now_another_program_is_removed_at_once() {
    let e = Env::new();
    let lock = e.d.path("dms").join("check-for-changes.sh.lock");
    fs::write(&lock, "dovecot-oauth2d-1-0123456789abcdef\n").unwrap(); // pid 1 is not a dovecot-oauth2d
    let wait = LockWait { clock: e.clock.clone(), sleep: Arc::new(|_| panic!("no wait")), bound: Duration::ZERO };
    Dms::with_wait(e.config(false), wait).apply(None, Some(&acct("ann@x.org", &[], None))).unwrap();
    assert!(e.accounts().starts_with("ann@x.org|"));
}
