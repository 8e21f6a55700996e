"""Dovecot 2.3's own `passdb { driver = oauth2 }` pointed at dovecot-oauth2d (issue 11): a real
Dovecot 2.3.19 with real IMAP and SMTP clients, the daemon introspecting at the real oidc-provider.
The daemon's settings use the client credentials Dovecot sends from introspection_url, with characters
that must be percent-encoded there."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import urllib.parse

import pytest

from conftest import LUA_SCRIPT, SECRETS, introspection_settings
from daemon import BINARY, Daemon
from mailstack import MailStack

ALICE, BOB, CAROL, DAVE = "alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"
# '@', ':' and '/' must be percent-encoded in introspection_url; Dovecot decodes them before sending.
CLIENT = ("dovecot-23", "d23:secret@with/odd-chars")
SECRETS.append(CLIENT[1])


def dovecot_oauth2_file(daemon: Daemon, client: tuple[str, str] | None = None) -> str:
    """The settings of Dovecot's own oauth2 passdb, as the README gives them."""
    user, secret = (urllib.parse.quote(x, safe="") for x in client or daemon.client)
    return (
        "introspection_mode = post\n"
        f"introspection_url = http://{user}:{secret}@127.0.0.1:{daemon.port}/introspect\n"
        "username_attribute = username\n"
        "active_attribute = active\n"
        "active_value = true\n"
        "timeout_msecs = 15000\n"
    )


@contextlib.contextmanager
def daemon_and_stack(workroot: str, idp, prefix: str, daemon_extra: str = "",
                     dovecot_client: tuple[str, str] | None = None, **stack_kw):
    if not os.path.exists(BINARY):
        pytest.fail(f"{BINARY} missing: run `cargo build --release` first (tests/run.sh does)")
    d = tempfile.mkdtemp(prefix=prefix[:40] + "-", dir=workroot)
    os.chmod(d, 0o755)
    settings = introspection_settings(idp, daemon_extra) + (
        f"listen = 127.0.0.1:0\nlisten_client_id = {CLIENT[0]}\nlisten_client_secret = {CLIENT[1]}\n")
    daemon = Daemon(os.path.join(d, "daemon"), settings, CLIENT).start()
    try:
        path = os.path.join(d, "dovecot-oauth2.conf.ext")
        with open(path, "w") as f:
            f.write(dovecot_oauth2_file(daemon, dovecot_client))
        os.chmod(path, 0o640)
        stack = MailStack(os.path.join(d, "stack"), lua_script=LUA_SCRIPT, settings_file=None, module_dir=None,
                          oauth2_passdb_file=path, **stack_kw)
        stack.start()
        try:
            yield daemon, stack
        finally:
            stack.stop()
    finally:
        assert daemon.stop() == 0


@pytest.fixture(scope="module")
def both(workroot, idp):
    with daemon_and_stack(workroot, idp, "d23") as pair:
        yield pair


def rejected(r) -> bool:
    return not r.ok and not r.tempfail


def test_imap_xoauth2_login_succeeds(both, live_idp):
    _, stack = both
    r = stack.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
    assert r.ok, r.text


def test_imap_oauthbearer_login_succeeds(both, live_idp):
    _, stack = both
    r = stack.imap_login(ALICE, live_idp.token("alice"), "OAUTHBEARER")
    assert r.ok, r.text


def test_smtp_submission_through_postfix_succeeds(both, live_idp):
    _, stack = both
    r = stack.smtp_login(BOB, live_idp.token("bob"), "XOAUTH2")
    assert r.ok, r.text


def test_a_login_user_in_another_case_is_accepted_as_the_module_accepts_it(both, live_idp):
    # dave's provider email is DAVE@Example.TEST: the daemon folds it, Dovecot folds the login user.
    _, stack = both
    r = stack.imap_login("Dave@Example.Test", live_idp.token("dave"), "XOAUTH2")
    assert r.ok, r.text


def test_another_users_token_is_refused(both, live_idp):
    _, stack = both
    mark = stack.log_mark()
    r = stack.imap_login(BOB, live_idp.token("alice"), "XOAUTH2")
    assert rejected(r), r.text
    assert "Username 'bob@example.test' did not match 'alice@example.test'" in stack.wait_log(mark, "did not match")


def test_a_garbage_token_is_refused_and_the_daemon_says_why(both, live_idp):
    daemon, stack = both
    mark = daemon.log_mark()
    r = stack.imap_login(ALICE, "Z2FyYmFnZS10b2tlbi0xMjM0NQ", "OAUTHBEARER")
    assert rejected(r), r.text
    assert "authentication failed: provider says the token is not active" in daemon.wait_log(mark, "failed")


def test_a_user_without_a_mailbox_fails_at_the_userdb(both, live_idp):
    _, stack = both
    mark = stack.log_mark()
    r = stack.imap_login(CAROL, live_idp.token("carol"), "OAUTHBEARER")
    assert not r.ok, r.text
    assert "user not found from userdb" in stack.wait_log(mark, "user not found from userdb")


def test_concurrent_logins_with_one_new_token_make_one_provider_request_and_repeats_none(both, live_idp):
    _, stack = both
    token = live_idp.token("alice")
    live_idp.reset_stats()
    results: list = []
    go = threading.Barrier(8)

    def login():
        go.wait()
        results.append(stack.imap_login(ALICE, token, "XOAUTH2"))

    threads = [threading.Thread(target=login) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and all(r.ok for r in results), [r.text for r in results]
    for _ in range(3):
        assert stack.imap_login(ALICE, token, "OAUTHBEARER").ok
    assert live_idp.stats().get("/token/introspection", 0) == 1


def test_provider_down_a_new_token_is_a_temporary_failure_and_a_cached_one_still_works(workroot, live_idp):
    with daemon_and_stack(workroot, live_idp, "d23-down", "timeout_msecs = 2000\n", postfix=False) as (daemon, stack):
        seen, fresh = live_idp.token("alice"), live_idp.token("alice")
        assert stack.imap_login(ALICE, seen).ok
        live_idp.stop()
        assert stack.imap_login(ALICE, seen, "XOAUTH2").ok
        mark = daemon.log_mark()
        r = stack.imap_login(ALICE, fresh)
        assert r.tempfail, r.text
        assert "UNAVAILABLE" in r.text, r.text
        assert "temporary failure: provider unreachable" in daemon.wait_log(mark, "temporary failure")
        assert stack.smtp_login(ALICE, fresh, server="dovecot").tempfail, "Dovecot's submission: 454"


def test_wrong_client_credentials_on_dovecots_side_are_a_temporary_failure_not_a_wrong_password(workroot, live_idp):
    wrong = (CLIENT[0], "not-the-secret")
    with daemon_and_stack(workroot, live_idp, "d23-creds", dovecot_client=wrong, postfix=False) as (daemon, stack):
        mark = daemon.log_mark()
        r = stack.imap_login(ALICE, live_idp.token("alice"))
        assert r.tempfail, r.text
        assert "wrong client secret" in daemon.wait_log(mark, "refused")
