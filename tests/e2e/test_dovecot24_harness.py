"""The Dovecot 2.4.1 harness (dovecot24.py) works with the real Dovecot 2.4.1 from Debian 13's packages in
the chroot tests/trixie.sh makes, and the Dovecot 2.4.1 behaviour the daemon relies on holds (see
DOVECOT24-NOTES.md). The introspection endpoint here is a tiny stub (dovecot24_stub.py): these tests check
the harness and Dovecot, not the product. Skipped without the chroot, failed without it when CI=true."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from authclient import AuthClient, xoauth2
from dovecot24 import POSTCONF, Dovecot24Stack, _mounts_under, chroot_dir, chroot_problem, crash_lines
from dovecot24_stub import IntrospectionStub

HERE = os.path.dirname(os.path.abspath(__file__))
LUA24 = os.path.join(HERE, "dovecot24_fake_passdb.lua")

ALICE, BOB, CAROL, DAVE = "alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"
# reserved characters on purpose: the URL carries them percent-encoded, Dovecot must decode them
CLIENT_ID, CLIENT_SECRET = "dove cot", "s@c:ret%/x"


@pytest.fixture(scope="module", autouse=True)
def chroot():
    problem = chroot_problem()
    if problem:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI: {problem}")
        pytest.skip(problem)
    return chroot_dir()


def oauth2_block(url: str, **extra: str) -> dict[str, str]:
    return {"introspection_mode": "post", "introspection_url": url, "username_attribute": "username",
            "active_attribute": "active", "active_value": "true", **extra}


@pytest.fixture(scope="module")
def stub():
    s = IntrospectionStub(CLIENT_ID, CLIENT_SECRET).start()
    for user in (ALICE, BOB, CAROL, DAVE):
        local = user.split("@")[0]
        s.replies[f"tok-{local}"] = (200, {"active": True, "username": user})
    s.replies["tok-inactive"] = (200, {"active": False})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stack(stub):
    s = Dovecot24Stack(oauth2=oauth2_block(stub.url()))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def lua_stack(stub):
    # The Lua passdb sees PLAIN/LOGIN passwords and the lookups after Dovecot's own token check.
    s = Dovecot24Stack(oauth2=oauth2_block(stub.url()), lua_script=LUA24,
                       lua_mechanisms="plain login xoauth2 oauthbearer", postfix=False, dovecot_submission=False)
    s.start()
    yield s
    s.stop()


def quick_stack(**kw) -> Dovecot24Stack:
    return Dovecot24Stack(postfix=False, dovecot_submission=False, **kw)


# --------------------------------------------------------------------------- the harness itself


def test_the_chroot_runs_dovecot_2_4_1(stack):
    assert stack.version.startswith("2.4.1"), stack.version
    assert stack.alive()


def test_dovecot_mounts_stay_inside_its_own_mount_namespace(stack):
    assert _mounts_under(stack.root) == []
    master = stack.stack_pids()["dovecot"][0]
    assert os.readlink(f"/proc/{master}/root") == stack.root
    assert os.readlink(f"/proc/{master}/ns/mnt") != os.readlink("/proc/self/ns/mnt")


def test_stop_kills_everything_and_removes_the_private_dir():
    s = quick_stack()
    s.start()
    pids = s.stack_pids()["dovecot"]
    assert pids
    s.stop()
    assert s.stack_pids() == {"dovecot": [], "postfix": []}
    assert not os.path.exists(s.workdir)
    assert _mounts_under(s.root) == []


def test_a_config_dovecot_rejects_fails_start_with_the_reason():
    s = quick_stack(extra_dovecot_conf="no_such_setting_anywhere = 1")
    with pytest.raises(RuntimeError, match="no_such_setting_anywhere"):
        s.start()
    s.stop()
    assert not os.path.exists(s.workdir)


def test_an_auth_process_dying_at_start_fails_start_with_its_fatal_line():
    # xoauth2 without an oauth2 {} block: Dovecot 2.4.1's auth process exits at start
    s = quick_stack(mechanisms="plain xoauth2")
    with pytest.raises(RuntimeError, match="Missing oauth2_introspection_mode"):
        s.start()
    s.stop()


# --------------------------------------------------------------------------- IMAP / POP3 with oauth2 {}


def test_imap_xoauth2_with_an_active_token_logs_in(stack, stub):
    n = stub.count()
    r = stack.imap_login(ALICE, "tok-alice", "XOAUTH2")
    assert r.ok, r.transcript
    req = stub.requests[n]
    assert (req["method"], req["target"], req["form"]) == ("POST", "/introspect", {"token": "tok-alice"})
    assert req["basic"] == (CLIENT_ID, CLIENT_SECRET)  # percent-decoded from the URL's userinfo


def test_imap_oauthbearer_with_an_active_token_logs_in(stack):
    r = stack.imap_login(ALICE, "tok-alice", "OAUTHBEARER")
    assert r.ok, r.transcript


def test_curl_imap_login_with_a_token_logs_in(stack):
    r = stack.imap_login_curl(ALICE, "tok-alice")  # curl 7.88 sends OAUTHBEARER
    assert r.ok, r.transcript


def test_pop3_xoauth2_with_an_active_token_logs_in(stack):
    r = stack.pop3_login(ALICE, "tok-alice", "XOAUTH2")
    assert r.ok, r.transcript


def test_an_inactive_token_is_refused(stack):
    log = stack.new_log()
    r = stack.imap_login(ALICE, "tok-inactive", "XOAUTH2")
    assert not r.ok and not r.tempfail, r.transcript
    assert "AUTHENTICATIONFAILED" in r.text
    assert "Provided token is not valid" in log.wait_for("Provided token is not valid")


def test_another_users_token_is_refused(stack):
    log = stack.new_log()
    r = stack.imap_login(BOB, "tok-alice", "OAUTHBEARER")
    assert not r.ok and not r.tempfail, r.transcript
    assert f"Username '{BOB}' did not match '{ALICE}'" in log.wait_for("did not match")


def test_an_unknown_token_is_refused(stack):
    r = stack.imap_login(ALICE, "garbage", "XOAUTH2")
    assert not r.ok and not r.tempfail, r.transcript


def test_a_valid_token_for_a_user_missing_from_the_userdb_does_not_log_in(stack):
    log = stack.new_log()
    r = stack.imap_login(CAROL, "tok-carol", "XOAUTH2")
    assert not r.ok, r.transcript
    text = log.wait_for("carol")
    assert "Introspection failed" not in text  # the token passed; the userdb refused
    assert CAROL in text


def test_usernames_are_lowered_before_the_oauth2_check(stack):
    # auth_username_format = %{user | lower} (docker-mailserver's): the login name is folded, the reply not
    r = stack.imap_login("Alice@Example.TEST", "tok-alice", "XOAUTH2")
    assert r.ok, r.transcript


# --------------------------------------------------------------------------- SMTP submission


def test_host_postfix_submission_authenticates_through_dovecot24_sasl(stack, stub):
    p = subprocess.run([POSTCONF, "-c", stack.pf_config_dir, "-h", "smtpd_sasl_type", "smtpd_sasl_path"],
                       capture_output=True, text=True, check=True)
    assert p.stdout.split() == ["dovecot", f"inet:127.0.0.1:{stack.auth_port}"]
    for mech in ("XOAUTH2", "OAUTHBEARER"):
        n = stub.count()
        r = stack.smtp_login(ALICE, "tok-alice", mech)
        assert r.ok, (mech, r.transcript)
        assert stub.count() == n + 1  # Dovecot 2.4's oauth2 client asked the endpoint


def test_host_postfix_submission_refuses_an_inactive_token(stack):
    r = stack.smtp_login(ALICE, "tok-inactive", "XOAUTH2")
    assert not r.ok and r.text.startswith("535"), r.transcript


def test_dovecot24_submission_service_authenticates(stack):
    r = stack.smtp_login(ALICE, "tok-alice", "OAUTHBEARER", server="dovecot")
    assert r.ok, r.transcript


def test_authclient_speaks_to_the_legacy_auth_socket(stack):
    c = AuthClient(stack.auth_legacy_socket, timeout=15)
    try:
        status, _ = c.auth("XOAUTH2", xoauth2(ALICE, "tok-alice"))
        assert status == "OK"
        status, _ = c.auth("XOAUTH2", xoauth2(ALICE, "tok-inactive"))
        assert status == "FAIL"
    finally:
        c.close()


def test_plain_login_through_the_passwd_passdb(stack):
    assert stack.imap_plain_login(ALICE, "alice-mailpw").ok
    assert not stack.imap_plain_login(ALICE, "wrong").ok


# --------------------------------------------------------------------------- Lua passdb on 2.4


def test_lua_passdb_plain_accepts_the_right_password(lua_stack):
    log = lua_stack.new_log()
    r = lua_stack.imap_plain_login(ALICE, "alice-luapw")
    assert r.ok, r.transcript
    assert "fake_passdb24: password accepted for alice@example.test" in log.wait_for("fake_passdb24")


def test_lua_passdb_plain_refuses_a_wrong_password(lua_stack):
    r = lua_stack.imap_plain_login(ALICE, "wrong")
    assert not r.ok and not r.tempfail, r.transcript


def test_lua_passdb_internal_failure_is_a_temporary_failure(lua_stack):
    r = lua_stack.imap_plain_login(ALICE, "temp-fail")
    assert not r.ok and r.tempfail, r.transcript


def test_lua_passdb_lookup_runs_after_dovecots_own_token_check(lua_stack):
    log = lua_stack.new_log()
    assert lua_stack.imap_login(ALICE, "tok-alice", "XOAUTH2").ok
    assert "fake_passdb24: lookup ok for alice@example.test" in log.wait_for("fake_passdb24")
    r = lua_stack.imap_login(DAVE, "tok-dave", "XOAUTH2")
    assert not r.ok, r.transcript


ENV_PROBE = """
function script_init() return 0 end
function auth_password_verify(req, password)
  local ok, err = pcall(require, "dovecot_oauth2")
  req:log_info("probe: cfg=" .. tostring(os.getenv("DOVECOT_OAUTH2_CONFIG")) .. " require=" .. tostring(err))
  return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "probe"
