"""Issue 2 end to end: real oidc-provider tokens, real Dovecot 2.3 loading the built module through
lua/dovecot-oauth2.lua, real Postfix submission authenticating through Dovecot SASL."""

from __future__ import annotations

import os
import re
import threading

import pytest

from conftest import introspection_settings, running_stack, userinfo_settings

ALICE, BOB, CAROL, DAVE = "alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"


@pytest.fixture(scope="module")
def stack(workroot, module_dir, idp):
    """One userinfo-mode stack shared by the read-only tests of this file."""
    with running_stack(workroot, module_dir, userinfo_settings(idp), prefix="core") as s:
        yield s


def rejected(r) -> bool:
    return not r.ok and not r.tempfail


# --- logins that must work -------------------------------------------------------------------------

def test_imap_oauthbearer_login_succeeds(stack, live_idp):
    r = stack.imap_login(ALICE, live_idp.token("alice"), "OAUTHBEARER")
    assert r.ok, r.text


def test_imap_xoauth2_login_succeeds(stack, live_idp):
    r = stack.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
    assert r.ok, r.text


def test_smtp_submission_oauthbearer_succeeds(stack, live_idp):
    r = stack.smtp_login(BOB, live_idp.token("bob"), "OAUTHBEARER")
    assert r.ok, r.text


def test_smtp_submission_xoauth2_succeeds(stack, live_idp):
    r = stack.smtp_login(BOB, live_idp.token("bob"), "XOAUTH2")
    assert r.ok, r.text


def test_pop3_oauthbearer_succeeds(stack, live_idp):
    r = stack.pop3_login(ALICE, live_idp.token("alice"), "OAUTHBEARER")
    assert r.ok, r.text


def test_curl_imap_login_succeeds(stack, live_idp):
    r = stack.imap_login_curl(ALICE, live_idp.token("alice"))
    assert r.ok, r.text


def test_login_user_matches_email_claim_case_insensitively(stack, live_idp):
    # dave's provider email is DAVE@Example.TEST; username_format defaults to %Lu as in Dovecot.
    r = stack.imap_login(DAVE, live_idp.token("dave"), "XOAUTH2")
    assert r.ok, r.text


# --- logins that must fail, and how --------------------------------------------------------------

def test_valid_token_used_for_another_user_fails_and_says_why(stack, live_idp):
    mark = stack.log_mark()
    r = stack.imap_login(BOB, live_idp.token("alice"), "XOAUTH2")
    assert rejected(r), r.text
    log = stack.wait_log(mark, "authentication failed")
    assert "belongs to 'alice@example.test', not to login user 'bob@example.test'" in log


def test_valid_token_used_for_another_user_fails_on_smtp(stack, live_idp):
    r = stack.smtp_login(BOB, live_idp.token("alice"), "OAUTHBEARER")
    assert rejected(r), r.text
    assert r.text.startswith("535"), r.text


def test_garbage_token_is_an_authentication_failure_not_a_temporary_one(stack, live_idp):
    mark = stack.log_mark()
    r = stack.imap_login(ALICE, "garbage-token-1234567890", "OAUTHBEARER")
    assert rejected(r), r.text
    log = stack.wait_log(mark, "authentication failed")
    assert "provider refused the token (HTTP 401)" in log


def test_each_rejection_is_logged_exactly_once(stack, live_idp):
    mark = stack.log_mark()
    r = stack.imap_login(ALICE, "another-garbage-token-0987654321", "XOAUTH2")
    assert rejected(r)
    stack.wait_log(mark, "authentication failed")
    assert stack.log_since(mark).count("dovecot-oauth2: authentication failed") == 1


def test_malformed_token_is_rejected_without_asking_the_provider(stack, live_idp):
    live_idp.reset_stats()
    r = stack.imap_login(ALICE, "not a bearer token", "XOAUTH2")
    assert rejected(r), r.text
    assert live_idp.stats().get("/me", 0) == 0


