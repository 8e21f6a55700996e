"""Issue 11 end to end: dovecot-oauth2d behind a real Dovecot 2.4.1 (Debian 13's packages in the trixie
chroot, tests/e2e/dovecot24.py) and the real oidc-provider, over IMAP and SMTP submission (the host's
Postfix with Dovecot 2.4's SASL). Dovecot's own oauth2 client asks the daemon (`introspection_mode =
post`, the README's `oauth2 {}` block); the daemon asks the provider in the three modes (userinfo,
RFC 7662 introspection, local JWT with discovery).

What Dovecot 2.4.1 does with the daemon's answers is asserted as it is: every failed introspection,
a 503 of ours included, is "authentication failed" (fixed in 2.4.2), never a temporary failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import tempfile
import threading
import time

import pytest

import conftest
from dovecot24 import Dovecot24Stack, chroot_problem
from idp import decode_jwt
from oauth2d_runner import Daemon, daemon_problem, fingerprint
from test_local_jwt import (AUDIENCE, DROP, b64url, claims, forge, hs256, new_key, provider_key,
                            provider_signed, public_jwk, sign)

ALICE, BOB, CAROL, DAVE = "alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def _need(problem: str | None) -> None:
    """Skip with the reason on a developer's machine; fail in CI, where everything must be there."""
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    _need(chroot_problem())
    _need(daemon_problem())


# --- settings of the daemon's provider side ---------------------------------------------------------

def userinfo_settings(idp, extra: str = "") -> str:
    # max_idle_time_msecs: the test IdP (node) closes idle keep-alive connections after 5 s
    return (f"introspection_url = {idp.userinfo_url}\nintrospection_mode = auth\nusername_attribute = email\n"
            "max_idle_time_msecs = 2000\n" + extra)


def rfc7662_settings(idp, extra: str = "") -> str:
    return (f"introspection_url = {idp.introspection_url}\nintrospection_mode = post\n"
            "client_id = dovecot\nclient_secret = dovecot-secret\nusername_attribute = email\n"
            "active_attribute = active\nactive_value = true\nmax_idle_time_msecs = 2000\n" + extra)


def local_settings(idp, extra: str = "") -> str:
    # jwks_refetch_min_interval_secs = 0: a new kid is fetched at once (key rotation without waiting)
    return ("introspection_mode = local\n"
            f"openid_configuration_url = {idp.discovery_url}\naudience = {AUDIENCE}\nusername_attribute = email\n"
            "jwks_refetch_min_interval_secs = 0\nmax_idle_time_msecs = 2000\n" + extra)


@contextlib.contextmanager
def daemon_and_dovecot(workroot: str, name: str, settings: str, *, block: dict | None = None, **stack_kw):
    """A started daemon with `settings` and a Dovecot 2.4.1 asking it; both stopped on exit."""
    d = Daemon(tempfile.mkdtemp(prefix=f"d24-{name[:40]}-", dir=workroot), settings)
    conftest.SECRETS.append(d.secret)  # the session's leak check looks for it in every log
    d.start()
    stack = None
    try:
        stack = Dovecot24Stack(oauth2=block or d.dovecot24_block(), **stack_kw)
        stack.start()
        yield d, stack
    finally:
        if stack is not None:
            crashes = stack.all_crashes()
            log = stack.log_since(0)
            stack.stop()
            assert not crashes, crashes
            leaked = [t[:6] for t in conftest.ISSUED_TOKENS if t in log] + (["secret"] if d.secret in log else [])
            assert not leaked, f"Dovecot's log holds tokens or the daemon's secret: {leaked}"
        rc = d.stop()
        assert rc == 0, f"dovecot-oauth2d exited {rc} on SIGTERM:\n{d.log_since(0)[-3000:]}"


@pytest.fixture
def make_pair(workroot, request):
    with contextlib.ExitStack() as stacks:
        yield lambda settings, **kw: stacks.enter_context(
            daemon_and_dovecot(workroot, request.node.name, settings, **kw))


@pytest.fixture(scope="module")
def userinfo(workroot, idp):
    with daemon_and_dovecot(workroot, "userinfo", userinfo_settings(idp)) as pair:
        yield pair


