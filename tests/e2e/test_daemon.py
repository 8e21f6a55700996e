"""dovecot-oauth2d on its own (issue 11): the real binary against the real oidc-provider, and against
the fault stub for what a real provider won't do. Its HTTP interface, its bounds, its signals and its
failure modes; Dovecot in front of it is in test_daemon_dovecot23.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from conftest import SECRETS, introspection_settings, userinfo_settings
from daemon import BINARY, Daemon, UnixHTTPConnection, basic
from faultstub import FaultStub

ALICE, BOB, DAVE = "alice@example.test", "bob@example.test", "dave@example.test"
CLIENT = ("dovecot-d", "daemon-e2e-client-secret")
SECRETS.append(CLIENT[1])


def daemon_settings(provider: str, extra: str = "", client: tuple[str, str] = CLIENT) -> str:
    return (provider + "listen = 127.0.0.1:0\n"
            f"listen_client_id = {client[0]}\nlisten_client_secret = {client[1]}\n" + extra)


@pytest.fixture(scope="session")
def daemon_binary():
    if not os.path.exists(BINARY):
        pytest.fail(f"{BINARY} missing: run `cargo build --release` first (tests/run.sh does)")
    return BINARY


@pytest.fixture
def make_daemon(workroot, daemon_binary, request):
    """make_daemon(settings_text) -> a started Daemon; stopped after the test, which must exit 0."""
    started = []

    def make(settings: str, client: tuple[str, str] = CLIENT) -> Daemon:
        d = Daemon(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=workroot), settings, client)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        if d.running:
            assert d.stop() == 0, d.log_since(0)[-2000:]


@pytest.fixture(scope="module")
def daemon(workroot, daemon_binary, idp):
    """One daemon for the read-only tests: RFC 7662 introspection at the real provider."""
    d = Daemon(tempfile.mkdtemp(prefix="daemon-", dir=workroot), daemon_settings(introspection_settings(idp)),
               CLIENT).start()
    yield d
    assert d.stop() == 0


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def fresh_stub_token(stub: FaultStub, email: str = ALICE) -> str:
    t = f"stub-token-{time.time_ns()}"
    stub.tokens[t] = email
    return t


# --- what Dovecot reads ----------------------------------------------------------------------------

def test_a_valid_token_is_active_with_the_user_folded_by_username_format(daemon, live_idp):
    # dave's email at the provider is DAVE@Example.TEST; username_format = %Lu (the default) folds it.
    r = daemon.introspect(live_idp.token("dave"))
    assert r.status == 200, r
    body = r.json
    assert body["active"] is True and body["username"] == DAVE, body
    assert isinstance(body["exp"], int) and body["exp"] > time.time(), body
    assert "email" in body["scope"].split(), body
    assert set(body) <= {"active", "username", "exp", "scope"}, "no error, token_type or expires_in"
    assert r.headers["content-type"] == "application/json"


def test_userinfo_mode_answers_the_same_way(make_daemon, live_idp):
    d = make_daemon(daemon_settings(userinfo_settings(live_idp)))
    body = d.introspect(live_idp.token("alice")).json
    assert body["active"] is True and body["username"] == ALICE, body


def test_local_jwt_mode_checks_tokens_itself_and_a_tampered_one_is_inactive(make_daemon, live_idp):
    d = make_daemon(daemon_settings("introspection_mode = local\n"
                                    f"openid_configuration_url = {live_idp.discovery_url}\n"
                                    "audience = urn:dovecot\nusername_attribute = email\n"))
    token = live_idp.token("dave", jwt=True)
    live_idp.reset_stats()
    body = d.introspect(token).json
    assert body["active"] is True and body["username"] == DAVE, body
    assert live_idp.stats().get("/token/introspection", 0) == 0, "checked locally"
    head, payload, sig = token.split(".")
    tampered = ".".join([head, payload, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")])
    assert d.introspect(tampered).json == {"active": False}


def test_claims_named_in_pass_attrs_are_passed_on(make_daemon, live_idp):
    d = make_daemon(daemon_settings(introspection_settings(live_idp),
                                    "pass_attrs = userdb_client=%{oauth2:client_id} x=%{oauth2:error}\n"))
    body = d.introspect(live_idp.token("alice")).json
    assert body["client_id"] == "mail-client", body
    assert "error" not in body


def test_a_token_the_provider_does_not_know_is_inactive_and_nothing_else(daemon, live_idp):
    r = daemon.introspect("b3BhcXVlLXRva2VuLXRoZS1wcm92aWRlci1uZXZlci1pc3N1ZWQ")
    assert (r.status, r.json) == (200, {"active": False}), r


def test_garbage_is_inactive_without_asking_the_provider(daemon, live_idp):
    live_idp.reset_stats()
    for garbage in ["not a token", "", "a" * 17_000, "tok\u00e9n", "==="]:
        r = daemon.introspect(garbage)
        assert (r.status, r.json) == (200, {"active": False}), (garbage[:20], r)
    assert live_idp.stats().get("/token/introspection", 0) == 0


def test_a_refusal_is_logged_once_with_the_tokens_fingerprint_never_the_token(make_daemon, live_idp):
    d = make_daemon(daemon_settings(introspection_settings(live_idp)))
    token = "c29tZS11bmtub3duLXRva2Vu" + str(time.time_ns())
    mark = d.log_mark()
    assert d.introspect(token).json == {"active": False}
    log = d.wait_log(mark, fingerprint(token))
    lines = [ln for ln in log.splitlines() if fingerprint(token) in ln]
    assert len(lines) == 1 and "authentication failed: provider says the token is not active" in lines[0], log
    assert token not in log


# --- credentials -----------------------------------------------------------------------------------

def test_wrong_or_missing_credentials_get_401_with_www_authenticate(daemon, live_idp):
    token = live_idp.token("alice")
    for auth in [None, (CLIENT[0], "wrong"), ("someone", CLIENT[1]), ("", "")]:
        r = daemon.introspect(token, auth=auth)
        assert r.status == 401, (auth, r)
        assert r.headers["www-authenticate"].startswith("Basic"), r.headers
        assert "active" not in r.text
    for header in ["Bearer " + token, "Basic !!!", "Basic " + "QQ=="]:
        r = daemon.request("POST", "/introspect", b"token=x", {"Authorization": header,
                                                              "Content-Type": "application/x-www-form-urlencoded"},
                           auth=None)
        assert r.status == 401, (header[:10], r)
    for path in ["/health", "/metrics", "/nothing-here"]:
        assert daemon.request("GET", path, auth=None).status == 401, path


def test_a_refused_client_is_logged_with_the_reason_and_without_the_secret(make_daemon):
    d = make_daemon(daemon_settings("introspection_url = http://127.0.0.1:9/u\n"))
    mark = d.log_mark()
    assert d.introspect("t", auth=(CLIENT[0], "a-wrong-secret-xyz")).status == 401
    log = d.wait_log(mark, "refused POST /introspect")
    assert "wrong client secret (listen_client_secret)" in log, log
    assert "a-wrong-secret-xyz" not in log and CLIENT[1] not in log


# --- malformed and oversized requests --------------------------------------------------------------

def test_a_huge_body_gets_413_and_the_daemon_still_serves_others(daemon, live_idp):
    # Announced too large: refused before a byte of it is read.
    head = (f"POST /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(*CLIENT)}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n")
    answer = raw_exchange(daemon.port, (head + "Content-Length: 2000000\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    def chunks():  # no Content-Length (chunked): the limit is found while reading
        for _ in range(20):
            yield b"a" * 10_000

    r = daemon.request("POST", "/introspect", chunks(), {"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 413, r
    assert daemon.introspect(live_idp.token("alice")).json["active"] is True


def test_requests_that_are_not_introspection_requests_are_refused(daemon):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = daemon.request("POST", "/introspect", b"token_type_hint=access_token", form)
    assert (r.status, r.json["error"]) == (400, "invalid_request"), r
    r = daemon.request("POST", "/introspect", b"token=a&token=b", form)
    assert r.status == 400, r
    r = daemon.request("POST", "/introspect", b'{"token":"x"}', {"Content-Type": "application/json"})
    assert r.status == 400, r
    r = daemon.request("GET", "/introspect")
    assert (r.status, r.headers.get("allow")) == (405, "POST"), r
    assert daemon.request("GET", "/nothing-here").status == 404


def raw_exchange(port: int, data: bytes, timeout: float = 15) -> bytes:
    """Sends bytes as they are and reads until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_malformed_http_gets_a_4xx_and_a_closed_connection(daemon, live_idp):
    assert raw_exchange(daemon.port, b"GARBAGE\x00\x01 not http\r\n\r\n").startswith(b"HTTP/1.1 400")
    big_header = b"POST /introspect HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 40_000 + b"\r\n\r\n"
    assert raw_exchange(daemon.port, big_header).startswith(b"HTTP/1.1 431")
    assert daemon.introspect(live_idp.token("alice")).json["active"] is True


