"""Provider faults a real provider won't produce on demand (issue 6): each is a temporary failure
within the configured timeout, with a clear log line, and leaves no auth-worker stuck. The circuit
breaker measures the provider's health, not a client's tokens, and a stale acceptance is never served
for a token the provider answered for (issue 10)."""

from __future__ import annotations

import itertools
import time

import pytest

from conftest import running_stack
from faultstub import FaultStub

ALICE = "alice@example.test"
TIMEOUT_MS = 1000
_n = itertools.count()


@pytest.fixture(scope="module")
def fault_stack(workroot, module_dir, stub):
    settings = f"introspection_url = {stub.url}\ntimeout_msecs = {TIMEOUT_MS}\nmax_response_bytes = 65536\n"
    with running_stack(workroot, module_dir, settings, prefix="faults", auth_worker_max_count=2, postfix=False) as s:
        yield s


def fresh_token(stub: FaultStub, email: str = ALICE) -> str:
    t = f"fault-token-{next(_n)}-{time.time_ns()}"
    stub.tokens[t] = email
    return t


@pytest.mark.parametrize(
    "fault,arg,reason",
    [
        ("slow", 5, "provider timed out after 1000 ms"),
        ("endless", 0, "provider timed out after 1000 ms"),
        ("status", 500, "provider answered HTTP 500"),
        ("status", 503, "provider answered HTTP 503"),
        ("status", 429, "provider answered HTTP 429"),
        ("redirect", 0, "provider answered HTTP 302"),
        ("garbage", 0, "is unusable: not JSON"),
        ("huge", 1_000_000, "is unusable: body over 65536 bytes"),
        ("reset", 0, "provider unreachable"),
    ],
    ids=["slow", "endless-body", "500", "503", "429", "redirect", "garbage", "huge-body", "reset"],
)
def test_provider_fault_is_a_prompt_temporary_failure_and_the_worker_recovers(fault_stack, stub, fault, arg, reason):
    # A slow or endless reply is ended by the module's own timeout (the log says so), not by the stub.
    stub.set(fault, arg)
    mark = fault_stack.log_mark()
    r = fault_stack.imap_login(ALICE, fresh_token(stub))
    stub.set("ok")
    assert r.tempfail, r.text
    log = fault_stack.wait_log(mark, "temporary failure")
    assert reason in log, log[-2000:]
    # No worker is stuck: the next login with a good token is accepted.
    assert fault_stack.imap_login(ALICE, fresh_token(stub)).ok


def test_provider_name_that_does_not_resolve_is_a_temporary_failure(make_stack, stub):
    s = make_stack("introspection_url = http://provider.does-not-exist.invalid/userinfo\ntimeout_msecs = 1000\n",
                   postfix=False)
    mark = s.log_mark()
    r = s.imap_login(ALICE, fresh_token(stub))
    assert r.tempfail, r.text
    assert "provider unreachable at http://provider.does-not-exist.invalid/userinfo" in s.wait_log(mark, "temporary failure")


@pytest.fixture
def make_stub_stack(make_stack):
    stubs = []

    def make(settings_extra: str, **kw):
        st = FaultStub().start()
        stubs.append(st)
        s = make_stack(f"introspection_url = {st.url}\ntimeout_msecs = {TIMEOUT_MS}\n{settings_extra}",
                       postfix=False, auth_worker_max_count=1, **kw)
        return s, st

    yield make
    for st in stubs:
        st.stop()


def test_after_consecutive_failures_the_provider_is_left_alone_and_logins_fail_fast(make_stub_stack):
    s, st = make_stub_stack("circuit_breaker_failures = 3\ncircuit_breaker_backoff_secs = 2\n")
    cached = fresh_token(st)
    assert s.imap_login(ALICE, cached).ok
    st.set("reset")  # no answer at all: the provider cannot be reached
    for _ in range(3):
        assert s.imap_login(ALICE, fresh_token(st)).tempfail
    asked = st.requests
    mark = s.log_mark()
    assert s.imap_login(ALICE, fresh_token(st)).tempfail
    assert st.requests == asked, "the provider was asked while the circuit was open"
    assert "failed 3 times in a row; not asked again for" in s.wait_log(mark, "temporary failure")
    assert s.imap_login(ALICE, cached).ok, "cached tokens keep working"
    # It recovers by itself once the provider answers again.
    st.set("ok")
    time.sleep(2.2)  # at least the back-off (a busy machine only waits longer)
    assert s.imap_login(ALICE, fresh_token(st)).ok


def test_stale_if_error_accepts_a_known_token_past_its_cache_ttl_while_the_provider_is_down(make_stub_stack):
    s, st = make_stub_stack("cache_ttl_secs = 1\nstale_if_error_secs = 300\ncircuit_breaker_failures = 0\n")
    known = fresh_token(st)
    assert s.imap_login(ALICE, known).ok
    time.sleep(1.2)  # at least cache_ttl_secs: the acceptance is stale now
    st.set("reset")
    mark = s.log_mark()
    assert s.imap_login(ALICE, known).ok
    assert "stale_if_error_secs" in s.wait_log(mark, "earlier verdict")
    assert s.imap_login(ALICE, fresh_token(st)).tempfail, "a token never seen is not accepted"


