"""Issue 12 end to end: mail clients without OAuth log in over PLAIN/LOGIN with an IdP app password (or
IdP password), checked by the module with the password grant at the real oidc-provider (registered
through its registerGrantType), the returned token checked like an XOAUTH2 token; real Dovecot 2.3 over
IMAP, POP3 and SMTP submission (Postfix and Dovecot's own), in the passdb chain the README recommends:
the passwd-file passdb first (local accounts, silent about its own mismatches), this module next."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

import pytest

from conftest import PASSWORDS_SENT, ROOT, ISSUED_TOKENS, running_stack

ALICE, BOB, CAROL, DAVE = "alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"
POSTMASTER = "postmaster@example.test"  # a local passwd-file account the IdP does not know
USERS = (ALICE, BOB, DAVE, POSTMASTER)
CHECK = os.path.join(ROOT, "target", "release", "dovecot-oauth2-check")

# The chain of the README's "Clients without OAuth": passwd-file first, quiet about its own mismatch
# (auth_verbose = no; Dovecot's global auth_verbose_passwords stays "no", its default), so a login
# the module accepts logs no failure and one it refuses logs exactly one "Password mismatch".
CHAIN = """passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN {passwd_file}
  auth_verbose = no
}}
passdb {{
  driver = lua
  mechanisms = plain login xoauth2 oauthbearer
  args = {lua_args}
}}
"""


def grant_settings(idp, extra: str = "") -> str:
    return (
        f"introspection_url = {idp.userinfo_url}\n"
        "introspection_mode = auth\n"
        "username_attribute = email\n"
        "use_grant_password = yes\n"
        f"grant_url = {idp.token_url}\n"
        "client_id = dovecot-grant\n"
        "client_secret = dovecot-grant-secret\n"
        "grant_scope = openid email profile\n" + extra
    )


def sent(password: str) -> str:
    """A password this suite sends: recorded so that the session checks no log holds it."""
    PASSWORDS_SENT.append(password)
    return password


def rejected(r) -> bool:
    return not r.ok and not r.tempfail


def grants(idp) -> int:
    return idp.stats().get("password_grant", 0)


def remember_issued(idp) -> None:
    """The tokens the password grant issued join the session's no-leak check (the IdP forgets them
    when it stops)."""
    if idp.running:
        ISSUED_TOKENS.extend(idp.password_grant_tokens())


@pytest.fixture(scope="module")
def issued_tokens_are_checked(idp):
    yield
    remember_issued(idp)


@pytest.fixture(scope="module")
def stack(workroot, module_dir, idp, issued_tokens_are_checked):
    with running_stack(workroot, module_dir, grant_settings(idp), prefix="passwords", users=USERS,
                       passdb_conf=CHAIN) as s:
        yield s


@pytest.fixture
def app_password(live_idp):
    """app_password(user) -> a new app password of that user, recorded as sent."""
    return lambda user: sent(live_idp.new_app_password(user))


# --- accepted ---------------------------------------------------------------------------------------

def test_app_password_logs_in_with_imaps_login_command(stack, app_password):
    r = stack.imap_login_command(ALICE, app_password("alice"))
    assert r.ok, r.text


def test_app_password_logs_in_with_imap_authenticate_plain(stack, app_password):
    r = stack.imap_plain_login(ALICE, app_password("alice"))
    assert r.ok, r.text


def test_app_password_logs_in_over_pop3(stack, app_password):
    r = stack.pop3_login(BOB, app_password("bob"), "PLAIN")
    assert r.ok, r.text


def test_app_password_logs_in_over_smtp_submission_through_postfix(stack, app_password):
    r = stack.smtp_login(BOB, app_password("bob"), "PLAIN")
    assert r.ok, r.text
    assert r.text.startswith("235"), r.text


def test_app_password_logs_in_over_dovecots_submission(stack, app_password):
    r = stack.smtp_login(ALICE, app_password("alice"), "PLAIN", server="dovecot")
    assert r.ok, r.text


def test_the_users_idp_password_logs_in_when_the_user_has_no_mfa(stack, live_idp):
    r = stack.imap_login_command(DAVE, sent("dave-pw"))
    assert r.ok, r.text


def test_an_accepted_password_logs_no_failure_for_fail2ban(stack, app_password):
    mark = stack.log_mark()
    assert stack.imap_login_command(ALICE, app_password("alice")).ok
    log = stack.log_since(mark)
    assert "Password mismatch" not in log and "unknown user" not in log, log


def test_token_logins_still_work_on_the_same_passdb(stack, live_idp):
    assert stack.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2").ok
    assert stack.smtp_login(BOB, live_idp.token("bob"), "OAUTHBEARER").ok


# --- refused ----------------------------------------------------------------------------------------

def test_a_wrong_password_is_authentication_failed_counted_once_as_a_mismatch(stack, live_idp):
    before = grants(live_idp)
    mark = stack.log_mark()
    r = stack.imap_login_command(ALICE, sent("wrong-password-for-alice"))
    assert rejected(r), r.text
    assert "AUTHENTICATIONFAILED" in r.text, r.text
    log = stack.wait_log(mark, "Disconnected")
    assert "dovecot-oauth2: authentication failed: provider refused the password (invalid_grant" in log, log
    # Fail2Ban's dovecot filter counts "<passdb>(user,ip): Password mismatch": exactly one per attempt.
    assert len(re.findall(r"\w+\([^)]*\): Password mismatch", log)) == 1, log
    assert "passwd-file(" not in log, log
    assert grants(live_idp) == before + 1


def test_a_wrong_password_is_refused_over_smtp_and_pop3(stack):
    assert stack.smtp_login(BOB, sent("wrong-bob-smtp"), "PLAIN").text.startswith("535")
    assert rejected(stack.pop3_login(BOB, sent("wrong-bob-pop3"), "PLAIN"))


def test_another_users_app_password_is_refused(stack, app_password):
    bobs = app_password("bob")
    r = stack.imap_login_command(ALICE, bobs)
    assert rejected(r), r.text


def test_an_mfa_users_idp_password_is_refused_by_the_grant(stack, live_idp):
    # carol has MFA at the IdP: the grant cannot ask for a second factor, so it refuses her password.
    mark = stack.log_mark()
    r = stack.imap_login_command(CAROL, sent("carol-pw"))
    assert rejected(r), r.text
    assert "provider refused the password (invalid_grant" in stack.wait_log(mark, "authentication failed")


def test_no_password_or_returned_token_reaches_dovecots_log(stack, live_idp, app_password):
    secret = app_password("alice")
    assert stack.imap_login_command(ALICE, secret).ok
    assert not stack.imap_login_command(ALICE, sent(secret + "-typo")).ok
    log = open(stack.log_path, errors="replace").read()
    assert secret not in log
    for token in live_idp.password_grant_tokens():
        assert token not in log


# --- local accounts first ---------------------------------------------------------------------------

def test_a_passwd_file_account_logs_in_with_its_local_password_without_asking_the_idp(stack, live_idp):
    live_idp.reset_stats()
    for user in (POSTMASTER, ALICE):
        r = stack.imap_login_command(user, user.split("@")[0] + "-mailpw")
        assert r.ok, f"{user}: {r.text}"
    assert stack.smtp_login(POSTMASTER, "postmaster-mailpw", "PLAIN").ok
    assert live_idp.stats().get("/token", 0) == 0, live_idp.stats()


def test_a_local_account_with_a_wrong_password_is_refused_once(stack):
    mark = stack.log_mark()
    r = stack.imap_login_command(POSTMASTER, sent("not-the-local-password"))
    assert rejected(r), r.text
    log = stack.wait_log(mark, "Disconnected")
    assert len(re.findall(r"\w+\([^)]*\): Password mismatch", log)) == 1, log


# --- revocation, provider down, guessing ------------------------------------------------------------

def test_a_revoked_app_password_is_refused_once_its_cache_ttl_has_passed(workroot, module_dir, live_idp,
                                                                          app_password, issued_tokens_are_checked):
    ttl = 3
    with running_stack(workroot, module_dir, grant_settings(live_idp, f"password_cache_ttl_secs = {ttl}\n"),
                       prefix="pw-revoke", users=USERS, passdb_conf=CHAIN, postfix=False,
                       auth_worker_max_count=1) as s:
        secret = app_password("alice")
        assert s.imap_login_command(ALICE, secret).ok
        accepted_at = time.monotonic()
        live_idp.revoke_app_password(secret)
        r = s.imap_login_command(ALICE, secret)
        if time.monotonic() - accepted_at < ttl - 1:
            assert r.ok, f"within password_cache_ttl_secs the cached acceptance is used: {r.text}"
        time.sleep(max(0.0, ttl + 0.5 - (time.monotonic() - accepted_at)))
        r = s.imap_login_command(ALICE, secret)
        assert rejected(r), r.text


def test_provider_down_is_a_temporary_failure(workroot, module_dir, live_idp, issued_tokens_are_checked):
    with running_stack(workroot, module_dir, grant_settings(live_idp, "timeout_msecs = 2000\n"), prefix="pw-down",
                       users=USERS, passdb_conf=CHAIN, postfix=False) as s:
        remember_issued(live_idp)
        live_idp.stop()
        mark = s.log_mark()
        r = s.imap_login_command(ALICE, sent("alice-app-while-down"))
        assert r.tempfail, r.text
        assert "provider unreachable" in s.wait_log(mark, "temporary failure")
        r = s.smtp_login(ALICE, sent("alice-app-while-down-2"), "PLAIN", server="dovecot")
        assert r.tempfail and r.text.startswith("454"), r.text
        r = s.pop3_login(ALICE, sent("alice-app-while-down-3"), "PLAIN")
        assert r.tempfail, r.text
        # Local accounts keep working: the passwd-file passdb answers first.
        assert s.imap_login_command(POSTMASTER, "postmaster-mailpw").ok


def test_our_client_refused_by_the_provider_is_a_temporary_failure_telling_the_admin(workroot, module_dir, live_idp,
                                                                                      issued_tokens_are_checked):
    settings = grant_settings(live_idp).replace("client_secret = dovecot-grant-secret", "client_secret = not-it")
    with running_stack(workroot, module_dir, settings, prefix="pw-badclient", users=USERS, passdb_conf=CHAIN,
                       postfix=False) as s:
        mark = s.log_mark()
        r = s.imap_login_command(ALICE, sent(live_idp.new_app_password("alice")))
        assert r.tempfail, r.text
        log = s.wait_log(mark, "temporary failure")
        assert f"provider refused the password grant request at {live_idp.token_url} (invalid_client): " \
               "check client_id, client_secret and grant_client_auth" in log, log
        assert "Password mismatch" not in log, log


def test_a_burst_of_wrong_guesses_for_one_user_is_bounded(workroot, module_dir, live_idp, issued_tokens_are_checked):
    limit = 3
    settings = grant_settings(live_idp, f"password_max_requests_per_minute = {limit}\n")
    with running_stack(workroot, module_dir, settings, prefix="pw-burst", users=USERS, passdb_conf=CHAIN,
                       postfix=False, auth_worker_max_count=1) as s:
        before = grants(live_idp)
        started = time.monotonic()
        # The same wrong guess again and again: one provider request (the refusal is cached).
        for _ in range(4):
            assert rejected(s.imap_login_command(ALICE, sent("same-wrong-guess")))
        assert grants(live_idp) == before + 1
        mark = s.log_mark()
        results = [s.imap_login_command(ALICE, sent(f"distinct-wrong-guess-{i}")) for i in range(5)]
        elapsed = time.monotonic() - started
        assert all(not r.ok for r in results)
        if elapsed < 55:  # one sliding minute: at most `limit` provider requests for alice in it
            assert grants(live_idp) == before + limit, [r.text for r in results]
            assert [rejected(r) for r in results] == [True, True, False, False, False], [r.text for r in results]
            assert all(r.tempfail for r in results[2:]), [r.text for r in results]
            assert "password_max_requests_per_minute" in s.wait_log(mark, "password_max_requests_per_minute")
        # Other users are not held back by alice's guesses.
        assert s.imap_login_command(BOB, sent(live_idp.new_app_password("bob"))).ok


# --- the check command ------------------------------------------------------------------------------

def test_check_command_checks_a_password_from_stdin_and_never_prints_it(live_idp, workroot, app_password):
    fd, path = tempfile.mkstemp(prefix="check-pw-", suffix=".conf", dir=workroot)
    os.write(fd, grant_settings(live_idp).encode())
    os.close(fd)
    secret = app_password("alice")
    r = subprocess.run([CHECK, "-c", path, "--password", ALICE], input=(secret + "\n").encode(),
                       capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert f"POST {live_idp.token_url} -> HTTP 200" in out, out
    assert f"GET {live_idp.userinfo_url} -> HTTP 200" in out, out
    assert "verdict: ACCEPTED" in out
    r2 = subprocess.run([CHECK, "-c", path, "--password", ALICE], input=(sent("nope-not-it") + "\n").encode(),
                        capture_output=True, timeout=30)
    out2 = r2.stdout.decode()
    assert r2.returncode == 1, out2
    assert "verdict: AUTHENTICATION FAILED: provider refused the password (invalid_grant" in out2
    everything = out + out2 + r.stderr.decode() + r2.stderr.decode()
    assert secret not in everything and "nope-not-it" not in everything
    for token in live_idp.password_grant_tokens():
        assert token not in everything
