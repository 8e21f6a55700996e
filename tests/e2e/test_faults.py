"""Provider faults a real provider won't produce on demand (issue 6): each is a temporary failure
within the configured timeout, with a clear log line, and leaves no auth-worker stuck."""

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
    stub.set(fault, arg)
    mark = fault_stack.log_mark()
    started = time.monotonic()
    r = fault_stack.imap_login(ALICE, fresh_token(stub))
    elapsed = time.monotonic() - started
    stub.set("ok")
    assert r.tempfail, r.text
    assert elapsed < TIMEOUT_MS / 1000 + 2.5, f"took {elapsed:.1f} s"
    log = fault_stack.wait_log(mark, "temporary failure")
    assert reason in log, log[-2000:]
    # No worker is stuck: the next login with a good token is answered at once.
    started = time.monotonic()
    assert fault_stack.imap_login(ALICE, fresh_token(stub)).ok
    assert time.monotonic() - started < 2.5


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
    st.set("status", 503)
    for _ in range(3):
        assert s.imap_login(ALICE, fresh_token(st)).tempfail
    asked = st.requests
    mark = s.log_mark()
    started = time.monotonic()
    assert s.imap_login(ALICE, fresh_token(st)).tempfail
    assert time.monotonic() - started < 1.0
    assert st.requests == asked, "the provider was asked while the circuit was open"
    assert "failed 3 times in a row; not asked again for" in s.wait_log(mark, "temporary failure")
    assert s.imap_login(ALICE, cached).ok, "cached tokens keep working"
    # It recovers by itself once the provider answers again.
    st.set("ok")
    time.sleep(2.2)
    assert s.imap_login(ALICE, fresh_token(st)).ok


def test_stale_if_error_accepts_a_known_token_past_its_cache_ttl_while_the_provider_is_down(make_stub_stack):
    s, st = make_stub_stack("cache_ttl_secs = 1\nstale_if_error_secs = 300\ncircuit_breaker_failures = 0\n")
    known = fresh_token(st)
    assert s.imap_login(ALICE, known).ok
    time.sleep(1.2)
    st.set("status", 502)
    mark = s.log_mark()
    assert s.imap_login(ALICE, known).ok
    assert "stale_if_error_secs" in s.wait_log(mark, "earlier verdict")
    assert s.imap_login(ALICE, fresh_token(st)).tempfail, "a token never seen is not accepted"


def test_without_stale_if_error_a_known_token_past_its_cache_ttl_is_a_temporary_failure(make_stub_stack):
    s, st = make_stub_stack("cache_ttl_secs = 1\ncircuit_breaker_failures = 0\n")
    known = fresh_token(st)
    assert s.imap_login(ALICE, known).ok
    time.sleep(1.2)
    st.set("status", 502)
    assert s.imap_login(ALICE, known).tempfail