def test_stale_if_error_does_not_accept_a_known_token_the_provider_answers_5xx_for(make_stub_stack):
    s, st = make_stub_stack("cache_ttl_secs = 1\nstale_if_error_secs = 300\ncircuit_breaker_failures = 0\n")
    known = fresh_token(st)
    assert s.imap_login(ALICE, known).ok
    time.sleep(1.2)  # at least cache_ttl_secs: the acceptance is stale now
    st.per_token[known] = ("status", 502)
    mark = s.log_mark()
    assert s.imap_login(ALICE, known).tempfail
    assert "provider answered HTTP 502" in s.wait_log(mark, "temporary failure")
    assert "earlier verdict" not in s.log_since(mark)


def test_garbage_tokens_the_provider_answers_5xx_for_do_not_lock_out_a_good_token(make_stub_stack):
    s, st = make_stub_stack("circuit_breaker_failures = 3\n")
    st.unknown = ("status", 503)  # some providers answer 500/503 to a token they cannot parse
    mark = s.log_mark()
    for i in range(6):
        assert s.imap_login(ALICE, f"garbage-{i}-{time.time_ns()}").tempfail
    good = fresh_token(st)
    r = s.imap_login(ALICE, good)
    assert r.ok, (r.text, s.log_since(mark)[-2000:])
    assert st.requests_by_token[good] == 1
    assert "not asked again" not in s.log_since(mark)


@pytest.mark.parametrize("garbage", [("status", 503), ("reset", 0)], ids=["after-garbage-5xx", "circuit-open"])
def test_a_revoked_token_is_refused_not_accepted_from_the_stale_cache(make_stub_stack, garbage):
    s, st = make_stub_stack("cache_ttl_secs = 1\nstale_if_error_secs = 300\ncircuit_breaker_failures = 3\n")
    victim = fresh_token(st)
    assert s.imap_login(ALICE, victim).ok
    time.sleep(1.2)  # at least cache_ttl_secs: the acceptance is stale now
    del st.tokens[victim]
    st.per_token[victim] = ("status", 401)  # revoked
    st.unknown = garbage
    mark = s.log_mark()
    for i in range(4):
        assert s.imap_login(ALICE, f"garbage-{i}-{time.time_ns()}").tempfail
    if garbage[0] == "reset":
        assert "failed 3 times in a row; not asked again" in s.wait_log(mark, "not asked again"), "circuit open"
    mark = s.log_mark()
    r = s.imap_login(ALICE, victim)
    assert not r.ok and not r.tempfail, r.text
    assert "provider refused the token (HTTP 401)" in s.wait_log(mark, "authentication failed")
    assert "earlier verdict" not in s.log_since(mark)


def test_without_stale_if_error_a_known_token_past_its_cache_ttl_is_a_temporary_failure(make_stub_stack):
    s, st = make_stub_stack("cache_ttl_secs = 1\ncircuit_breaker_failures = 0\n")
    known = fresh_token(st)
    assert s.imap_login(ALICE, known).ok
    time.sleep(1.2)  # at least cache_ttl_secs
    st.set("status", 502)
    assert s.imap_login(ALICE, known).tempfail


@pytest.mark.parametrize(
    "userinfo,secrets",
    [("dovecot:12/34", ["12/34", "dovecot:12"]), ("dovecot:12?34", ["12?34", "dovecot:12"]),
     ("do/ve:cot", ["do/ve", "ve:cot"]), ('"dovecot:12#34"', ["12#34", "dovecot:12"])],
    ids=["slash", "question-mark", "slash-in-user", "hash"],
)
def test_introspection_url_credentials_that_do_not_parse_never_reach_the_log(make_stack, stub, userinfo, secrets):
    quoted = userinfo.startswith('"')
    url = f"http://{userinfo.strip(chr(34))}@127.0.0.1:{stub.port}/userinfo"
    s = make_stack(f"introspection_url = {chr(34) + url + chr(34) if quoted else url}\n", postfix=False)
    mark = s.log_mark()
    assert s.imap_login(ALICE, fresh_token(stub)).tempfail
    log = s.wait_log(mark, "temporary failure")
    assert "line 1: introspection_url: " in log, log[-2000:]
    for secret in secrets:
        assert secret not in log, log[-2000:]


def test_a_temporary_failure_line_names_the_provider_without_its_credentials(make_stack, stub):
    port = _closed_port()
    s = make_stack(f"introspection_url = http://cl1ent-x:s3cr%2Fet%40x@127.0.0.1:{port}/userinfo?k=v3ry\n",
                   postfix=False)
    mark = s.log_mark()
    assert s.imap_login(ALICE, fresh_token(stub)).tempfail
    log = s.wait_log(mark, "temporary failure")
    assert f"provider unreachable at http://127.0.0.1:{port}/userinfo:" in log, log[-2000:]
    for secret in ("s3cr", "cl1ent-x", "v3ry"):
        assert secret not in log, log[-2000:]


def _closed_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]