end
"""


def test_module_so_and_environment_reach_the_lua_passdb(tmp_path):
    script, fake_module = tmp_path / "probe.lua", tmp_path / "fake.so"
    script.write_text(ENV_PROBE)
    fake_module.write_bytes(b"not an ELF file")  # found on the cpath, then refused by the loader
    s = quick_stack(lua_script=str(script), module_so=str(fake_module),
                    environment={"DOVECOT_OAUTH2_CONFIG": "/etc/probe.conf"})
    s.start()
    try:
        log = s.new_log()
        assert not s.imap_plain_login(ALICE, "x").ok
        text = log.wait_for("probe:")
        assert "probe: cfg=/etc/probe.conf" in text
        assert f"from file '{s.module_dir}/dovecot_oauth2.so'" in text
    finally:
        s.stop()


# --------------------------------------------------------------------------- Dovecot 2.4.1 facts the daemon relies on


def test_introspection_can_go_through_a_unix_socket(stub):
    s = quick_stack(oauth2=oauth2_block("http://localhost/introspect"))
    sock_inside = s.private_path("introspect.sock")
    unix = IntrospectionStub(CLIENT_ID, CLIENT_SECRET, unix_path=s.host_path(sock_inside)).start()
    unix.replies["tok-alice"] = (200, {"active": True, "username": ALICE})
    # http_client_* settings inside oauth2 {} configure its HTTP client
    s.reconfigure(oauth2=oauth2_block(unix.url(host="localhost"), http_client_proxy_socket_path=sock_inside))
    try:
        s.start()
        assert s.imap_login(ALICE, "tok-alice", "XOAUTH2").ok
        req = unix.requests[0]
        # a proxy request: absolute-form target; the origin's Basic credentials still sent
        assert (req["target"], req["basic"]) == ("http://localhost/introspect", (CLIENT_ID, CLIENT_SECRET))
    finally:
        s.stop()
        unix.stop()


def test_post_mode_sends_client_id_and_secret_keys_nowhere(stub):
    n = stub.count()
    s = quick_stack(oauth2=oauth2_block(stub.url(userinfo=""), client_id=CLIENT_ID.replace(" ", ""),
                                        client_secret="x"))
    s.start()
    try:
        assert not s.imap_login(ALICE, "tok-alice", "XOAUTH2").ok
        req = stub.requests[n]
        assert req["basic"] is None and req["form"] == {"token": "tok-alice"}
    finally:
        s.stop()


REPLIES = {
    # reply members -> does Dovecot 2.4.1 log alice in?
    "bearer-type": ({"token_type": "Bearer"}, True),
    "bearer-lowercase": ({"token_type": "bearer"}, True),
    "other-type": ({"token_type": "mac"}, False),
    "expires-int": ({"expires_in": 3600}, True),
    "expires-numeric-string": ({"expires_in": "3600"}, True),
    "expires-fraction": ({"expires_in": 3600.5}, False),
    "expires-negative": ({"expires_in": -1}, False),
    "error-member": ({"error": "invalid_token"}, False),
    "nested-members": ({"ext": {"a": [1, 2]}, "aud": ["x", "y"], "scope": "mail openid", "exp": 4102444800}, True),
    "active-as-string": ({"active": "true"}, True),
    "active-as-number": ({"active": 1}, False),
}


@pytest.fixture(scope="module")
def reply_stack(stub):
    for name, (members, _) in REPLIES.items():
        stub.replies[f"r-{name}"] = (200, {"active": True, "username": ALICE, **members})
    stub.replies["r-status-500"] = (500, {"active": True, "username": ALICE})
    stub.replies["r-status-401-active"] = (401, {"active": True, "username": ALICE})
    stub.replies["r-status-401-empty"] = (401, b"")
    stub.replies["r-mixed-case-username"] = (200, {"active": True, "username": "Alice@Example.test"})
    s = quick_stack(oauth2=oauth2_block(stub.url()))
    s.start()
    yield s
    s.stop()


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_reply_members_dovecot_accepts(reply_stack, name):
    r = reply_stack.imap_login(ALICE, f"r-{name}", "XOAUTH2")
    assert r.ok == REPLIES[name][1], r.transcript
    assert not r.tempfail  # 2.4.1 never answers a temporary failure for oauth2


def test_a_5xx_is_authentication_failed_not_temporary_on_2_4_1(reply_stack):
    r = reply_stack.imap_login(ALICE, "r-status-500", "XOAUTH2")
    assert not r.ok and not r.tempfail, r.transcript


def test_a_4xx_reply_body_is_read_like_a_200(reply_stack):
    # hazard for the daemon: a 401 carrying {"active":true,...} logs the user in; an empty 401 does not
    assert reply_stack.imap_login(ALICE, "r-status-401-active", "XOAUTH2").ok
    assert not reply_stack.imap_login(ALICE, "r-status-401-empty", "XOAUTH2").ok


def test_the_reply_username_is_compared_case_sensitively(reply_stack):
    assert not reply_stack.imap_login(ALICE, "r-mixed-case-username", "XOAUTH2").ok


def test_username_validation_format_lower_folds_the_reply_username(stub):
    stub.replies["r-mixed-case-username"] = (200, {"active": True, "username": "Alice@Example.test"})
    s = quick_stack(oauth2=oauth2_block(stub.url(), username_validation_format="%{user | lower}"))
    s.start()
    try:
        assert s.imap_login(ALICE, "r-mixed-case-username", "XOAUTH2").ok
    finally:
        s.stop()


def test_http_client_request_timeout_in_oauth2_block_bounds_the_wait(stub):
    s = quick_stack(oauth2=oauth2_block(stub.url(), http_client_request_timeout="1s"))
    s.start()
    stub.hold, stub.held = threading.Event(), threading.Event()
    try:
        log = s.new_log()
        r = s.imap_login(ALICE, "tok-alice", "XOAUTH2")  # the stub never answers until released
        assert not r.ok and not r.tempfail, r.transcript
        assert "Request timed out" in log.wait_for("Request timed out")
    finally:
        stub.hold.set()
        stub.hold = None
        s.stop()


# --------------------------------------------------------------------------- logs


def test_dovecot_logs_neither_tokens_nor_the_client_secret_without_auth_debug(stack):
    text = stack.log_since(0)
    assert "tok-alice" not in text and CLIENT_SECRET not in text
    assert "s%40c" not in text  # nor the URL's percent-encoded form


def test_no_crash_in_the_module_stacks_logs(stack, reply_stack, lua_stack):
    for s in (stack, reply_stack, lua_stack):
        assert crash_lines(s.log_since(0)) == []