@pytest.fixture(scope="module")
def rfc7662(workroot, idp):
    with daemon_and_dovecot(workroot, "rfc7662", rfc7662_settings(idp), postfix=False) as pair:
        yield pair


@pytest.fixture(scope="module")
def local(workroot, idp):
    with daemon_and_dovecot(workroot, "local", local_settings(idp, "max_token_bytes = 3000\n")) as pair:
        yield pair


def refused(r) -> bool:
    """Dovecot 2.4.1's answer to every failed check: authentication failed, not a temporary failure."""
    return not r.ok and not r.tempfail


def assert_daemon_refused(d: Daemon, mark: int, token: str, reason: str) -> str:
    """The daemon logged exactly one refusal of this token, with the reason."""
    fp = fingerprint(token)
    log = d.wait_log(mark, fp, 30)
    lines = [ln for ln in log.splitlines() if fp in ln]
    assert len(lines) == 1, log[-3000:]
    assert "dovecot-oauth2d: info: authentication failed: " in lines[0] and reason in lines[0], lines[0]
    return lines[0]


def assert_imap_refused_by_daemon(pair, token: str, reason: str, user: str = ALICE, mech: str = "XOAUTH2") -> None:
    d, stack = pair
    mark, dmark = stack.log_mark(), d.log_mark()
    r = stack.imap_login(user, token, mech)
    assert refused(r) and "AUTHENTICATIONFAILED" in r.text, r.text
    assert_daemon_refused(d, dmark, token, reason)
    log = stack.wait_log(mark, "(auth_failed)", 30)
    assert "(auth_failed)" in log and "Logged in: user=" not in log, log


# --- userinfo mode: logins that work ----------------------------------------------------------------

@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_imap_login_with_a_valid_token_succeeds(userinfo, live_idp, mech):
    d, stack = userinfo
    mark = stack.log_mark()
    r = stack.imap_login(ALICE, live_idp.token("alice"), mech)
    assert r.ok, r.text + stack.log_since(mark)
    assert re.search(rf"imap-login: (Info: )?Logged in: user=<{ALICE}>, method={mech},",
                     stack.wait_log(mark, "Logged in: user=", 30))


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_smtp_submission_through_postfix_with_a_valid_token_succeeds(userinfo, live_idp, mech):
    d, stack = userinfo
    r = stack.smtp_login(BOB, live_idp.token("bob"), mech)
    assert r.ok, r.transcript


def test_pop3_login_with_a_valid_token_succeeds(userinfo, live_idp):
    d, stack = userinfo
    r = stack.pop3_login(ALICE, live_idp.token("alice"), "XOAUTH2")
    assert r.ok, r.transcript


def test_repeated_logins_with_one_token_ask_the_provider_once(userinfo, live_idp):
    d, stack = userinfo
    token = live_idp.token("alice")
    live_idp.reset_stats()
    before = d.metric("dovecot_oauth2_cache_hits_total")
    assert stack.imap_login(ALICE, token, "XOAUTH2").ok
    assert stack.smtp_login(ALICE, token, "OAUTHBEARER").ok
    for _ in range(3):
        assert stack.imap_login(ALICE, token, "OAUTHBEARER").ok
    assert live_idp.stats() == {"/me": 1}, live_idp.stats()
    assert d.metric("dovecot_oauth2_cache_hits_total") - before == 4


def test_login_user_in_another_case_logs_in_as_the_providers_user(userinfo, live_idp):
    # Dovecot lowercases the login (auth_username_format = %{user | lower}, DMS's too); the daemon
    # answers the identity folded by username_format (%Lu): both sides meet in lower case.
    d, stack = userinfo
    mark = stack.log_mark()
    r = stack.imap_login("Alice@Example.test", live_idp.token("alice"), "XOAUTH2")
    assert r.ok, r.text
    assert f"Logged in: user=<{ALICE}>" in stack.wait_log(mark, "Logged in: user=", 30)


def test_provider_email_in_another_case_matches_the_lowercased_login(userinfo, live_idp):
    # dave's email at the provider is DAVE@Example.TEST
    d, stack = userinfo
    token = live_idp.token("dave")
    assert live_idp.userinfo(token)["email"] == "DAVE@Example.TEST"
    r = stack.imap_login(DAVE, token, "OAUTHBEARER")
    assert r.ok, r.text


# --- userinfo mode: logins that must fail ------------------------------------------------------------

