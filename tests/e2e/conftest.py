"""Fixtures for the end-to-end suite: the real oidc-provider, the built module, and private Dovecot +
Postfix stacks on loopback. Every token the IdP issues and every client secret is recorded, and at the
end of the session no log written by the suite may contain any of them."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from faultstub import FaultStub  # noqa: E402
from idp import IdP  # noqa: E402
from mailstack import MailStack  # noqa: E402

LUA_SCRIPT = os.path.join(ROOT, "lua", "dovecot-oauth2.lua")
BUILT_MODULE = os.path.join(ROOT, "target", "release", "libdovecot_oauth2.so")

ISSUED_TOKENS: list[str] = []
# A crash: Dovecot's "child N killed with signal 11/6/7...", a fatal or panic line, a Rust panic.
# Not a crash: "Killed with signal 15 (by pid=...)", the master terminating old processes on reload.
CRASH = re.compile(r"Fatal|Panic|killed with signal (?!15\b)\d+|segfault|panicked", re.I)


def crash_lines(log: str) -> list[str]:
    """The whole log lines that look like a crash, so that a failing assertion shows what happened."""
    return [line for line in log.splitlines() if CRASH.search(line)]


SECRETS = ["dovecot-secret", "mail-client-secret", "dovecot-grant-secret"]
# Passwords the tests send (app passwords, IdP passwords, wrong guesses): none may reach a log either.
PASSWORDS_SENT: list[str] = []


# --- the machine's own mail servers are left as they were -------------------------------------------

SYSTEM_MASTERS = {  # name: (pid file, executable of the master process)
    "dovecot": ("/run/dovecot/master.pid", "/usr/sbin/dovecot"),
    "postfix": ("/var/spool/postfix/pid/master.pid", "/usr/lib/postfix/sbin/master"),
}
SYSTEM_CONFIG = ("/etc/dovecot", "/etc/postfix")


def system_mail_state() -> dict:
    """The system Dovecot's and Postfix's master process (pid, or None when not running) and every file
    of /etc/dovecot and /etc/postfix (content, mode, owner)."""
    from dms_root import snapshot

    state: dict = {}
    for name, (pidfile, exe) in SYSTEM_MASTERS.items():
        pid = None
        try:
            with open(pidfile) as f:
                candidate = int(f.read().split()[0])
            if os.readlink(f"/proc/{candidate}/exe") == exe:
                pid = candidate
        except (OSError, ValueError, IndexError):
            pass
        state[name] = pid
    for d in SYSTEM_CONFIG:
        state[d] = snapshot(d) if os.path.isdir(d) else None
    return state


@pytest.fixture(scope="session", autouse=True)
def system_mail_servers_left_alone():
    """The suite never stops, starts or reconfigures the machine's Dovecot or Postfix (CI starts the
    system Dovecot before the suite, so that this is checked against a running one)."""
    before = system_mail_state()
    yield
    after = system_mail_state()
    changed = [k for k in before if k in SYSTEM_MASTERS and before[k] != after[k]]
    for d in SYSTEM_CONFIG:
        b, a = before[d] or {}, after[d] or {}
        changed += [f"{d}/{rel}" for rel in sorted(set(b) | set(a)) if b.get(rel) != a.get(rel)]
    assert not changed, f"the suite changed the machine's mail servers: {changed} (before: " \
                        f"dovecot={before['dovecot']} postfix={before['postfix']})"


@pytest.fixture(scope="session")
def workroot():
    d = tempfile.mkdtemp(prefix="o2e2e-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("KEEP_E2E_DIR"):
        print(f"\ne2e files kept in {d}")
    else:
        _check_logs_hold_no_secrets(d)
        shutil.rmtree(d, ignore_errors=True)


def _check_logs_hold_no_secrets(root: str) -> None:
    leaks = []
    for path in glob.glob(os.path.join(root, "**", "*.log"), recursive=True) + glob.glob(
        os.path.join(root, "**", "*.stdout"), recursive=True
    ):
        if os.path.basename(path) == "idp.log":
            continue  # the IdP's own log is not ours
        text = open(path, errors="replace").read()
        for t in ISSUED_TOKENS:
            if t in text:
                leaks.append(f"{path}: token {t[:6]}...")
        for s in SECRETS:
            if s in text:
                leaks.append(f"{path}: secret {s[:3]}...")
        for p in PASSWORDS_SENT:
            if p in text:
                leaks.append(f"{path}: password {p[:3]}...")
    assert not leaks, "tokens or secrets in logs:\n" + "\n".join(leaks)


@pytest.fixture(scope="session")
def module_dir(workroot):
    """The built module, installed under the name `require "dovecot_oauth2"` looks for."""
    if not os.path.exists(BUILT_MODULE):
        pytest.fail(f"{BUILT_MODULE} missing: run `cargo build --release` first (tests/run.sh does)")
    d = os.path.join(workroot, "lib")
    os.makedirs(d, exist_ok=True)
    shutil.copy(BUILT_MODULE, os.path.join(d, "dovecot_oauth2.so"))
    return d


class RecordingIdP(IdP):
    def token_response(self, *a, **kw):
        r = super().token_response(*a, **kw)
        ISSUED_TOKENS.append(r["access_token"])
        return r


@pytest.fixture(scope="session")
def idp(workroot):
    p = RecordingIdP(os.path.join(workroot, "idp"))
    p.start()
    yield p
    p.stop()


@pytest.fixture
def live_idp(idp):
    """The IdP, guaranteed running (a test may stop it; it is started again afterwards)."""
    if not idp.running:
        idp.start()
    yield idp
    if not idp.running:
        idp.start()


@pytest.fixture(scope="module")
def stub():
    """A provider stub that can be told to misbehave (see faultstub.py), one per test file."""
    s = FaultStub().start()
    yield s
    s.stop()


def userinfo_settings(idp, extra: str = "") -> str:
    return (
        f"introspection_url = {idp.userinfo_url}\n"
        "introspection_mode = auth\n"
        "username_attribute = email\n" + extra
    )


def introspection_settings(idp, extra: str = "") -> str:
    return (
        f"introspection_url = {idp.introspection_url}\n"
        "introspection_mode = post\n"
        "client_id = dovecot\n"
        "client_secret = dovecot-secret\n"
        "username_attribute = email\n" + extra
    )


@contextlib.contextmanager
def running_stack(workroot: str, module_dir: str, settings: str, prefix: str = "stack", settings_mode: int = 0o640, **kw):
    """A started MailStack whose module settings file holds `settings`; stopped on exit."""
    d = tempfile.mkdtemp(prefix=prefix[:40] + "-", dir=workroot)
    os.chmod(d, 0o755)
    path = os.path.join(d, "dovecot-oauth2.conf.ext")
    with open(path, "w") as f:
        f.write(settings)
    os.chmod(path, settings_mode)
    s = MailStack(os.path.join(d, "stack"), lua_script=LUA_SCRIPT, settings_file=path, module_dir=module_dir, **kw)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_stack(workroot, module_dir, request):
    """make_stack(settings_text, **MailStack kwargs) -> a started stack, stopped after the test."""
    with contextlib.ExitStack() as stacks:
        yield lambda settings, **kw: stacks.enter_context(
            running_stack(workroot, module_dir, settings, prefix=request.node.name, **kw)
        )