def test_user_with_no_mail_account_fails_at_the_userdb(stack, live_idp):
    # carol is known to the IdP (valid token, matching email) but has no mailbox here, as in DMS.
    mark = stack.log_mark()
    r = stack.imap_login(CAROL, live_idp.token("carol"), "OAUTHBEARER")
    assert not r.ok, r.text
    log = stack.wait_log(mark, "user not found from userdb")
    assert "dovecot-oauth2: authentication failed" not in log


def test_auth_workers_run_no_threads_of_ours(stack, live_idp):
    assert stack.imap_login(ALICE, live_idp.token("alice")).ok
    pids = stack.auth_worker_pids()
    assert pids
    for pid in pids:
        assert len(os.listdir(f"/proc/{pid}/task")) == 1, f"auth-worker {pid} has extra threads"


def test_auth_worker_stays_within_dovecots_address_space_limit(stack, live_idp):
    assert stack.imap_login(ALICE, live_idp.token("alice")).ok
    for pid in stack.auth_worker_pids():
        status = open(f"/proc/{pid}/status").read()
        vm_kb = int(re.search(r"VmSize:\s+(\d+)", status).group(1))
        assert vm_kb < 256 * 1024, f"auth-worker {pid} VmSize {vm_kb} kB"


# --- modes -----------------------------------------------------------------------------------------

def test_rfc7662_introspection_mode_accepts_an_active_token(make_stack, live_idp):
    s = make_stack(introspection_settings(live_idp), postfix=False)
    live_idp.reset_stats()
    assert s.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2").ok
    assert live_idp.stats().get("/token/introspection", 0) == 1


def test_rfc7662_introspection_with_credentials_in_the_url(make_stack, live_idp):
    url = live_idp.introspection_url.replace("http://", "http://dovecot:dovecot-secret@")
    s = make_stack(f"introspection_url = {url}\nintrospection_mode = post\n", postfix=False)
    assert s.imap_login(ALICE, live_idp.token("alice"), "OAUTHBEARER").ok


def test_rfc7662_revoked_token_is_rejected_as_inactive(make_stack, live_idp):
    s = make_stack(introspection_settings(live_idp), postfix=False)
    token = live_idp.token("alice")
    live_idp.revoke(token)
    mark = s.log_mark()
    r = s.imap_login(ALICE, token, "XOAUTH2")
    assert rejected(r), r.text
    assert "not active" in s.wait_log(mark, "authentication failed")


def test_rfc7662_wrong_client_secret_is_a_temporary_failure(make_stack, live_idp):
    s = make_stack(introspection_settings(live_idp).replace("dovecot-secret", "wrong-secret"), postfix=False)
    r = s.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
    assert r.tempfail, r.text


# --- Dovecot's auth cache --------------------------------------------------------------------------

def test_with_dovecots_auth_cache_a_wrong_token_after_a_right_one_still_fails(make_stack, live_idp):
    # Default lua passdb cache_key (%u): auth_password_verify makes Dovecot cache {SHA1}<token>, never
    # an empty password, so another token for the same user is never accepted from Dovecot's cache.
    s = make_stack(userinfo_settings(live_idp), auth_cache=True, postfix=False)
    assert s.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2").ok
    assert rejected(s.imap_login(ALICE, "wrong-token-after-right-one", "XOAUTH2"))
    assert rejected(s.imap_login(ALICE, live_idp.token("bob"), "OAUTHBEARER"))


DOCUMENTED_CACHE_KEY = "cache_key=%u%{sha256:password}"


def test_with_the_documented_cache_key_a_new_token_after_a_failure_is_checked_again(make_stack, live_idp):
    # With cache_key=%u, one failed attempt makes Dovecot's cache refuse every later token of the user
    # (even a fresh valid one) until auth_cache_negative_ttl; a per-token key avoids that lockout.
    s = make_stack(userinfo_settings(live_idp), auth_cache=True, postfix=False, passdb_args_extra=DOCUMENTED_CACHE_KEY)
    first = live_idp.token("alice")
    assert s.imap_login(ALICE, first, "XOAUTH2").ok
    assert rejected(s.imap_login(ALICE, "wrong-token-after-right-one", "XOAUTH2"))
    assert rejected(s.imap_login(ALICE, live_idp.token("bob"), "OAUTHBEARER"))
    assert s.imap_login(ALICE, live_idp.token("alice"), "OAUTHBEARER").ok
    live_idp.reset_stats()
    assert s.imap_login(ALICE, first, "OAUTHBEARER").ok
    assert live_idp.stats().get("/me", 0) == 0


