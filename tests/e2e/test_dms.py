"""Issue 4: docker/user-patches.sh against docker-mailserver v15.1.0's real configuration.

A scratch root is laid out as the DMS image has it when user-patches.sh runs (dms_root.build_tree:
Debian 12's stock /etc/dovecot and /etc/postfix with DMS's files over them, DMS's ENABLE_OAUTH2 edits,
passwd-file accounts, the config volume with the script, the built module and the Lua script);
the script runs with DMS_ROOT pointing at it; then real Dovecot and Postfix run from the patched tree
in a private mount namespace (DMS's absolute paths bind-mounted) against the real oidc-provider.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest

import dms_root
from conftest import BUILT_MODULE
from dms_root import DmsStack, build_tree, run_user_patches, snapshot

ALICE, BOB = "alice@example.test", "bob@example.test"
PASSDB_CONF = "etc/dovecot/conf.d/auth-oauth2.conf.ext"
SETTINGS = "etc/dovecot/dovecot-oauth2.conf.ext"


def _env(idp, **extra) -> dict[str, str]:
    return {"ENABLE_OAUTH2": "1", "OAUTH2_INTROSPECTION_URL": idp.userinfo_url, **extra}


def _new_root(workroot: str, name: str) -> str:
    d = tempfile.mkdtemp(prefix=f"dms-{name}-", dir=workroot)
    os.chmod(d, 0o755)
    return os.path.join(d, "root")


@pytest.fixture
def fresh_tree(workroot, idp):
    """fresh_tree(name, module=True, env=...) -> root of a new DMS tree (script not yet run)."""
    def make(name: str, module: bool = True, env: dict | None = None, enable_oauth2: bool = True) -> str:
        root = _new_root(workroot, name)
        build_tree(root, module=BUILT_MODULE if module else None, env=env or _env(idp),
                   enable_oauth2=enable_oauth2)
        return root
    return make


def _read(root: str, rel: str) -> str:
    with open(os.path.join(root, rel)) as f:
        return f.read()


def _doveconf(root: str) -> str:
    p = subprocess.run(["doveconf", "-c", os.path.join(root, "etc/dovecot/dovecot.conf"), "-n"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _assert_dms_oauth2_in_place(root: str, before: dict) -> None:
    """DMS's own files and passdb unchanged, and Dovecot accepts the configuration."""
    after = snapshot(root)
    for rel in (PASSDB_CONF, SETTINGS, "etc/dovecot/conf.d/10-auth.conf"):
        assert after[rel] == before[rel], rel
    assert not [p for p in after if p.endswith(".dms-orig")]
    conf = _doveconf(root)
    assert re.search(r"^\s*driver = oauth2$", conf, re.M), conf
    assert "driver = lua" not in conf


# --- a switched DMS: token and password logins ------------------------------------------------------

@pytest.fixture(scope="class")
def dms(workroot, idp):
    """One tree switched by user-patches.sh, with Dovecot + Postfix running from it (class scope:
    DMS's quota-status listener has a fixed port, so two stacks never run at once)."""
    root = _new_root(workroot, "switched")
    imap_port, submission_port = DmsStack.free_ports()
    # OAUTH2_MAX_TOKEN_BYTES: an extension key DMS's file lacks (checked below). max_idle_time_msecs:
    # the test IdP (node) closes idle keep-alive connections after 5 s; a pooled connection kept
    # longer (default 60 s) can be closed under the module's next request (a temporary failure).
    env = _env(idp, OAUTH2_MAX_TOKEN_BYTES="64", OAUTH2_MAX_IDLE_TIME_MSECS="2000")
    build_tree(root, module=BUILT_MODULE, env=env, imap_port=imap_port,
               submission_port=submission_port)
    p = run_user_patches(root, env)
    assert p.returncode == 0 and "switched the oauth2 passdb" in p.stdout, p.stdout + p.stderr
    stack = DmsStack(root, imap_port, submission_port)
    # IMAP from 127.0.0.1 to 127.0.0.1: Dovecot counts a connection from the same address as
    # secured (DMS keeps disable_plaintext_auth = yes, so other sources would need TLS).
    stack.client_ip = "127.0.0.1"
    stack.start()
    yield stack
    stack.stop()


def _smtp(dms, user, token, mech):
    """Postfix submission as DMS runs it (STARTTLS first: smtpd_tls_security_level=encrypt), from a
    random 127/8 source (Dovecot's per-IP auth penalty then never slows other tests)."""
    fixed, dms.client_ip = dms.client_ip, None
    try:
        return dms.smtp_login(user, token, mech, starttls=True)
    finally:
        dms.client_ip = fixed


def _smtp_auth_ok_logged(log: str) -> bool:
    # Postfix logs "sasl_method=..., sasl_username=..." once a message starts (MAIL FROM); a
    # login-only session shows up as "disconnect from ... auth=1"
    return re.search(r"postfix/submission/smtpd\[\d+\]: disconnect from \S+ .*\bauth=1\b", log) is not None