def test_another_users_token_is_refused(userinfo, live_idp):
    # The daemon does not know the login user (Dovecot sends only the token); Dovecot compares the
    # username of the daemon's answer with it.
    d, stack = userinfo
    token = live_idp.token("alice")
    mark = stack.log_mark()
    r = stack.imap_login(BOB, token, "XOAUTH2")
    assert refused(r) and "AUTHENTICATIONFAILED" in r.text, r.text
    log = stack.wait_log(mark, "(auth_failed)", 30)
    assert f"Username '{BOB}' did not match '{ALICE}'" in log, log
    assert "Logged in: user=" not in log
    r = stack.smtp_login(BOB, token, "OAUTHBEARER")
    assert not r.ok and r.text.startswith("535"), r.transcript


def test_garbage_token_is_refused_and_the_daemon_says_why(userinfo, live_idp):
    token = "garbage-" + secrets.token_urlsafe(24)
    assert_imap_refused_by_daemon(userinfo, token, "provider refused the token (HTTP 401)")


def test_garbage_token_over_submission_is_refused(userinfo):
    d, stack = userinfo
    r = stack.smtp_login(ALICE, "garbage-" + secrets.token_urlsafe(24), "XOAUTH2")
    assert not r.ok and r.text.startswith("535"), r.transcript


def test_valid_token_of_a_user_without_a_mailbox_does_not_log_in(userinfo, live_idp):
    # carol is known to the provider but not to Dovecot's userdb
    d, stack = userinfo
    mark = stack.log_mark()
    r = stack.imap_login(CAROL, live_idp.token("carol"), "XOAUTH2")
    assert not r.ok, r.text
    log = stack.wait_log(mark, "(auth_failed)", 30)
    assert "user not found" in log, log
    assert "Logged in: user=" not in log


def test_the_daemons_log_holds_no_token_and_no_secret(userinfo, live_idp):
    d, stack = userinfo
    token = live_idp.token("alice")
    mark = d.log_mark()
    assert stack.imap_login(ALICE, token, "XOAUTH2").ok
    assert refused(stack.imap_login(ALICE, token + "x", "XOAUTH2"))
    text = d.log_since(0)
    assert token not in text and d.secret not in text
    assert fingerprint(token + "x") in d.log_since(mark)


# --- many logins at once ----------------------------------------------------------------------------

