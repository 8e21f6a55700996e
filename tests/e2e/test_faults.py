"""Provider faults a real provider won't produce on demand (issue 6): each is a temporary failure
within the configured timeout, with a clear log line, and leaves no auth-worker stuck."""

from __future__ import annotations

import itertools
import os
import tempfile
import time

import pytest

from conftest import LUA_SCRIPT
from faultstub import FaultStub
from mailstack import MailStack

ALICE = "alice@example.test"
TIMEOUT_MS = 1000
_n = itertools.count()


@pytest.fixture(scope="module")
def stub():
    s = FaultStub().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fault_stack(workroot, module_dir, stub):
    d = tempfile.mkdtemp(prefix="faults-", dir=workroot)
    os.chmod(d, 0o755)
    path = os.path.join(d, "dovecot-oauth2.conf.ext")
    with open(path, "w") as f:
        f.write(f"introspection_url = {stub.url}\ntimeout_msecs = {TIMEOUT_MS}\nmax_response_bytes = 65536\n")
    s = MailStack(os.path.join(d, "stack"), lua_script=LUA_SCRIPT, settings_file=path, module_dir=module_dir,
                  auth_worker_max_count=2, postfix=False)
    s.start()
    yield s
    s.stop()


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