class TestSwitchedDms:
    """One tree switched by user-patches.sh (with an extension key, OAUTH2_MAX_TOKEN_BYTES, that DMS's
    settings file does not have), and Dovecot + Postfix running from it."""

    def test_imap_oauthbearer_login_succeeds(self, dms, live_idp):
        mark = dms.log_mark()
        r = dms.imap_login(ALICE, live_idp.token("alice"), "OAUTHBEARER")
        assert r.ok, r.text
        # DMS's syslog line "dovecot: imap-login: Login: user=<...>, method=OAUTHBEARER" (plus the level here)
        assert re.search(rf"imap-login: (Info: )?Login: user=<{ALICE}>, method=OAUTHBEARER,",
                         dms.wait_log(mark, "Login: user="))

    def test_imap_xoauth2_login_succeeds(self, dms, live_idp):
        mark = dms.log_mark()
        r = dms.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
        assert r.ok, r.text
        # DMS's syslog line "dovecot: imap-login: Login: user=<...>, method=XOAUTH2" (plus the level here)
        assert re.search(rf"imap-login: (Info: )?Login: user=<{ALICE}>, method=XOAUTH2,",
                         dms.wait_log(mark, "Login: user="))

    def test_smtp_submission_oauthbearer_succeeds(self, dms, live_idp):
        mark = dms.log_mark()
        r = _smtp(dms, BOB, live_idp.token("bob"), "OAUTHBEARER")
        assert r.ok, r.transcript
        log = dms.wait_log(mark, "auth=1")
        assert _smtp_auth_ok_logged(log), log

    def test_smtp_submission_xoauth2_succeeds(self, dms, live_idp):
        mark = dms.log_mark()
        r = _smtp(dms, BOB, live_idp.token("bob"), "XOAUTH2")
        assert r.ok, r.transcript
        log = dms.wait_log(mark, "auth=1")
        assert _smtp_auth_ok_logged(log), log

    def test_plain_password_login_of_passwd_file_account_still_works(self, dms):
        r = dms.imap_plain_login(BOB, dms_root.ACCOUNTS[BOB])
        assert r.ok, r.text

    def test_token_login_never_logs_password_mismatch(self, dms, live_idp):
        mark = dms.log_mark()
        assert dms.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2").ok
        # a refused token too (over submission: random source addresses keep Dovecot's per-IP
        # penalty off the IMAP tests); it is refused by the Lua passdb, never tried on passwd-file
        r = _smtp(dms, BOB, live_idp.token("alice"), "XOAUTH2")
        assert not r.ok and r.text.startswith("535"), r.transcript
        log = dms.wait_log(mark, "authentication failed: token belongs to")
        assert "dovecot-oauth2: authentication failed: token belongs to" in log, log
        # Dovecot itself logs the Lua passdb's refusal as "lua(USER,IP): Password mismatch" (DMS sets
        # auth_verbose = yes): a refused token is a failed login for Fail2Ban. The passwd-file passdb
        # (mechanisms = plain login) never sees a token.
        assert "passwd-file" not in log, log
        mismatches = [ln for ln in log.splitlines() if "Password mismatch" in ln]
        assert len(mismatches) == 1 and f"lua({BOB}," in mismatches[0], log

    def test_extension_variable_lands_in_settings_file_and_takes_effect(self, dms, live_idp):
        settings = _read(dms.root, SETTINGS)
        assert "max_token_bytes" not in _read(dms.root, SETTINGS + ".dms-orig")
        assert re.search(r"^max_token_bytes = 64$", settings, re.M), settings
        assert re.search(rf"^introspection_url = {re.escape(live_idp.userinfo_url)}$", settings, re.M)
        live_idp.reset_stats()
        mark = dms.log_mark()
        r = _smtp(dms, ALICE, "t" * 100, "OAUTHBEARER")
        assert not r.ok and r.text.startswith("535"), r.transcript
        log = dms.wait_log(mark, "over max_token_bytes")
        assert "token is 100 bytes, over max_token_bytes (64)" in log, log
        # refused before any provider request; a real (43-byte) token still works
        assert not any(v for k, v in live_idp.stats().items() if "userinfo" in k.lower() or k == "/me"), \
            live_idp.stats()
        assert dms.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2").ok


# --- the script on its own ------------------------------------------------------------------------

def test_running_the_script_twice_gives_identical_files(fresh_tree, idp):
    root = fresh_tree("twice")
    env = _env(idp, OAUTH2_CACHE_TTL_SECS="120", OAUTH2_DEBUG="yes")
    first = run_user_patches(root, env)
    assert first.returncode == 0 and "switched" in first.stdout, first.stdout + first.stderr
    once = snapshot(root)
    second = run_user_patches(root, env)
    assert second.returncode == 0 and "switched" in second.stdout, second.stdout + second.stderr
    assert snapshot(root) == once
    assert "driver = lua" in _read(root, PASSDB_CONF)