def test_concurrent_logins_with_one_new_token_make_one_provider_request(make_pair, live_idp):
    """The provider is paused (SIGSTOP) until every login's introspection is inside the daemon, so
    they all wait on the same check; then it answers once for all of them."""
    n = 8  # under Dovecot's oauth2 max_parallel_connections (10): one connection per login
    d, stack = make_pair(userinfo_settings(live_idp, "timeout_msecs = 120000\n"), postfix=False,
                         oauth2_extra="  http_client_request_timeout = 5 mins")
    token = live_idp.token("alice")
    live_idp.reset_stats()
    results: list = [None] * n
    start = threading.Barrier(n)

    def login(i: int) -> None:
        start.wait()
        results[i] = stack.imap_login(ALICE, token, "XOAUTH2" if i % 2 else "OAUTHBEARER")

    os.kill(live_idp._proc.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=login, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        # every login has its own connection to the daemon open (plus this metrics request's own)
        deadline = time.monotonic() + 120
        while d.metric("dovecot_oauth2d_connections_open") < n + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        waiting = d.metric("dovecot_oauth2d_connections_open") - 1
    finally:
        os.kill(live_idp._proc.pid, signal.SIGCONT)
    for t in threads:
        t.join(300)
    assert waiting >= n, f"only {waiting} of {n} logins reached the daemon while the provider was paused"
    assert all(r is not None and r.ok for r in results), [r and r.text for r in results]
    assert live_idp.stats() == {"/me": 1}, live_idp.stats()
    assert d.metric("dovecot_oauth2_provider_requests_total") == 1


# --- RFC 7662 introspection at the provider -----------------------------------------------------------

@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_rfc7662_mode_imap_login_succeeds(rfc7662, live_idp, mech):
    d, stack = rfc7662
    token = live_idp.token("alice")
    live_idp.reset_stats()
    r = stack.imap_login(ALICE, token, mech)
    assert r.ok, r.text
    assert live_idp.stats() == {"/token/introspection": 1}, live_idp.stats()


def test_rfc7662_mode_revoked_token_is_refused(rfc7662, live_idp):
    token = live_idp.token("alice")
    live_idp.revoke(token)
    assert_imap_refused_by_daemon(rfc7662, token, "token is not active")


def test_rfc7662_mode_another_users_token_is_refused(rfc7662, live_idp):
    d, stack = rfc7662
    mark = stack.log_mark()
    assert refused(stack.imap_login(BOB, live_idp.token("alice"), "OAUTHBEARER"))
    assert f"Username '{BOB}' did not match '{ALICE}'" in stack.wait_log(mark, "did not match", 30)


def test_rfc7662_mode_garbage_token_is_refused(rfc7662):
    assert_imap_refused_by_daemon(rfc7662, "garbage-" + secrets.token_urlsafe(24), "token is not active")


# --- local JWT validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_local_mode_imap_login_with_the_providers_jwt_succeeds(local, live_idp, mech):
    d, stack = local
    r = stack.imap_login(ALICE, live_idp.token("alice", jwt=True), mech)
    assert r.ok, r.text


def test_local_mode_smtp_submission_with_the_providers_jwt_succeeds(local, live_idp):
    d, stack = local
    r = stack.smtp_login(BOB, live_idp.token("bob", jwt=True), "XOAUTH2")
    assert r.ok, r.transcript


def test_local_mode_new_jwts_make_no_provider_request(local, live_idp):
    d, stack = local
    assert stack.imap_login(ALICE, live_idp.token("alice", jwt=True)).ok  # keys fetched by now
    tokens = [live_idp.token(u, jwt=True) for u in ("alice", "bob", "alice")]
    live_idp.reset_stats()
    assert stack.imap_login(ALICE, tokens[0], "XOAUTH2").ok
    assert stack.smtp_login(BOB, tokens[1], "OAUTHBEARER").ok
    assert stack.imap_login(ALICE, tokens[2], "OAUTHBEARER").ok
    assert live_idp.stats() == {}, live_idp.stats()


def test_local_mode_token_crafted_with_the_providers_key_is_accepted(local, live_idp):
    # the control for the crafted refusals below: forge.mjs signs as the provider does
    d, stack = local
    r = stack.imap_login(ALICE, provider_signed(live_idp))
    assert r.ok, r.text


def test_local_mode_unsigned_alg_none_token_is_refused(local, live_idp):
    kid = provider_key(live_idp)["kid"]
    token = (b64url(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid})) + "."
             + b64url(json.dumps(claims(live_idp))) + ".")
    assert_imap_refused_by_daemon(local, token, "token is unsigned (alg 'none')")


@pytest.mark.parametrize("secret_form", ["jwk-json", "pem"])
def test_local_mode_hs256_with_the_providers_public_key_as_secret_is_refused(local, live_idp, secret_form):
    key = provider_key(live_idp)
    pub = public_jwk(key)
    secret = json.dumps(pub).encode() if secret_form == "jwk-json" else forge({"op": "pem", "jwk": pub})[0].encode()
    token = hs256(secret, {"alg": "HS256", "typ": "at+jwt", "kid": key["kid"]}, claims(live_idp))
    assert_imap_refused_by_daemon(local, token, "token alg 'HS256' is HMAC")


def test_local_mode_token_of_another_issuer_is_refused(local, live_idp):
    token = provider_signed(live_idp, iss="https://idp.attacker.example")
    assert_imap_refused_by_daemon(local, token, "token issuer 'https://idp.attacker.example' is not accepted")


def test_local_mode_token_for_another_audience_is_refused(local, live_idp):
    token = provider_signed(live_idp, aud="urn:some-other-api")
    assert_imap_refused_by_daemon(local, token, f"token audience does not include any of '{AUDIENCE}'")


def test_local_mode_token_without_an_audience_is_refused(local, live_idp):
    token = provider_signed(live_idp, aud=DROP)
    assert_imap_refused_by_daemon(local, token, f"token audience does not include any of '{AUDIENCE}'")


def test_local_mode_expired_token_is_refused(local, live_idp):
    now = int(time.time())
    token = provider_signed(live_idp, iat=now - 7200, exp=now - 3600)
    assert_imap_refused_by_daemon(local, token, "token expired 36")


