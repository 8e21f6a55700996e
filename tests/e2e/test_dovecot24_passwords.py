"""Issue 12 on Dovecot 2.4.1 (Debian 13's packages in the chroot of tests/trixie.sh, harness
dovecot24.py): PLAIN/LOGIN passwords reach lua/dovecot-oauth2.lua's auth_password_verify (req.mech is
nil there; success must be a table, failure a string), are checked with the password grant at the real
oidc-provider, and the passdb chain of the README's 2.4 block holds: the passwd-file passdb first (quiet),
this module next with `mechanisms_filter = plain login`, while Dovecot's own oauth2 {} settings check
XOAUTH2 tokens and then look the user up through the passdbs (auth_passdb_lookup must exist).
Skipped without the chroot, failed without it when CI=true."""

from __future__ import annotations

import os
import re

import pytest

from conftest import BUILT_MODULE, ISSUED_TOKENS, LUA_SCRIPT, PASSWORDS_SENT

import dovecot24

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
POSTMASTER = "postmaster@example.test"  # local passwd-file account the IdP does not know

# What Fail2Ban counts as a failed password: Dovecot 2.4 logs a passdb's refusal as
# "auth-worker(user,ip)<pid><session>: request [n]: Info: <passdb>: Password mismatch" (or "unknown user").
MISMATCH = re.compile(r"^.*: (\S+): (?:Password mismatch|unknown user)", re.M)


class ChainStack(dovecot24.Dovecot24Stack):
    """The harness's stack with the passwd-file passdb first, quiet (`auth_verbose = no`), as the README
    recommends; the harness itself puts it after the Lua passdb."""

    def dovecot_conf(self) -> str:
        conf = super().dovecot_conf()
        local = (f"passdb passwd {{\n  driver = passwd-file\n  passwd_file_path = {self.priv}/passwd\n"
                 "  mechanisms_filter = plain login\n  auth_verbose = no\n}\n")
        assert conf.count("passdb lua {") == 1
        return conf.replace("passdb lua {", local + "passdb lua {", 1)


@pytest.fixture(scope="module", autouse=True)
def chroot():
    problem = dovecot24.chroot_problem()
    if problem:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI: {problem}")
        pytest.skip(problem)


def settings(idp, extra: str = "") -> str:
    return (
        f"introspection_url = {idp.userinfo_url}\n"
        "introspection_mode = auth\n"
        "username_attribute = email\n"
        "use_grant_password = yes\n"
        f"grant_url = {idp.token_url}\n"
        "client_id = dovecot-grant\n"
        "client_secret = dovecot-grant-secret\n"
        "grant_scope = openid email profile\n"
        "max_idle_time_msecs = 2000\n" + extra
    )


def make_stack(idp, extra: str = "", **kw) -> ChainStack:
    cid, secret = idp.introspection_client
    oauth2 = {"introspection_mode": "post",
              "introspection_url": f"http://{cid}:{secret}@127.0.0.1:{idp.port}/token/introspection",
              "username_attribute": "email", "active_attribute": "active", "active_value": "true"}
    s = ChainStack(oauth2=oauth2, lua_script=LUA_SCRIPT, module_so=BUILT_MODULE, passwd_passdb=False,
                   users=(ALICE, BOB, POSTMASTER), **kw)
    # The settings path comes from lua_settings { config = ... } (script_init's table on 2.4).
    s.reconfigure(lua_settings={"config": s.put_file("dovecot-oauth2.conf.ext", settings(idp, extra))})
    return s


def sent(p: str) -> str:
    PASSWORDS_SENT.append(p)
    return p


@pytest.fixture(scope="module")
def stack(idp):
    s = make_stack(idp)
    s.start()
    yield s
    s.stop()
    if idp.running:
        ISSUED_TOKENS.extend(idp.password_grant_tokens())


def rejected(r) -> bool:
    return not r.ok and not r.tempfail


def test_an_app_password_logs_in_over_imap_login_and_logs_no_failure(stack, live_idp):
    mark = stack.log_mark()
    r = stack.imap_login_command(ALICE, sent(live_idp.new_app_password("alice")))
    assert r.ok, r.text
    log = stack.log_since(mark)
    assert MISMATCH.findall(log) == [], log
    assert not dovecot24.crash_lines(log), log


def test_an_app_password_logs_in_over_pop3_and_smtp_submission(stack, live_idp):
    assert stack.pop3_login(BOB, sent(live_idp.new_app_password("bob")), "PLAIN").ok
    r = stack.smtp_login(BOB, sent(live_idp.new_app_password("bob")), "PLAIN")
    assert r.ok and r.text.startswith("235"), r.transcript
    r = stack.smtp_login(ALICE, sent(live_idp.new_app_password("alice")), "PLAIN", server="dovecot")
    assert r.ok, r.transcript


def test_a_wrong_password_is_refused_and_counted_once(stack, live_idp):
    mark = stack.log_mark()
    r = stack.imap_login_command(ALICE, sent("wrong-on-dovecot-24"))
    assert rejected(r) and "AUTHENTICATIONFAILED" in r.text, r.text
    log = stack.wait_log(mark, "auth failed")
    assert "dovecot-oauth2: authentication failed: provider refused the password (invalid_grant" in log, log
    assert MISMATCH.findall(log) == ["lua"], log


def test_another_users_app_password_is_refused(stack, live_idp):
    assert rejected(stack.imap_login_command(ALICE, sent(live_idp.new_app_password("bob"))))


def test_a_local_account_logs_in_with_its_local_password_without_asking_the_idp(stack, live_idp):
    live_idp.reset_stats()
    for user in (POSTMASTER, BOB):
        r = stack.imap_login_command(user, user.split("@")[0] + "-mailpw")
        assert r.ok, f"{user}: {r.text}"
    assert live_idp.stats().get("/token", 0) == 0, live_idp.stats()


def test_xoauth2_checked_by_dovecots_own_oauth2_settings_still_logs_in(stack, live_idp):
    # After its own token check Dovecot 2.4 looks the user up through the passdbs; the Lua passdb is
    # filtered to plain/login and has an auth_passdb_lookup, so nothing here breaks that login.
    mark = stack.log_mark()
    r = stack.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
    assert r.ok, r.transcript
    assert not dovecot24.crash_lines(stack.log_since(mark))


def test_provider_down_is_a_temporary_failure(idp, live_idp):
    s = make_stack(live_idp, "timeout_msecs = 2000\n", postfix=False)
    s.start()
    try:
        ISSUED_TOKENS.extend(live_idp.password_grant_tokens())
        live_idp.stop()
        mark = s.log_mark()
        r = s.imap_login_command(ALICE, sent("app-password-while-idp-is-down"))
        assert r.tempfail, r.text
        assert "provider unreachable" in s.wait_log(mark, "temporary failure")
        assert s.imap_login_command(POSTMASTER, "postmaster-mailpw").ok
    finally:
        s.stop()
