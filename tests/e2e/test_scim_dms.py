"""Issue 13: SCIM provisioning into docker-mailserver, checked with DMS's own account scripts and real
Postfix and Dovecot.

One DMS edge tree (dms_edge.build_tree: Debian 13's Dovecot 2.4.1 configuration with DMS edge's files)
switched by docker/user-patches.sh; dovecot-oauth2d runs from the settings file the script wrote, with
the scim_* keys added (DMS backend on the tree's /tmp/docker-mailserver and /var/mail), as root on the
host (the paths of the settings file moved into the tree). DMS's bin/ and helpers/ (tests/fixtures/
dms-edge-c9b015d) are the tree's /usr/local/bin; they run with bash on the host in a private mount
namespace where the tree's /usr/local/bin and /tmp (and, for the changedetector's rebuild, /etc/dovecot,
/etc/postfix and /var/mail) are the real ones, so they read and write the files the service wrote.
The rebuild is DMS's own _create_postfix_vhost, _create_accounts and _handle_postfix_virtual_config
and _chown_var_mail_if_necessary
(what check-for-changes.sh runs for a changed postfix-accounts.cf / postfix-virtual.cf); Postfix
(the host's, mailstack.MailStack) reads the maps it wrote, as DMS's Postfix does (virtual_mailbox_domains
= /etc/postfix/vhost from DMS's main.cf, virtual_mailbox_maps = texthash:/etc/postfix/vmailbox,
virtual_alias_maps = texthash:/etc/postfix/virtual); Dovecot 2.4.1 reads the userdb it wrote and asks
the same daemon to introspect tokens of the real oidc-provider.

Test-only: the userdb the host's bash wrote is given to the image's dovecot user (the chroot's id), as
DMS's `chown dovecot:dovecot` does in the image.
"""

from __future__ import annotations

import imaplib
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading

import pytest

import dms_edge
import scim
from dms_edge import EDGE_FILES, EdgeDovecot, Stage, build_tree, run_user_patches
from dovecot24 import chroot_dir, chroot_problem
from mailstack import HOST, MailStack
from scim import ScimDaemon, patch, user
from test_scim_plain import LUA_SCRIPT, rcpt
from test_scim_protocol import need, scim_problem

DOMAIN = "example.test"  # the IdP's users' domain (carol@example.test has no DMS account at first)
CAROL = "carol@example.test"
SETTINGS = "etc/dovecot/dovecot-oauth2.conf.ext"
DMS_ENV = {"ACCOUNT_PROVISIONER": "FILE", "DMS_VMAIL_UID": "5000", "DMS_VMAIL_GID": "5000", "ENABLE_QUOTAS": "1",
           "PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LOG_LEVEL": "warn"}


def dms_bash(stage: Stage, script: str, rebuild: bool = False, timeout: float = 120,
             **env_over: str) -> subprocess.CompletedProcess:
    """bash -c script with DMS's paths: the tree's /usr/local/bin and /tmp; with rebuild, also its
    /etc/dovecot, /etc/postfix and /var/mail. /tmp goes last: the tree lies outside it."""
    binds = ["/usr/local/bin"] + (["/etc/dovecot", "/etc/postfix", "/var/mail"] if rebuild else []) + ["/tmp"]
    mounts = "".join(f'mount --bind "{stage.root}{p}" "{p}"\n' for p in binds)
    env = " ".join(f"{k}={v}" for k, v in {**DMS_ENV, **env_over}.items())
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           "set -e\n" + mounts + f'exec env -i {env} bash -c "$0"', script],
                          capture_output=True, text=True, timeout=timeout)


def setup_email(stage: Stage, *args: str) -> subprocess.CompletedProcess:
    """DMS's account commands as `setup email add ...` runs them (bin/addmailuser etc.)."""
    names = {"add": "addmailuser", "del": "delmailuser", "list": "listmailuser"}
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args[1:])
    # listmailuser shows quotas with `doveadm quota get`, which needs the running Dovecot's quota
    # plugin: not what these tests look at
    extra = {"ENABLE_QUOTAS": "0"} if args[0] == "list" else {}
    return dms_bash(stage, f"/usr/local/bin/{names[args[0]]} {quoted}", **extra)