def test_local_mode_token_not_yet_valid_is_refused(local, live_idp):
    token = provider_signed(live_idp, nbf=int(time.time()) + 3600)
    assert_imap_refused_by_daemon(local, token, "token is not valid yet (nbf 3")


def test_local_mode_payload_edited_after_signing_is_refused(local, live_idp):
    real = live_idp.token("alice", jwt=True)
    h, _, sig = real.split(".")
    payload = decode_jwt(real)[1]
    payload["email"] = BOB
    assert_imap_refused_by_daemon(local, f"{h}.{b64url(json.dumps(payload))}.{sig}", "signature does not verify",
                                  user=BOB)


def test_local_mode_token_signed_by_an_unknown_key_is_refused(local, live_idp):
    stranger = new_key("RS256", "not-the-providers-kid")
    token = sign(stranger, {"alg": "RS256", "typ": "at+jwt", "kid": "not-the-providers-kid"}, claims(live_idp))
    assert_imap_refused_by_daemon(local, token, "no signing key 'not-the-providers-kid' for this issuer")


def test_local_mode_valid_jwt_of_another_user_is_refused(local, live_idp):
    d, stack = local
    mark = stack.log_mark()
    assert refused(stack.imap_login(BOB, live_idp.token("alice", jwt=True), "OAUTHBEARER"))
    assert f"Username '{BOB}' did not match '{ALICE}'" in stack.wait_log(mark, "did not match", 30)


def _rotate(idp, keys: list[dict], signing_kid: str, workroot: str) -> None:
    path = os.path.join(workroot, f"rotated-{signing_kid}.json")
    with open(path, "w") as f:
        json.dump({"keys": keys}, f)
    idp.restart(keys_file=path, jwt_kid=signing_kid)


@pytest.fixture
def restorable_idp(live_idp):
    """The IdP, given back with its original signing keys, alg and kid whatever the test did to it."""
    orig = (live_idp.keys_file, live_idp.jwt_alg, live_idp.jwt_kid)
    try:
        yield live_idp
    finally:
        if not live_idp.running or (live_idp.keys_file, live_idp.jwt_alg, live_idp.jwt_kid) != orig:
            live_idp.restart(keys_file=orig[0], jwt_alg=orig[1], jwt_kid=orig[2])


def test_local_mode_key_rotation_is_followed_without_restarts(make_pair, restorable_idp, workroot):
    idp = restorable_idp
    d, stack = make_pair(local_settings(idp), postfix=False)
    used_before = idp.token("alice", jwt=True)
    unused_before = idp.token("alice", jwt=True)
    assert stack.imap_login(ALICE, used_before).ok
    old_kid = provider_key(idp)["kid"]
    new = new_key("RS256", "rotated-" + secrets.token_hex(4))
    _rotate(idp, [new], new["kid"], workroot)  # abrupt: the old key is gone from the key set
    token = idp.token("alice", jwt=True)
    assert decode_jwt(token)[0]["kid"] == new["kid"] != old_kid
    idp.reset_stats()
    r = stack.imap_login(ALICE, token, "XOAUTH2")
    assert r.ok, r.text
    assert idp.stats().get("/jwks", 0) == 1, idp.stats()
    # a token of the removed key never seen before: refused; one accepted before: cached
    assert_imap_refused_by_daemon((d, stack), unused_before, f"no signing key '{old_kid}' for this issuer")
    assert stack.imap_login(ALICE, used_before).ok


# --- the provider down --------------------------------------------------------------------------------