def test_enable_oauth2_unset_changes_nothing(fresh_tree, idp):
    root = fresh_tree("unset")
    before = snapshot(root)
    for env in ({"OAUTH2_INTROSPECTION_URL": idp.userinfo_url}, {"ENABLE_OAUTH2": "0"}):
        p = run_user_patches(root, env)
        assert p.returncode == 0, p.stderr
        assert "nothing to do" in p.stdout
        assert snapshot(root) == before


def test_unknown_oauth2_key_is_refused_and_dms_config_kept(fresh_tree, idp):
    root = fresh_tree("unknown")
    before = snapshot(root)
    p = run_user_patches(root, _env(idp, OAUTH2_CACHE_TTL="60"))
    assert p.returncode == 0
    assert "OAUTH2_CACHE_TTL: 'cache_ttl' is not a dovecot-oauth2 setting" in p.stderr, p.stderr
    assert "[dovecot-oauth2] ERROR: not switched" in p.stderr
    _assert_dms_oauth2_in_place(root, before)
    assert snapshot(root) == before
    # DOVECOT_OAUTH2_STRICT=1: the same, but the script fails
    p = run_user_patches(root, _env(idp, OAUTH2_CACHE_TTL="60", DOVECOT_OAUTH2_STRICT="1"))
    assert p.returncode == 1 and snapshot(root) == before


def test_unknown_key_refused_on_a_rerun_puts_dms_files_back(fresh_tree, idp):
    root = fresh_tree("rerun-unknown")
    before = snapshot(root)
    assert run_user_patches(root, _env(idp)).returncode == 0
    assert "driver = lua" in _read(root, PASSDB_CONF)
    p = run_user_patches(root, _env(idp, OAUTH2_NO_SUCH_KEY="x"))
    assert "'no_such_key' is not a dovecot-oauth2 setting" in p.stderr, p.stderr
    assert "restored docker-mailserver's original" in p.stdout, p.stdout
    _assert_dms_oauth2_in_place(root, before)


def test_failed_doveconf_check_restores_dms_files(fresh_tree, idp):
    # DMS did not enable the include (as without ENABLE_OAUTH2 handling): the Lua passdb is not in
    # Dovecot's configuration after the switch, so the script must undo it.
    root = fresh_tree("noinclude", enable_oauth2=False)
    before = snapshot(root)
    p = run_user_patches(root, _env(idp))
    assert "the Lua passdb is not in Dovecot's configuration" in p.stderr, p.stderr
    assert "restored docker-mailserver's original" in p.stdout, p.stdout
    after = snapshot(root)
    for rel in (PASSDB_CONF, SETTINGS):
        assert after[rel] == before[rel], rel
    assert not [k for k in after if k.endswith(".dms-orig")]


def test_known_keys_in_script_match_src_config():
    """user-patches.sh refuses keys the module does not know; its list must be the module's."""
    src = open(os.path.join(dms_root.REPO, "src", "config.rs")).read()
    parse_keys = set(re.findall(r'^ {16}"([a-z0-9_]+)" =>', src, re.M))
    ignored = set(re.findall(r'^ {4}\("([a-z0-9_]+)", "', src, re.M))
    scim_src = open(os.path.join(dms_root.REPO, "src", "scim", "settings.rs")).read()
    scim = set(re.findall(r'^ {4}"(scim_[a-z0-9_]+)",$', scim_src, re.M))
    assert "scim_listen" in scim
    script = open(dms_root.USER_PATCHES).read()
    m = re.search(r"^KNOWN_KEYS='(.*?)'$", script, re.M | re.S)
    assert m, "KNOWN_KEYS not found in user-patches.sh"
    assert set(m.group(1).split()) == parse_keys | ignored | scim


# --- a broken install: DMS's own oauth2 passdb keeps working ----------------------------------------

def test_missing_module_leaves_dms_oauth2_config_working(workroot, idp, live_idp):
    root = _new_root(workroot, "nomodule")
    imap_port, submission_port = DmsStack.free_ports()
    env = _env(idp)
    build_tree(root, module=None, env=env, imap_port=imap_port, submission_port=submission_port)
    before = snapshot(root)
    p = run_user_patches(root, env)
    assert p.returncode == 0
    assert "no module: put dovecot_oauth2.so" in p.stderr, p.stderr
    assert "not switched: docker-mailserver's own oauth2 passdb" in p.stderr
    _assert_dms_oauth2_in_place(root, before)
    assert snapshot(root) == before
    # and DMS's configuration runs: Dovecot's own oauth2 passdb accepts a token, passwords work
    stack = DmsStack(root, imap_port, submission_port)
    stack.client_ip = "127.0.0.1"
    stack.start()
    try:
        r = stack.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
        assert r.ok, r.text
        assert stack.imap_plain_login(BOB, dms_root.ACCOUNTS[BOB]).ok
        assert "passdb-lua" not in stack.log_since(0) and "dovecot-oauth2" not in stack.log_since(0)
    finally:
        stack.stop()