def rebuild(stage: Stage, dovecot: EdgeDovecot | None = None) -> None:
    """What DMS's changedetector runs for changed account files (check-for-changes.sh, _handle_changes),
    and its `dovecot reload` afterwards when `dovecot` is given (SIGHUP to the master: what a reload is)."""
    p = dms_bash(stage, "source /usr/local/bin/helpers/index.sh\n_create_postfix_vhost\n_create_accounts\n"
                        "_handle_postfix_virtual_config\n_chown_var_mail_if_necessary\n", rebuild=True)
    assert p.returncode == 0, p.stdout + p.stderr
    dovecot_ids = (dms_edge._id(stage.path("etc/passwd"), "dovecot"), dms_edge._id(stage.path("etc/group"), "dovecot"))
    os.chown(stage.path("etc/dovecot/userdb"), *dovecot_ids)
    if dovecot is not None:
        mark = dovecot.log_mark()
        os.kill(dovecot._proc.pid, signal.SIGHUP)
        text = dovecot.wait_log(mark, "SIGHUP received", timeout=30)
        assert "SIGHUP received" in text, text


@pytest.fixture(scope="module")
def dms(workroot, idp):
    need(scim_problem())
    need(chroot_problem())
    chroot = chroot_dir()
    st = Stage(chroot)
    imap_port, listen_port, scim_port = dms_edge.free_ports(3)
    # SCIM as a DMS admin turns it on: OAUTH2_SCIM_* variables, the token in the config volume
    env = {"ENABLE_OAUTH2": "1", "OAUTH2_INTROSPECTION_URL": idp.userinfo_url, "OAUTH2_MAX_IDLE_TIME_MSECS": "2000",
           "OAUTH2_LISTEN": f"127.0.0.1:{listen_port}", "OAUTH2_SCIM_LISTEN": f"127.0.0.1:{scim_port}",
           "OAUTH2_SCIM_TOKEN": f"<{st.inside}/tmp/docker-mailserver/scim.token", "OAUTH2_SCIM_DOMAINS": DOMAIN}
    d = dov = stack = None
    try:
        build_tree(st, env=env, imap_port=imap_port, daemon=dms_edge.BUILT_DAEMON)
        with open(st.path("tmp/docker-mailserver/scim.token"), "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        p = run_user_patches(st, env)
        assert p.returncode == 0 and "switched Dovecot 2.4.1" in p.stdout, p.stdout + p.stderr
        written = st.read(SETTINGS)
        for key in ("scim_listen", "scim_token", "scim_domains"):
            assert re.search(rf"^{key} = ", written, re.M), (key, written)
        # it writes DMS's account files, which root owns: the daemon runs as root with SCIM
        assert re.search(r"^user=root$", st.read("etc/supervisor/conf.d/dovecot-oauth2d.conf"), re.M)
        # DMS's account scripts at their image paths
        shutil.copytree(os.path.join(EDGE_FILES, "helpers"), st.path("usr/local/bin/helpers"))
        for name in os.listdir(os.path.join(EDGE_FILES, "bin")):
            shutil.copy(os.path.join(EDGE_FILES, "bin", name), st.path("usr/local/bin/" + name))
        os.makedirs(st.path("etc/postfix"), exist_ok=True)
        for name in ("vhost", "vmailbox", "virtual"):
            open(st.path("etc/postfix/" + name), "a").close()
        config_dir = st.path("tmp/docker-mailserver")
        # the daemon: the settings user-patches.sh wrote (paths moved into the tree) + the scim_* keys
        # (the SCIM listener and token the harness sets come after the script's, and are used)
        settings = written.replace("</etc/dovecot/", "<" + st.path("etc/dovecot") + "/").replace(
            "<" + st.inside + "/", "<" + st.root + "/")
        d = ScimDaemon(os.path.join(st.dir, "scim-daemon"), settings, {
            "scim_domains": DOMAIN, "scim_backend": "dms", "scim_dms_config_dir": config_dir,
            "scim_mail_root": st.path("var/mail"), "scim_aliases": "yes", "scim_delete_mailbox": "no",
            "scim_quota_attribute": scim.QUOTA_ATTRIBUTE}, own_listener=False).start()
        assert d.port == listen_port, d.log_since(0)
        # Postfix with DMS's maps of the tree (see the module docstring)
        stack = MailStack(os.path.join(st.dir, "postfix"), lua_script=LUA_SCRIPT, settings_file=None,
                          module_dir=None,
                          passdb_conf="passdb {{\n  driver = passwd-file\n  args = {passwd_file}\n}}\n")
        subprocess.run(["postconf", "-c", stack.pf_config_dir, "-e",
                        f"virtual_mailbox_domains = {st.path('etc/postfix/vhost')}",
                        f"virtual_mailbox_maps = texthash:{st.path('etc/postfix/vmailbox')}",
                        f"virtual_alias_maps = texthash:{st.path('etc/postfix/virtual')}",
                        "virtual_transport = discard", "smtpd_relay_restrictions = reject_unauth_destination",
                        "max_use = 1"],  # a fresh smtpd (fresh texthash: tables) per client
                       check=True, capture_output=True)
        stack.start()
        dov = EdgeDovecot(st, imap_port)
        dov.start()
        yield {"stage": st, "daemon": d, "config": config_dir, "postfix": stack, "dovecot": dov}
    finally:
        if dov:
            dov.stop()
        if stack:
            stack.stop()
        if d:
            d.stop()
        leftover = dms_edge.stage_pids(st)
        if not os.environ.get("KEEP_E2E_DIR") and not leftover:
            st.remove()
        assert not leftover, leftover


def _by_name(d: ScimDaemon, name: str) -> dict | None:
    found = d.find(f'userName eq "{name}"').json["Resources"]
    return found[0] if found else None


def test_listmailuser_lists_the_provisioned_user_and_its_alias(dms):
    dms["daemon"].create(user("lia@example.test", "lia@example.test", "lia.alias@example.test"))
    p = setup_email(dms["stage"], "list")
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^\* lia@example\.test\b", p.stdout, re.M), p.stdout
    assert "lia.alias@example.test" in p.stdout, p.stdout


def test_admins_setup_email_add_concurrent_with_scim_creates_loses_no_entry(dms):
    d, st = dms["daemon"], dms["stage"]
    n = 10
    results: dict[str, int] = {}

    def scim_creates():
        for i in range(n):
            results[f"s{i}@example.test"] = d.scim("POST", "/Users", user(f"s{i}@example.test")).status

    t = threading.Thread(target=scim_creates)
    t.start()
    admin = [setup_email(st, "add", f"a{i}@example.test", f"admin-pw-{i}") for i in range(n)]
    t.join(120)
    assert all(p.returncode == 0 for p in admin), [p.stderr for p in admin if p.returncode]
    assert set(results.values()) == {201}, results
    held = scim.accounts(dms["config"])
    missing = [a for a in [f"a{i}@example.test" for i in range(n)] + list(results) if a not in held]
    assert not missing, missing
    assert all(held[f"a{i}@example.test"].startswith("{SHA512-CRYPT}") for i in range(n))


def test_changedetector_rebuild_gives_postfix_and_dovecot_the_provisioned_account(dms):
    dms["daemon"].create(user("max@example.test", "max@example.test", "maxi@example.test"))
    rebuild(dms["stage"])
    vmailbox = dms["stage"].read("etc/postfix/vmailbox")
    assert "max@example.test example.test/max/\n" in vmailbox, vmailbox
    userdb = dms["stage"].read("etc/dovecot/userdb")
    assert re.search(r"^max@example\.test:\{SSHA512\}[^:]+:5000:5000::/var/mail/example\.test/max/home::", userdb, re.M), \
        userdb
    assert re.search(r"^maxi@example\.test\s+max@example\.test$", dms["stage"].read("etc/postfix/virtual"), re.M)


def test_postfix_accepts_a_provisioned_address_and_its_alias(dms):
    dms["daemon"].create(user("ned@example.test", "ned@example.test", "neddy@example.test"))
    rebuild(dms["stage"])
    assert rcpt(dms["postfix"], "ned@example.test") == 250
    assert rcpt(dms["postfix"], "neddy@example.test") == 250
    assert rcpt(dms["postfix"], "nobody@example.test") == 550


def test_postfix_refuses_a_deleted_address(dms):
    u = dms["daemon"].create(user("oli@example.test", "oli@example.test", "oli.alias@example.test"))
    rebuild(dms["stage"])
    assert rcpt(dms["postfix"], "oli@example.test") == 250
    assert dms["daemon"].scim("DELETE", f"/Users/{u['id']}").status == 204
    rebuild(dms["stage"])
    assert rcpt(dms["postfix"], "oli@example.test") == 550
    assert rcpt(dms["postfix"], "oli.alias@example.test") == 550


def test_postfix_refuses_a_deactivated_address(dms):
    u = dms["daemon"].create(user("pia@example.test"))
    rebuild(dms["stage"])
    assert rcpt(dms["postfix"], "pia@example.test") == 250
    r = dms["daemon"].scim("PATCH", f"/Users/{u['id']}", patch({"op": "Replace", "path": "active", "value": "False"}))
    assert r.status in (200, 204), r.text
    rebuild(dms["stage"])
    assert rcpt(dms["postfix"], "pia@example.test") == 550


def test_provisioned_user_logs_in_over_imap_with_a_real_token_and_not_after_delete(dms, live_idp):
    d, dov = dms["daemon"], dms["dovecot"]
    u = d.create(user(CAROL))
    rebuild(dms["stage"], dov)
    mark = dov.log_mark()
    r = dov.imap_login(CAROL, live_idp.token("carol"), "XOAUTH2")
    assert r.ok, r.text + dov.log_since(mark)
    assert d.scim("DELETE", f"/Users/{u['id']}").status == 204
    rebuild(dms["stage"], dov)
    mark = dov.log_mark()
    r = dov.imap_login(CAROL, live_idp.token("carol"), "XOAUTH2")
    assert not r.ok, r.text + "\n" + dov.log_since(mark) + dms["stage"].read("etc/dovecot/userdb") + open(dms["config"] + "/postfix-accounts.cf").read()


def _inbox_subjects(port: int, login: str, token: str) -> list[bytes]:
    """The subjects in INBOX, read over IMAP by a user logged in with XOAUTH2."""
    imap = imaplib.IMAP4(HOST, port, timeout=30)
    try:
        auth = f"user={login}\x01auth=Bearer {token}\x01\x01".encode()
        imap.authenticate("XOAUTH2", lambda _: auth)
        typ, _ = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [part[1] for part in data if isinstance(part, tuple)]
    finally:
        imap.shutdown()


def test_a_rename_onto_a_kept_mailbox_with_mail_is_a_conflict(dms):
    """carol's mailbox stays after her deletion (the login test): another user with a mailbox of its
    own renamed to carol would merge the two, so the rename is refused and nothing changes."""
    d = dms["daemon"]
    assert os.path.isdir(dms["stage"].path(f"var/mail/{DOMAIN}/carol"))
    u = d.create(user("carol.other@" + DOMAIN))
    rebuild(dms["stage"])  # DMS makes its mailbox folder
    assert os.path.isdir(dms["stage"].path(f"var/mail/{DOMAIN}/carol.other"))
    before = scim.dms_files(dms["config"])
    r = d.scim("PATCH", f"/Users/{u['id']}", patch({"op": "replace", "path": "userName", "value": CAROL}))
    assert r.status == 409, r.text
    assert scim.dms_files(dms["config"]) == before
    assert d.scim("DELETE", f"/Users/{u['id']}").status == 204


def test_rename_keeps_the_mailbox(dms, live_idp):
    """A message in the old account's maildir is in the renamed account's INBOX, read over IMAP."""
    d, st = dms["daemon"], dms["stage"]
    # bob: carol's mailbox, kept after the login test deleted her, is not free for a rename
    new = "bob@" + DOMAIN
    old = "bob.before@" + DOMAIN
    u = d.create(user(old))
    rebuild(st)
    # a message delivered into the account's maildir as Dovecot's LMTP leaves it, owned by the
    # userdb's uid/gid (DMS's docker user)
    fields = next(ln for ln in st.read("etc/dovecot/userdb").splitlines() if ln.startswith(old + ":")).split(":")
    uid, gid = int(fields[2]), int(fields[3])
    maildir = st.path(f"var/mail/{DOMAIN}/bob.before")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    msg = os.path.join(maildir, "new", "1700000000.M1P1.scimtest")
    with open(msg, "wb") as f:
        f.write(b"From: a@example.net\r\nTo: " + old.encode() + b"\r\nSubject: before the rename\r\n\r\nhello\r\n")
    for root_, dirs, files in os.walk(os.path.dirname(maildir)):
        for name in [root_, *(os.path.join(root_, x) for x in dirs + files)]:
            os.chown(name, uid, gid)
    r = d.scim("PATCH", f"/Users/{u['id']}", patch({"op": "replace", "path": "userName", "value": new}))
    assert r.status in (200, 204), r.text
    rebuild(st, dms["dovecot"])
    accounts = scim.accounts(dms["config"])
    assert new in accounts and old not in accounts
    assert not os.path.exists(maildir)
    subjects = _inbox_subjects(dms["dovecot"].imap_port, new, live_idp.token("bob"))
    assert any(b"before the rename" in s for s in subjects), subjects
    assert d.scim("DELETE", f"/Users/{u['id']}").status == 204