def test_many_idle_and_slow_connections_do_not_keep_others_from_being_served(daemon, live_idp):
    token = live_idp.token("alice")
    socks = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
            if i % 3 == 0:  # slowloris: headers begun, never finished
                s.sendall(b"POST /introspect HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        assert daemon.introspect(token).json["active"] is True
        assert daemon.metrics()["dovecot_oauth2d_connections_open"] >= 300
    finally:
        for s in socks:
            s.close()


def test_a_unix_socket_listener_answers_the_proxy_form_dovecot_24_sends_and_goes_away_at_stop(make_daemon, live_idp,
                                                                                            workroot):
    sock = os.path.join(tempfile.mkdtemp(prefix="daemon-sock-", dir=workroot), "introspect.sock")
    d = make_daemon(daemon_settings(introspection_settings(live_idp)).replace(
        "listen = 127.0.0.1:0", f"listen = unix:{sock}"))
    assert oct(os.stat(sock).st_mode & 0o777) == "0o666"
    conn = UnixHTTPConnection(sock)
    try:
        # Dovecot 2.4 with http_client_proxy_socket_path: an absolute-form target and Host: localhost.
        body = "token=" + urllib.parse.quote(live_idp.token("alice"), safe="")
        conn.request("POST", "http://localhost/introspect", body=body.encode(),
                     headers={"Authorization": basic(*CLIENT), "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["username"]) == (200, ALICE)
    finally:
        conn.close()
    assert d.stop() == 0
    assert not os.path.exists(sock)


# --- signals ---------------------------------------------------------------------------------------

def test_sighup_with_a_broken_file_keeps_serving_with_the_old_settings_and_logs_why(make_daemon, live_idp):
    good = daemon_settings(introspection_settings(live_idp))
    d = make_daemon(good)
    token = live_idp.token("alice")
    assert d.introspect(token).json["active"] is True
    d.write_settings(good + "introspection_uri = typo\n")
    log = d.sighup("reload failed")
    assert "reload failed, still running with the previous settings" in log, log
    assert "unknown key 'introspection_uri'" in log, log
    d.write_settings(introspection_settings(live_idp))  # without the daemon's keys
    assert "listen_client_id is required" in d.sighup("reload failed")
    assert d.introspect(token).json["active"] is True
    assert d.introspect(live_idp.token("bob")).json["username"] == BOB, "new tokens too"
    assert d.metrics()['dovecot_oauth2d_reloads_total{result="failed"}'] == 2


def test_sighup_with_a_good_file_applies_it(make_daemon, live_idp):
    d = make_daemon(daemon_settings(introspection_settings(live_idp)))
    token = live_idp.token("alice")
    assert d.introspect(token).json["active"] is True
    new_client = (CLIENT[0], CLIENT[1] + "-rotated")
    d.write_settings(daemon_settings(introspection_settings(live_idp), client=new_client))
    assert "new client credentials in use; cache kept" in d.sighup("reloaded")
    assert d.introspect(token).status == 401, "the old secret no longer works"
    d.client = new_client
    assert d.introspect(token).json["active"] is True
    # A new rule applies at once, to cached tokens too.
    d.write_settings(daemon_settings(introspection_settings(live_idp, "scope = imap\n"), client=new_client))
    assert "new settings in use; cache emptied" in d.sighup("reloaded")
    assert d.introspect(token).json == {"active": False}
    assert "token lacks required scope 'imap'" in d.wait_log(0, "required scope")


def test_sigterm_finishes_the_request_in_flight_and_exits_0(make_daemon, stub):
    d = make_daemon(daemon_settings(f"introspection_url = {stub.url}\ntimeout_msecs = 5000\n"))
    token = fresh_stub_token(stub)
    stub.set("slow", 1.5)
    replies = []
    t = threading.Thread(target=lambda: replies.append(d.introspect(token)))
    try:
        mark, before = d.log_mark(), stub.requests
        t.start()
        deadline = time.monotonic() + 10
        while stub.requests == before and time.monotonic() < deadline:  # the provider has it now
            time.sleep(0.02)
        d.signal(signal.SIGTERM)
        t.join(20)
    finally:
        stub.set("ok")
    assert replies and replies[0].json == {"active": True, "username": ALICE}, replies
    assert d.proc.wait(20) == 0
    log = d.log_since(mark)
    assert "SIGTERM: stopping" in log and "stopped" in log, log


def test_without_listen_client_id_or_secret_it_refuses_to_start_naming_the_key(workroot, daemon_binary):
    d = tempfile.mkdtemp(prefix="daemon-nokeys-", dir=workroot)
    path = os.path.join(d, "d.conf")
    for text, key in [("introspection_url = http://127.0.0.1:9/u\n", "listen_client_id"),
                      ("introspection_url = http://127.0.0.1:9/u\nlisten_client_id = x\n", "listen_client_secret")]:
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([daemon_binary, "-c", path], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, p
        assert f"{key} is required by dovecot-oauth2d" in p.stderr, p.stderr
        p = subprocess.run([daemon_binary, "-c", path, "-t"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and key in p.stderr, p.stderr


def test_t_checks_a_usable_file_without_listening(workroot, daemon_binary):
    path = os.path.join(tempfile.mkdtemp(prefix="daemon-t-", dir=workroot), "d.conf")
    with open(path, "w") as f:
        f.write(daemon_settings("introspection_url = http://127.0.0.1:9/u\n"))
    os.chmod(path, 0o600)
    p = subprocess.run([daemon_binary, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "is usable" in p.stderr, p.stderr


def test_a_listen_address_in_use_is_a_clear_start_failure(workroot, daemon_binary):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = os.path.join(tempfile.mkdtemp(prefix="daemon-inuse-", dir=workroot), "d.conf")
        with open(path, "w") as f:
            f.write(daemon_settings("introspection_url = http://127.0.0.1:9/u\n").replace(
                "listen = 127.0.0.1:0", f"listen = 127.0.0.1:{port}"))
        p = subprocess.run([daemon_binary, "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p
    assert f"cannot listen on 127.0.0.1:{port} (listen)" in p.stderr, p.stderr


# --- the provider's faults -------------------------------------------------------------------------

def test_provider_down_a_cached_token_stays_active_and_a_new_one_is_a_503(make_daemon, live_idp):
    d = make_daemon(daemon_settings(introspection_settings(live_idp, "timeout_msecs = 2000\n")))
    seen, fresh = live_idp.token("alice"), live_idp.token("alice")
    assert d.introspect(seen).json["active"] is True
    live_idp.stop()
    for _ in range(3):
        assert d.introspect(seen).json["active"] is True
    mark = d.log_mark()
    r = d.introspect(fresh)
    assert r.status == 503 and "error" not in r.text, r
    log = d.wait_log(mark, "temporary failure")
    assert "temporary failure: provider unreachable" in log and fingerprint(fresh) in log, log
    assert fresh not in log


@pytest.mark.parametrize("fault,arg,reason", [
    ("status", 500, "provider answered HTTP 500"),
    ("status", 503, "provider answered HTTP 503"),
    ("slow", 5, "provider timed out after 1000 ms"),
    ("garbage", 0, "is unusable: not JSON"),
    ("reset", 0, "provider unreachable"),
], ids=["500", "503", "timeout", "garbage", "reset"])
def test_a_provider_fault_is_a_503_with_the_reason_in_the_log(make_daemon, stub, fault, arg, reason):
    d = make_daemon(daemon_settings(f"introspection_url = {stub.url}\ntimeout_msecs = 1000\n"
                                    "circuit_breaker_failures = 0\n"))
    stub.set(fault, arg)
    try:
        mark = d.log_mark()
        r = d.introspect(fresh_stub_token(stub))
    finally:
        stub.set("ok")
    assert r.status == 503, r
    assert reason in d.wait_log(mark, "temporary failure")
    assert d.introspect(fresh_stub_token(stub)).json["active"] is True, "and it recovers"


def test_concurrent_requests_for_one_new_token_make_one_provider_request(make_daemon, stub):
    d = make_daemon(daemon_settings(f"introspection_url = {stub.url}\ntimeout_msecs = 10000\n"))
    token = fresh_stub_token(stub)
    stub.set("slow", 0.5)  # the first request is still waiting on the provider when the others arrive
    before = stub.requests
    replies: list = []
    go = threading.Barrier(20)

    def one():
        go.wait()
        replies.append(d.introspect(token))

    threads = [threading.Thread(target=one) for _ in range(20)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        stub.set("ok")
    assert len(replies) == 20 and all(r.json == {"active": True, "username": ALICE} for r in replies), replies
    assert stub.requests - before == 1


def test_repeated_requests_for_a_token_make_no_further_provider_request(daemon, live_idp):
    token = live_idp.token("alice")
    live_idp.reset_stats()
    for _ in range(5):
        assert daemon.introspect(token).json["active"] is True
    assert live_idp.stats().get("/token/introspection", 0) == 1


# --- health and metrics ----------------------------------------------------------------------------

def test_health_answers_ok_to_an_authenticated_supervisor(daemon):
    r = daemon.request("GET", "/health")
    assert (r.status, r.text) == (200, "ok\n")


def test_metrics_show_verdicts_cache_provider_and_http_counters(make_daemon, live_idp):
    d = make_daemon(daemon_settings(introspection_settings(live_idp)))
    token = live_idp.token("alice")
    d.introspect(token)
    d.introspect(token)
    d.introspect("garbage token")
    d.introspect(token, auth=None)
    m = d.metrics()
    assert m["dovecot_oauth2_accepted_total"] == 2
    assert m['dovecot_oauth2_rejected_total{reason="malformed"}'] == 1
    assert (m["dovecot_oauth2_cache_hits_total"], m["dovecot_oauth2_cache_misses_total"]) == (1, 1)
    assert m["dovecot_oauth2_provider_requests_total"] == 1
    assert m['dovecot_oauth2_provider_request_duration_seconds_bucket{le="+Inf"}'] == 1
    assert m["dovecot_oauth2_cache_entries"] == 1
    assert m['dovecot_oauth2d_http_responses_total{code="401"}'] == 1
    assert m['dovecot_oauth2d_http_responses_total{code="200"}'] == 3


def test_metrics_listen_serves_metrics_and_health_apart_from_introspection(make_daemon, live_idp):
    d = make_daemon(daemon_settings(introspection_settings(live_idp), "metrics_listen = 127.0.0.1:0\n"))
    assert d.metrics_port and d.metrics_port != d.port
    assert d.request("GET", "/metrics", port=d.metrics_port).status == 200
    assert d.request("GET", "/metrics", port=d.metrics_port, auth=None).status == 401
    assert d.request("GET", "/health", port=d.metrics_port).status == 200
    assert d.request("POST", "/introspect", b"token=x", {"Content-Type": "application/x-www-form-urlencoded"},
                     port=d.metrics_port).status == 404
    assert d.request("GET", "/metrics").status == 404, "not on the introspection listener then"
