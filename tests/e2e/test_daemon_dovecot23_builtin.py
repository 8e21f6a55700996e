"""Issue 11 on Debian 12: Dovecot 2.3.19's own `passdb { driver = oauth2 }` pointed at dovecot-oauth2d
(the alternative to the Lua module), with the real oidc-provider, over IMAP and SMTP submission through
the host's Postfix. The passdb's file has the same keys as Dovecot 2.4's `oauth2 {}` block (README).
Unlike 2.4.1, 2.3.19 answers a 5xx of the daemon with a temporary failure."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile

import pytest

import conftest
from conftest import LUA_SCRIPT
from mailstack import MailStack
from oauth2d_runner import Daemon, daemon_problem, fingerprint
from test_daemon_dovecot24 import rfc7662_settings, userinfo_settings

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    problem = daemon_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


class BuiltinOauth2Stack(MailStack):
    """MailStack with Dovecot 2.3's own oauth2 passdb (driver = oauth2, args = a file) in place of the
    Lua passdb; everything else (passwd-file for PLAIN, userdb, Postfix) as MailStack writes it."""

    def __init__(self, workdir: str, args_text: str, **kw):
        self.args_path = os.path.join(os.path.abspath(workdir), "dovecot-oauth2.conf.ext")
        os.makedirs(os.path.dirname(self.args_path), exist_ok=True)
        with open(self.args_path, "w") as f:
            f.write(args_text)
        os.chmod(self.args_path, 0o600)  # read by the auth process as root
        super().__init__(workdir, lua_script=LUA_SCRIPT, settings_file=None, module_dir=None, **kw)

    def _write_dovecot_files(self) -> None:
        super()._write_dovecot_files()
        conf = open(self.conf_path).read()
        conf, n = re.subn(r"passdb \{\n  driver = lua\n  mechanisms = ([^\n]*)\n  args = [^\n]*\n\}",
                          lambda m: f"passdb {{\n  driver = oauth2\n  mechanisms = {m.group(1)}\n"
                                    f"  args = {self.args_path}\n}}", conf)
        assert n == 1, conf
        with open(self.conf_path, "w") as f:
            f.write(conf)


@contextlib.contextmanager
def daemon_and_dovecot23(workroot: str, name: str, settings: str, **stack_kw):
    d = Daemon(tempfile.mkdtemp(prefix=f"d23-{name[:40]}-", dir=workroot), settings)
    conftest.SECRETS.append(d.secret)
    d.start()
    stack = None
    try:
        stack = BuiltinOauth2Stack(os.path.join(d.workdir, "stack"), d.dovecot23_args(), **stack_kw)
        stack.start()
        yield d, stack
    finally:
        if stack is not None:
            crashes = conftest.crash_lines(stack.log_since(0))
            stack.stop()
            assert not crashes, crashes
        rc = d.stop()
        assert rc == 0, f"dovecot-oauth2d exited {rc} on SIGTERM:\n{d.log_since(0)[-3000:]}"


@pytest.fixture(scope="module")
def userinfo(workroot, idp):
    with daemon_and_dovecot23(workroot, "userinfo", userinfo_settings(idp)) as pair:
        yield pair


@pytest.fixture
def make_pair(workroot, request):
    with contextlib.ExitStack() as stacks:
        yield lambda settings, **kw: stacks.enter_context(
            daemon_and_dovecot23(workroot, request.node.name, settings, **kw))


def refused(r) -> bool:
    return not r.ok and not r.tempfail


def test_the_passdb_in_use_is_dovecots_own_oauth2_driver(userinfo):
    d, stack = userinfo
    stack.doveconf_check()
    conf = open(stack.conf_path).read()
    assert "driver = oauth2" in conf and "driver = lua" not in conf


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_imap_login_with_a_valid_token_succeeds(userinfo, live_idp, mech):
    d, stack = userinfo
    r = stack.imap_login(ALICE, live_idp.token("alice"), mech)
    assert r.ok, r.text + stack.log_since(0)[-2000:]


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_smtp_submission_through_postfix_with_a_valid_token_succeeds(userinfo, live_idp, mech):
    d, stack = userinfo
    r = stack.smtp_login(BOB, live_idp.token("bob"), mech)
    assert r.ok, r.transcript


def test_repeated_logins_with_one_token_ask_the_provider_once(userinfo, live_idp):
    d, stack = userinfo
    token = live_idp.token("alice")
    live_idp.reset_stats()
    assert stack.imap_login(ALICE, token, "XOAUTH2").ok
    assert stack.smtp_login(ALICE, token, "OAUTHBEARER").ok
    assert stack.imap_login(ALICE, token, "OAUTHBEARER").ok
    assert live_idp.stats() == {"/me": 1}, live_idp.stats()


def test_another_users_token_is_refused(userinfo, live_idp):
    d, stack = userinfo
    mark = stack.log_mark()
    r = stack.imap_login(BOB, live_idp.token("alice"), "XOAUTH2")
    assert refused(r), r.text
    log = stack.wait_log(mark, "auth failed", 30)
    assert "auth failed" in log and "Login: user=" not in log, log
    r = stack.smtp_login(BOB, live_idp.token("alice"), "OAUTHBEARER")
    assert not r.ok and r.text.startswith("535"), r.transcript


def test_garbage_token_is_refused_and_the_daemon_says_why(userinfo):
    d, stack = userinfo
    token = "garbage-" + secrets.token_urlsafe(24)
    dmark = d.log_mark()
    r = stack.imap_login(ALICE, token, "XOAUTH2")
    assert refused(r), r.text
    lines = [ln for ln in d.wait_log(dmark, fingerprint(token)).splitlines() if fingerprint(token) in ln]
    assert len(lines) == 1 and "authentication failed: provider refused the token (HTTP 401)" in lines[0], lines


def test_login_user_in_another_case_is_accepted(userinfo, live_idp):
    d, stack = userinfo
    r = stack.imap_login("Alice@Example.test", live_idp.token("alice"), "OAUTHBEARER")
    assert r.ok, r.text


def test_valid_token_of_a_user_without_a_mailbox_does_not_log_in(userinfo, live_idp):
    d, stack = userinfo
    r = stack.imap_login(CAROL, live_idp.token("carol"), "XOAUTH2")
    assert not r.ok, r.text


def test_rfc7662_mode_behind_the_builtin_driver(make_pair, live_idp):
    d, stack = make_pair(rfc7662_settings(live_idp), postfix=False)
    token = live_idp.token("alice")
    live_idp.reset_stats()
    assert stack.imap_login(ALICE, token, "XOAUTH2").ok
    assert live_idp.stats() == {"/token/introspection": 1}, live_idp.stats()
    revoked = live_idp.token("bob")
    live_idp.revoke(revoked)
    assert refused(stack.imap_login(BOB, revoked, "OAUTHBEARER"))


def test_provider_down_cached_token_logs_in_and_a_new_one_is_a_temporary_failure(make_pair, live_idp):
    d, stack = make_pair(userinfo_settings(live_idp, "circuit_breaker_failures = 0\n"))
    cached, new = live_idp.token("alice"), live_idp.token("alice")
    assert stack.imap_login(ALICE, cached, "XOAUTH2").ok
    live_idp.stop()
    assert stack.imap_login(ALICE, cached, "OAUTHBEARER").ok
    dmark = d.log_mark()
    r = stack.imap_login(ALICE, new, "XOAUTH2")
    # 2.3.19 answers the daemon's 503 with a temporary failure: clients retry, Fail2Ban does not count it
    assert r.tempfail and "UNAVAILABLE" in r.text, r.text
    lines = [ln for ln in d.wait_log(dmark, fingerprint(new)).splitlines() if fingerprint(new) in ln]
    assert len(lines) == 1 and "warning: temporary failure: provider unreachable" in lines[0], lines
