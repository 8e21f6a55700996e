"""Issue 12 in docker-mailserver v15.1.0: OAUTH2_USE_GRANT_PASSWORD=yes (and the grant's OAUTH2_*
settings) through docker/user-patches.sh. DMS's passwd-file accounts keep their local passwords first;
IdP app passwords work over IMAP and Postfix submission; with DMS's own logging settings (auth_verbose =
yes, auth_verbose_passwords = sha1:6 overridden by the script) a refused password is one "Password
mismatch" for Fail2Ban and an accepted app password none."""

from __future__ import annotations

import os
import re
import tempfile

import pytest

import dms_root
from conftest import BUILT_MODULE, ISSUED_TOKENS, PASSWORDS_SENT
from dms_root import DmsStack, build_tree, run_user_patches, snapshot
from mailstack import MailStack

ALICE, BOB = "alice@example.test", "bob@example.test"
PASSDB_CONF = "etc/dovecot/conf.d/auth-oauth2.conf.ext"
PASSWDFILE_CONF = "etc/dovecot/conf.d/auth-passwdfile.inc"
DROPIN_CONF = "etc/dovecot/conf.d/99-dovecot-oauth2.conf"
SETTINGS = "etc/dovecot/dovecot-oauth2.conf.ext"

# IMAP's LOGIN command, as most mail clients send a password.
DmsStack.imap_login_command = MailStack.imap_login_command


def _env(idp, **extra) -> dict[str, str]:
    return {
        "ENABLE_OAUTH2": "1",
        "OAUTH2_INTROSPECTION_URL": idp.userinfo_url,
        "OAUTH2_USE_GRANT_PASSWORD": "yes",
        "OAUTH2_GRANT_URL": idp.token_url,
        "OAUTH2_CLIENT_ID": "dovecot-grant",
        "OAUTH2_CLIENT_SECRET": "dovecot-grant-secret",
        "OAUTH2_GRANT_SCOPE": "openid email profile",
        # the test IdP (node) closes idle keep-alive connections after 5 s
        "OAUTH2_MAX_IDLE_TIME_MSECS": "2000",
        **extra,
    }


def _root(workroot: str, name: str) -> str:
    d = tempfile.mkdtemp(prefix=f"dms-pw-{name}-", dir=workroot)
    os.chmod(d, 0o755)
    return os.path.join(d, "root")


def _read(root: str, rel: str) -> str:
    with open(os.path.join(root, rel)) as f:
        return f.read()


def _sent(p: str) -> str:
    PASSWORDS_SENT.append(p)
    return p


def _mismatches(log: str) -> list[str]:
    # Fail2Ban's dovecot filter: "<passdb>(user,ip...): Password mismatch" (or "unknown user")
    return re.findall(r"[a-z\-]{3,15}\([^)]*\): (?:Password mismatch|unknown user)", log)


@pytest.fixture(scope="module")
def dms(workroot, idp):
    root = _root(workroot, "switched")
    imap_port, submission_port = DmsStack.free_ports()
    env = _env(idp)
    build_tree(root, module=BUILT_MODULE, env=env, imap_port=imap_port, submission_port=submission_port)
    p = run_user_patches(root, env)
    assert p.returncode == 0 and "switched the oauth2 passdb" in p.stdout, p.stdout + p.stderr
    assert "PLAIN/LOGIN passwords: the passwd-file passdb first" in p.stdout, p.stdout
    stack = DmsStack(root, imap_port, submission_port)
    stack.client_ip = "127.0.0.1"  # DMS keeps disable_plaintext_auth = yes: loopback counts as secured
    stack.start()
    yield stack
    stack.stop()
    if idp.running:
        ISSUED_TOKENS.extend(idp.password_grant_tokens())


def _smtp(dms, user, password):
    """Postfix submission as DMS runs it (STARTTLS first), from a random 127/8 source (failures then
    build up no per-IP penalty for the IMAP tests)."""
    fixed, dms.client_ip = dms.client_ip, None
    try:
        return dms.smtp_login(user, password, "PLAIN", starttls=True)
    finally:
        dms.client_ip = fixed