# --- provider outages and the module's cache -------------------------------------------------------

def test_provider_down_new_token_is_temporary_failure_cached_token_still_works(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp), auth_worker_max_count=1)
    seen, fresh = live_idp.token("alice"), live_idp.token("alice")
    assert s.imap_login(ALICE, seen).ok
    live_idp.stop()
    assert s.imap_login(ALICE, seen).ok
    assert s.smtp_login(ALICE, seen).ok
    mark = s.log_mark()
    r = s.imap_login(ALICE, fresh)
    assert r.tempfail, r.text
    assert "temporary failure: provider unreachable" in s.wait_log(mark, "temporary failure")
    # Postfix 3.7 answers 535 to any SASL failure, even Dovecot's temp_fail; Dovecot's own submission
    # service shows what Dovecot reports: 454.
    assert s.smtp_login(ALICE, fresh, server="dovecot").tempfail


def test_repeated_logins_with_a_cached_token_make_no_provider_request(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp), auth_worker_max_count=1, postfix=False)
    token = live_idp.token("alice")
    assert s.imap_login(ALICE, token).ok
    live_idp.reset_stats()
    for mech in ("OAUTHBEARER", "XOAUTH2", "OAUTHBEARER", "XOAUTH2", "OAUTHBEARER"):
        assert s.imap_login(ALICE, token, mech).ok
    assert live_idp.stats().get("/me", 0) == 0


def test_concurrent_logins_with_one_new_token_make_at_most_one_request_per_worker(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp), auth_worker_max_count=4, postfix=False)
    token = live_idp.token("bob")
    live_idp.reset_stats()
    results = []
    lock = threading.Lock()

    def login():
        r = s.imap_login(BOB, token, "XOAUTH2")
        with lock:
            results.append(r)

    threads = [threading.Thread(target=login) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results), [r.text for r in results if not r.ok]
    workers = len(s.auth_worker_pids())
    calls = live_idp.stats().get("/me", 0)
    assert 1 <= calls <= workers <= 4, (calls, workers)


# --- settings --------------------------------------------------------------------------------------

def test_bad_settings_are_a_temporary_failure_naming_file_line_and_key(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp, "introspection_modus = auth\n"), postfix=False)
    mark = s.log_mark()
    r = s.imap_login(ALICE, live_idp.token("alice"))
    assert r.tempfail, r.text
    log = s.wait_log(mark, "unknown key")
    assert re.search(r"settings file \S+dovecot-oauth2.conf.ext line 4: unknown key 'introspection_modus'", log), log
    # the auth process is still there and answering
    assert s.imap_login(ALICE, "x" * 20).tempfail


def test_settings_file_readable_only_by_root_works(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp), settings_mode=0o600, postfix=False)
    assert s.imap_login(ALICE, live_idp.token("alice")).ok


def test_pass_attrs_reach_dovecot_as_passdb_fields(make_stack, live_idp):
    # userdb_* fields from the passdb override the userdb: a claim-driven quota rule reaches the session.
    s = make_stack(
        userinfo_settings(live_idp, "pass_attrs = userdb_oauth2_name=%{oauth2:preferred_username} userdb_oauth2_login=%u\n"),
        postfix=False,
        auth_debug=True,
    )
    mark = s.log_mark()
    assert s.imap_login(ALICE, live_idp.token("alice")).ok
    log = s.log_since(mark)
    assert "oauth2_name=alice" in log, log[-3000:]
    assert "oauth2_login=alice@example.test" in log, log[-3000:]