def test_provider_down_cached_token_logs_in_and_a_new_one_fails_as_2_4_1_does(make_pair, live_idp):
    d, stack = make_pair(userinfo_settings(live_idp, "circuit_breaker_failures = 0\n"))
    cached, new = live_idp.token("alice"), live_idp.token("alice")
    assert stack.imap_login(ALICE, cached, "XOAUTH2").ok
    live_idp.stop()
    r = stack.imap_login(ALICE, cached, "OAUTHBEARER")
    assert r.ok, r.text
    r = stack.smtp_login(ALICE, cached, "XOAUTH2")
    assert r.ok, r.transcript
    mark, dmark = stack.log_mark(), d.log_mark()
    r = stack.imap_login(ALICE, new, "XOAUTH2")
    # Dovecot 2.4.1: "authentication failed", as for a bad token (2.4.2 answers a temporary failure)
    assert refused(r) and "AUTHENTICATIONFAILED" in r.text, r.text
    log = stack.wait_log(mark, "Introspection failed", 30)
    assert re.search(r"oauth2 failed: Introspection failed: .*503", log), log
    # the daemon answered 503 and logged the reason once, with the token's hash prefix
    fp = fingerprint(new)
    dlog = d.wait_log(dmark, fp, 30)
    lines = [ln for ln in dlog.splitlines() if fp in ln]
    assert len(lines) == 1 and "warning: temporary failure: " in lines[0], dlog
    assert live_idp.userinfo_url in lines[0] and "unreachable" in lines[0], lines[0]
    assert d.metric('dovecot_oauth2d_http_responses_total{code="503"}') >= 1


def test_provider_down_stale_if_error_keeps_an_expired_acceptance(make_pair, live_idp):
    # cache_ttl_secs = 1: the acceptance is stale after a second; stale_if_error_secs keeps it usable
    # while the provider cannot answer (the mitigation for 2.4.1, where every failure is final).
    d, stack = make_pair(userinfo_settings(live_idp, "cache_ttl_secs = 1\nstale_if_error_secs = 3600\n"
                                           "circuit_breaker_failures = 0\n"), postfix=False)
    token = live_idp.token("bob")
    assert stack.imap_login(BOB, token, "XOAUTH2").ok
    live_idp.stop()
    time.sleep(1.1)  # past the 1 s TTL (a lower bound: the test cannot pass early by luck)
    stale_before = d.metric("dovecot_oauth2_stale_used_total")
    r = stack.imap_login(BOB, token, "OAUTHBEARER")
    assert r.ok, r.text
    assert d.metric("dovecot_oauth2_stale_used_total") == stale_before + 1


# --- username case: what the block's username_validation_format is for --------------------------------

def test_identity_kept_in_its_case_is_folded_by_username_validation_format(make_pair, live_idp):
    # username_format = %u keeps the provider's DAVE@Example.TEST; Dovecot 2.4.1 compares case-
    # sensitively with the lowercased login, so the README block folds the reply.
    d, stack = make_pair(userinfo_settings(live_idp, "username_format = %u\n"), postfix=False)
    assert stack.imap_login(DAVE, live_idp.token("dave"), "XOAUTH2").ok
    stack.reconfigure(oauth2=d.dovecot24_block(username_validation_format=None))
    stack.reload()
    mark = stack.log_mark()
    r = stack.imap_login(DAVE, live_idp.token("dave"), "XOAUTH2")
    assert refused(r), r.text
    assert f"Username '{DAVE}' did not match 'DAVE@Example.TEST'" in stack.wait_log(mark, "did not match", 30)


# --- a unix socket instead of a TCP port ----------------------------------------------------------------

def test_dovecot_reaches_the_daemon_through_a_unix_socket(workroot, live_idp):
    # Dovecot 2.4.1: http_client_proxy_socket_path in oauth2 {} sends the request (absolute-form, with
    # the URL's credentials) to the socket; the URL's host is never contacted (nothing listens there).
    stack = Dovecot24Stack(oauth2={}, postfix=False)
    inside = stack.private_path("oauth2d.sock")
    d = Daemon(tempfile.mkdtemp(prefix="d24-unix-", dir=workroot), userinfo_settings(live_idp),
               listen="unix:" + stack.host_path(inside))
    conftest.SECRETS.append(d.secret)
    d.start()
    try:
        stack.reconfigure(oauth2=d.dovecot24_block(socket_inside=inside))
        assert "@localhost/introspect" in stack.oauth2["introspection_url"]
        stack.start()
        r = stack.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
        assert r.ok, r.text + stack.log_since(0)[-2000:]
        token = "garbage-" + secrets.token_urlsafe(24)
        mark = d.log_mark()
        assert refused(stack.imap_login(ALICE, token, "OAUTHBEARER"))
        assert_daemon_refused(d, mark, token, "provider refused the token (HTTP 401)")
        assert not stack.all_crashes()
    finally:
        stack.stop(remove=False)
        assert d.stop() == 0, d.log_since(0)[-3000:]
        stack.cleanup()
