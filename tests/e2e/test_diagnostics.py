"""Diagnostics (issue 6): the troubleshooting command, per-process counters in Dovecot's log, and the
warning for a settings file others can read."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, userinfo_settings

CHECK = os.path.join(ROOT, "target", "release", "dovecot-oauth2-check")
ALICE = "alice@example.test"


@pytest.fixture
def settings_file(workroot):
    def write(text: str, mode: int = 0o600) -> str:
        fd, path = tempfile.mkstemp(prefix="check-", suffix=".conf", dir=workroot)
        os.write(fd, text.encode())
        os.close(fd)
        os.chmod(path, mode)
        return path

    return write


def check(path: str, user: str, token: str | None = None, stdin: str | None = None):
    args = [CHECK, "-c", path, user] + ([token] if token is not None else [])
    return subprocess.run(args, input=(stdin or "").encode(), capture_output=True, timeout=30)


def test_check_command_accepts_a_valid_token_and_shows_each_step(live_idp, settings_file):
    token = live_idp.token("alice")
    r = check(settings_file(userinfo_settings(live_idp)), ALICE, stdin=token + "\n")
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "mode: auth" in out
    assert f"GET {live_idp.userinfo_url} -> HTTP 200" in out
    assert "provider claims: email = alice@example.test" in out
    assert "cache: miss" in out
    assert "verdict: ACCEPTED" in out
    assert token not in out + r.stderr.decode()


def test_check_command_exits_1_with_the_reason_for_another_users_token(live_idp, settings_file):
    r = check(settings_file(userinfo_settings(live_idp)), "bob@example.test", live_idp.token("alice"))
    assert r.returncode == 1
    assert "verdict: AUTHENTICATION FAILED: token belongs to 'alice@example.test'" in r.stdout.decode()


def test_check_command_exits_2_when_the_provider_is_down(live_idp, settings_file):
    path = settings_file(userinfo_settings(live_idp))
    token = live_idp.token("alice")
    live_idp.stop()
    r = check(path, ALICE, token)
    assert r.returncode == 2
    assert "verdict: TEMPORARY FAILURE: provider unreachable" in r.stdout.decode()


def test_check_command_exits_2_naming_a_bad_settings_key(live_idp, settings_file):
    r = check(settings_file(userinfo_settings(live_idp, "usernam_attribute = email\n")), ALICE, "x" * 20)
    assert r.returncode == 2
    assert "line 4: unknown key 'usernam_attribute'" in r.stdout.decode()


@pytest.mark.parametrize(
    "userinfo,secrets",
    [("dovecot:S3CR/ET9", ["S3CR", "ET9"]), ("dovecot:1234/5678", ["1234", "5678"]),
     ("dovecot:1234?5678", ["1234", "5678"]), ("dove/cot:s3cretX", ["dove/", "s3cretX"])],
    ids=["slash", "numeric-slash", "question-mark", "slash-in-user"],
)
def test_check_command_never_shows_introspection_url_credentials_that_do_not_parse(settings_file, userinfo, secrets):
    path = settings_file(f"introspection_url = https://{userinfo}@idp.test/introspect\nintrospection_mode = post\n")
    r = check(path, ALICE, "x" * 20)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 2, out
    assert "line 1: introspection_url: " in out, out
    for secret in secrets:
        assert secret not in out, out


def test_counters_are_written_to_dovecots_log_at_the_configured_interval(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp, "stats_log_interval_secs = 1\n"), postfix=False, auth_worker_max_count=1)
    token = live_idp.token("alice")
    assert s.imap_login(ALICE, token).ok
    assert not s.imap_login("bob@example.test", token).ok
    time.sleep(1.1)
    mark = s.log_mark()
    assert s.imap_login(ALICE, token).ok
    line = s.wait_log(mark, "dovecot-oauth2: stats")
    assert "accepted=2 rejected=1" in line and "rejected_wrong_user=1" in line and "cache_hits=1" in line, line


def test_world_readable_settings_file_gets_a_warning_in_dovecots_log(make_stack, live_idp):
    s = make_stack(userinfo_settings(live_idp), settings_mode=0o644, postfix=False)
    mark = s.log_mark()
    assert s.imap_login(ALICE, live_idp.token("alice")).ok
    assert "is readable by users other than root and dovecot (mode 644)" in s.wait_log(mark, "readable by users")