def test_the_script_puts_the_local_passdb_first_and_quiet(dms):
    passdb = _read(dms.root, PASSDB_CONF)
    assert "mechanisms = plain login xoauth2 oauthbearer" in passdb, passdb
    assert re.search(r"^\s*auth_verbose = no\b", _read(dms.root, PASSWDFILE_CONF), re.M)
    assert "auth_verbose = no" not in _read(dms.root, PASSWDFILE_CONF + ".dms-orig")
    assert "auth_verbose_passwords = no" in _read(dms.root, DROPIN_CONF)
    settings = _read(dms.root, SETTINGS)
    for line in ("use_grant_password = yes", "client_id = dovecot-grant", "grant_scope = openid email profile"):
        assert re.search(rf"^{re.escape(line)}$", settings, re.M), settings


def test_an_app_password_logs_in_over_imap_and_logs_no_failure(dms, live_idp):
    mark = dms.log_mark()
    r = dms.imap_login_command(ALICE, _sent(live_idp.new_app_password("alice")))
    assert r.ok, r.text
    log = dms.log_since(mark)
    assert _mismatches(log) == [], log


def test_an_app_password_logs_in_over_postfix_submission(dms, live_idp):
    r = _smtp(dms, BOB, _sent(live_idp.new_app_password("bob")))
    assert r.ok, r.transcript


def test_a_local_account_password_logs_in_without_asking_the_idp(dms, live_idp):
    live_idp.reset_stats()
    r = dms.imap_login_command(BOB, dms_root.ACCOUNTS[BOB])
    assert r.ok, r.text
    assert _smtp(dms, ALICE, dms_root.ACCOUNTS[ALICE]).ok
    assert live_idp.stats().get("/token", 0) == 0, live_idp.stats()


def test_a_wrong_password_is_refused_and_counted_once(dms, live_idp):
    mark = dms.log_mark()
    r = _smtp(dms, ALICE, _sent("neither-local-nor-idp"))
    assert not r.ok and r.text.startswith("535"), r.transcript
    log = dms.wait_log(mark, "authentication failed: provider refused the password")
    assert "dovecot-oauth2: authentication failed: provider refused the password (invalid_grant" in log, log
    found = _mismatches(log)
    assert len(found) == 1 and found[0].startswith(f"lua({ALICE},"), log


def test_tokens_still_work(dms, live_idp):
    assert dms.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2").ok


def test_the_script_run_again_gives_the_same_files_and_without_passwords_puts_dms_files_back(workroot, idp):
    root = _root(workroot, "rerun")
    build_tree(root, module=BUILT_MODULE, env=_env(idp))
    pristine = snapshot(root)
    assert run_user_patches(root, _env(idp)).returncode == 0
    once = snapshot(root)
    assert run_user_patches(root, _env(idp)).returncode == 0
    assert snapshot(root) == once
    env = _env(idp)
    del env["OAUTH2_USE_GRANT_PASSWORD"]
    p = run_user_patches(root, env)
    assert p.returncode == 0 and "PLAIN/LOGIN passwords" not in p.stdout, p.stdout + p.stderr
    after = snapshot(root)
    assert after[PASSWDFILE_CONF] == pristine[PASSWDFILE_CONF]
    assert DROPIN_CONF not in after and PASSWDFILE_CONF + ".dms-orig" not in after
    assert "mechanisms = xoauth2 oauthbearer\n" in _read(root, PASSDB_CONF)


def test_a_failed_switch_with_passwords_puts_every_dms_file_back(workroot, idp):
    # DMS did not enable the include: the Lua passdb is missing from Dovecot's configuration.
    root = _root(workroot, "noinclude")
    build_tree(root, module=BUILT_MODULE, env=_env(idp), enable_oauth2=False)
    before = snapshot(root)
    p = run_user_patches(root, _env(idp))
    assert "the Lua passdb is not in Dovecot's configuration" in p.stderr, p.stderr
    after = snapshot(root)
    for rel in (PASSDB_CONF, SETTINGS, PASSWDFILE_CONF):
        assert after[rel] == before[rel], rel
    assert DROPIN_CONF not in after
    assert not [k for k in after if k.endswith(".dms-orig")]
