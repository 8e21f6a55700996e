"""The README's "Dovecot 2.4 and docker-mailserver edge" section says what the tests run: its Dovecot
block is the one tests/e2e/test_daemon_dovecot24.py uses, its daemon settings pass the daemon's own
check, and its systemd unit passes `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from oauth2d_runner import BUILT_DAEMON, REPO, Daemon, daemon_problem

README = os.path.join(REPO, "README.md")


def _need(problem: str | None) -> None:
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def section() -> str:
    text = open(README).read()
    m = re.search(r"^## Dovecot 2\.4 and docker-mailserver edge\n(.*?)^## ", text, re.M | re.S)
    assert m, "README has no section 'Dovecot 2.4 and docker-mailserver edge'"
    return m.group(1)


def blocks() -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", section(), re.M | re.S)


def block_with(needle: str) -> str:
    found = [b for b in blocks() if needle in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {needle!r}"
    return found[0]


def keys(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(\w+) = (.*?)\s*$", text, re.M))


def _daemon(tmp: str) -> Daemon:
    d = Daemon(tmp, "introspection_url = http://127.0.0.1:9/me\n", listen="127.0.0.1:7662")
    d.client, d.port = ("dovecot", "SECRET"), 7662  # as the README writes it; never started
    return d


def test_dovecot_24_block_is_the_one_the_tests_run():
    text = block_with("oauth2 {")
    m = re.search(r"^oauth2 \{\n(.*?)^\}", text, re.M | re.S)
    assert m, text
    with tempfile.TemporaryDirectory() as tmp:
        assert keys(m.group(1)) == _daemon(tmp).dovecot24_block()
    assert re.search(r"^auth_mechanisms \{\n  oauthbearer = yes\n  xoauth2 = yes\n\}", text, re.M), text


def test_daemon_settings_example_passes_the_daemons_check():
    _need(daemon_problem())
    text = block_with("listen_client_secret")
    with tempfile.TemporaryDirectory() as tmp:
        secret = os.path.join(tmp, "secret")
        with open(secret, "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")
        path = os.path.join(tmp, "dovecot-oauth2.conf.ext")
        with open(path, "w") as f:
            f.write(text.replace("</etc/dovecot/dovecot-oauth2d.secret", "<" + secret))
        os.chmod(path, 0o640)
        p = subprocess.run([BUILT_DAEMON, "-t", "-c", path], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "is usable: would listen on 127.0.0.1:7662" in p.stdout + p.stderr
        assert "warning" not in p.stdout + p.stderr


def test_systemd_unit_passes_systemd_analyze_verify():
    _need(daemon_problem())
    _need(None if shutil.which("systemd-analyze") else "systemd-analyze is not installed (package systemd)")
    unit = block_with("[Service]")
    assert "ExecStart=/usr/local/bin/dovecot-oauth2d -c /etc/dovecot/dovecot-oauth2.conf.ext\n" in unit
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dovecot-oauth2d.service")
        with open(path, "w") as f:
            f.write(unit)
        # the unit names /usr/local/bin/dovecot-oauth2d: the built one is put there in a private mount
        # namespace only (a tmpfs over /usr/local/bin that nothing else sees)
        script = ('set -e; mount -t tmpfs tmpfs /usr/local/bin; cp "$1" /usr/local/bin/dovecot-oauth2d; '
                  'exec systemd-analyze verify "$2"')
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", BUILT_DAEMON,
                            path], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout + p.stderr == "", p.stdout + p.stderr
