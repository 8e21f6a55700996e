"""Issue 13: hostile input to dovecot-oauth2d's SCIM service (DMS backend on a scratch config directory):
bad or missing bearer tokens, oversized and malformed bodies, injection attempts in filters, user names
made to break the account files (path separators, newlines, the files' separators, lookalike letters),
a domain not served, concurrent creates of one user, kill -9 in the middle of changes, and the TLS
listener. Every refusal is a SCIM error with the right status and leaves the DMS files as they were.
"""

from __future__ import annotations

import os
import random
import signal
import ssl
import tempfile
import threading

import pytest

import scim
from scim import ERROR, ScimDaemon, patch, user
from test_scim_protocol import dms_service, need, scim_problem


@pytest.fixture(scope="module")
def service(workroot):
    d = dms_service(workroot, "scim-hostile-")
    d.create(user("keep@example.com", "keep@example.com", "keep.alias@example.com"))  # the files are not empty
    yield d
    assert d.stop() == 0, d.log_since(0)


def _scim_error(r, status: int, scim_type: str | None = None) -> dict:
    assert r.status == status, (r.status, r.text)
    body = r.json
    assert ERROR in body["schemas"] and str(body["status"]) == str(status), body
    if scim_type:
        assert body.get("scimType") == scim_type, body
    return body


@pytest.fixture
def unchanged(service):
    """The DMS files are byte for byte the same after the test."""
    before = scim.dms_files(service.config_dir)
    yield
    assert scim.dms_files(service.config_dir) == before


# --- authentication ------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "wrong-token-of-the-right-length-xxxxxxxxxxxx"])
def test_missing_or_wrong_bearer_token_is_401_scim_error(service, unchanged, token):
    for method, path, body in (("GET", "/Users", None), ("POST", "/Users", user("tok@example.com")),
                               ("GET", "/ServiceProviderConfig", None)):
        r = service.scim(method, path, body, token=token or None)
        _scim_error(r, 401)
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), r.headers


def test_the_token_with_a_character_more_or_less_is_refused(service, unchanged):
    for t in (service.token[:-1], service.token + "x", service.token.upper()):
        _scim_error(service.scim("GET", "/Users", token=t), 401)


def test_basic_credentials_instead_of_a_bearer_token_are_refused(service, unchanged):
    r = service.scim("GET", "/Users", token=False, headers={"Authorization": "Basic " + service.token})
    _scim_error(r, 401)


def test_the_token_never_reaches_the_log(service):
    service.scim("GET", "/Users", token=service.token + "x")
    assert service.token not in service.log_since(0)


# --- bodies --------------------------------------------------------------------------------------

def test_a_body_over_one_mebibyte_is_413(service, unchanged):
    body = user("big@example.com", displayName="x" * (1024 * 1024 + 10))
    _scim_error(service.scim("POST", "/Users", body), 413)


def test_malformed_json_is_400_invalid_syntax(service, unchanged):
    for text in ('{"schemas": [', "not json", '{"userName": "a@example.com",}', "\xff\xfe", "[]", '"x"'):
        r = service.scim("POST", "/Users", text.encode("latin-1"))
        _scim_error(r, 400, "invalidSyntax" if text not in ("[]", '"x"') else None)


def test_deeply_nested_json_is_refused_with_400(service, unchanged):
    body = '{"schemas": ["' + scim.USER + '"], "userName": "deep@example.com", "name": ' + "[" * 5000 + "]" * 5000 + "}"
    _scim_error(service.scim("POST", "/Users", body), 400)


def test_a_body_without_the_user_schema_is_400(service, unchanged):
    _scim_error(service.scim("POST", "/Users", {"userName": "noschema@example.com"}), 400)


def test_a_wrong_type_is_400_invalid_value(service, unchanged):
    _scim_error(service.scim("POST", "/Users", user("typ@example.com", active="maybe")), 400)
    _scim_error(service.scim("POST", "/Users", {"schemas": [scim.USER], "userName": ["a@example.com"]}), 400)


# --- filters -------------------------------------------------------------------------------------

INJECTIONS = [
    'userName eq "x" or "1" eq "1"',
    'userName eq "x\\" or userName pr or userName eq \\"y"',
    'userName eq "x") or (userName pr',
    "userName eq 'x' or 1=1 --",
    'userName eq "x"; DELETE /Users',
    'userName eq "x" or userName pr',     # valid: returns everyone, which a client may ask for
    '(' * 200 + 'userName pr' + ')' * 200,
    'userName eq "' + "a" * 5000 + '"',
    'userName eq "x\nkeep@example.com"',
    'userName eq "keep@example.com\x00"',
    'emails[value co "@" or value pr].value eq "x"',
]


@pytest.mark.parametrize("text", INJECTIONS, ids=range(len(INJECTIONS)))
def test_a_filter_with_an_injection_attempt_is_400_or_matches_only_what_it_says(service, unchanged, text):
    r = service.find(text)
    if r.status == 400:
        _scim_error(r, 400, "invalidFilter")
        return
    assert r.status == 200, r.text
    names = {u["userName"] for u in r.json["Resources"]}
    # only the filter that really says "or userName pr" may return users
    assert not names or text == 'userName eq "x" or userName pr', (text, names)


# --- user names and emails -----------------------------------------------------------------------

HOSTILE_NAMES = [
    "a/b@example.com", "../etc@example.com", "..@example.com", "a..b@example.com", ".a@example.com",
    "a\nb@example.com", "a@example.com\nevil@example.com|{PLAIN}x", "a|b@example.com", "a|{PLAIN}pw@example.com",
    "a:b@example.com", "a b@example.com", "a\tb@example.com", "a\x00b@example.com", "a@example.com/..",
    "\u0430nn@example.com",          # Cyrillic а
    "ann@ex\u0430mple.com",          # Cyrillic а in the domain
    "ａnn@example.com",              # fullwidth a
    "ann@example.com.", "ann@@example.com", "ann", "@example.com", "ann@", "",
    "ann@example.net",               # a domain not served
    "ann@sub.example.com",
    "x" * 65 + "@example.com",
    "ann@example.com " ,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n)[:40] for n in HOSTILE_NAMES])
def test_a_user_name_that_is_not_an_address_of_a_served_domain_is_400_invalid_value(service, unchanged, name):
    _scim_error(service.scim("POST", "/Users", user(name)), 400, "invalidValue")


@pytest.mark.parametrize("name", ["a|b@example.com", "a\nb@example.com", "\u0430nn@example.com", "a:b@example.com"])
def test_an_email_of_a_served_domain_that_is_not_a_valid_address_is_400(service, unchanged, name):
    _scim_error(service.scim("POST", "/Users", user("fine@example.com", "fine@example.com", name)), 400, "invalidValue")


def test_an_email_of_a_domain_not_served_is_kept_in_the_user_but_never_written_to_the_files(service):
    r = service.scim("POST", "/Users", user("own@example.com", "own@example.com", "own@example.net"))
    assert r.status == 201, r.text
    assert "own@example.net" in r.text
    files = scim.dms_files(service.config_dir)
    assert b"own@example.com|" in files["postfix-accounts.cf"]
    assert not any(b"example.net" in (v or b"") for v in files.values()), files
    assert service.scim("DELETE", f"/Users/{r.json['id']}").status == 204


@pytest.mark.parametrize("name", ["a/b@example.com", "a\nb@example.com", "a|b@example.com", "ann@example.net"])
def test_a_rename_to_a_hostile_name_is_400_and_keeps_the_account(service, name):
    u = service.find('userName eq "keep@example.com"').json["Resources"][0]
    before = scim.dms_files(service.config_dir)
    # the account is named by the primary email, else the userName: both renamed
    r = service.scim("PATCH", f"/Users/{u['id']}", patch({"op": "replace", "path": "userName", "value": name},
                                                         {"op": "replace", "path": "emails",
                                                          "value": [{"value": name, "primary": True}]}))
    _scim_error(r, 400, "invalidValue")
    assert scim.dms_files(service.config_dir) == before
    r = service.scim("PUT", f"/Users/{u['id']}", user(name, name))
    _scim_error(r, 400, "invalidValue")
    assert scim.dms_files(service.config_dir) == before


def test_path_tricks_in_a_user_name_write_nothing_anywhere(service):
    from dms_root import snapshot

    root = os.path.dirname(service.config_dir)
    before = {k: v for k, v in snapshot(root).items() if not k.startswith("daemon")}
    for name in ("../../x@example.com", "x@example.com/../../y", "/etc/passwd", "..%2f..%2fx@example.com"):
        _scim_error(service.scim("POST", "/Users", user(name)), 400, "invalidValue")
    after = {k: v for k, v in snapshot(root).items() if not k.startswith("daemon")}
    assert after == before


# --- concurrency ---------------------------------------------------------------------------------

def test_concurrent_creates_of_one_user_give_one_201_and_409s_and_one_account_line(service):
    n = 12
    barrier = threading.Barrier(n)
    statuses: list[int] = []
    lock = threading.Lock()

    def create():
        barrier.wait()
        r = service.scim("POST", "/Users", user("race@example.com"))
        with lock:
            statuses.append(r.status)

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [201] + [409] * (n - 1), statuses
    lines = [ln for ln in open(os.path.join(service.config_dir, "postfix-accounts.cf"))
             if ln.startswith("race@example.com|")]
    assert len(lines) == 1, lines
    found = service.find('userName eq "race@example.com"').json
    assert found["totalResults"] == 1


# --- kill -9 -------------------------------------------------------------------------------------

@pytest.fixture
def crash_service(workroot):
    d = dms_service(workroot, "scim-crash-")
    yield d
    d.kill()


def _account(u: dict) -> str:
    """The account of a user as the service names it: its primary email (all are served here)."""
    return next((e["value"] for e in u.get("emails", []) if e.get("primary")), u["userName"]).lower()


def _agree(d: ScimDaemon) -> bool:
    """The DMS files hold exactly the accounts and aliases of GET /Users."""
    users = d.users()
    want_accounts = {_account(u) for u in users}
    want_aliases = {e["value"].lower() for u in users for e in u.get("emails", [])} - want_accounts
    got_aliases = scim.aliases(d.config_dir)
    return set(scim.accounts(d.config_dir)) == want_accounts and set(got_aliases) == want_aliases


class Churn(threading.Thread):
    """Creates, renames and deletes users until stopped; errors from a killed daemon are expected."""

    def __init__(self, d: ScimDaemon, tag: str):
        super().__init__(daemon=True)
        self.d, self.tag, self.done = d, tag, 0
        self.halt = threading.Event()

    def run(self):
        rnd = random.Random(self.tag)
        i = 0
        while not self.halt.is_set():
            i += 1
            try:
                name = f"{self.tag}{i}@example.com"
                r = self.d.scim("POST", "/Users", user(name, name, f"{self.tag}{i}.alias@example.org"), timeout=5)
                if r.status == 201:
                    uid = r.json["id"]
                    if rnd.random() < 0.6:
                        renamed = f"{self.tag}{i}r@example.com"
                        self.d.scim("PATCH", f"/Users/{uid}", patch(
                            {"op": "replace", "path": "userName", "value": renamed},
                            {"op": "replace", "path": "emails[primary eq true].value", "value": renamed}), timeout=5)
                    if rnd.random() < 0.4:
                        self.d.scim("DELETE", f"/Users/{uid}", timeout=5)
                self.done += 1
            except OSError:
                pass


def test_kill_9_during_changes_leaves_well_formed_files_that_agree_after_a_restart(crash_service):
    d = crash_service
    for round_ in range(6):
        churn = Churn(d, f"k{round_}x")
        churn.start()
        target = random.randint(1, 6)
        scim.wait_for(lambda: churn.done >= target, 60, "some changes before the kill")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        churn.halt.set()
        churn.join(30)
        # every file as DMS reads it, right after the crash (raises scim.Malformed otherwise)
        scim.accounts(d.config_dir)
        scim.aliases(d.config_dir)
        scim.quotas(d.config_dir)
        d.proc = None
        d.start()
        scim.wait_for(lambda: _agree(d), 30, f"files agreeing with GET /Users after restart {round_}")
    users = d.users()
    assert d.stop() == 0
    status = d.status()
    assert status.returncode == 0, status.stdout + status.stderr
    for u in users:  # each provisioned user on a line of its own with its id and address
        assert [ln for ln in status.stdout.splitlines() if u["id"] in ln and _account(u) in ln.lower()], \
            (u, status.stdout)


# --- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_service(workroot):
    need(scim_problem())
    cert = scim.self_signed_cert(tempfile.mkdtemp(prefix="scim-tls-cert-", dir=workroot))
    d = dms_service(workroot, "scim-tls-", tls=cert)
    yield d
    assert d.stop() == 0, d.log_since(0)


def test_tls_listener_serves_a_client_that_verifies_its_certificate(tls_service):
    r = tls_service.scim("GET", "/ServiceProviderConfig")
    assert r.status == 200, r.text
    client = tls_service.scim2_client()
    User = client.get_resource_model("User")
    created = client.create(User(user_name="tls@example.com"))
    assert client.query(User, created.id).user_name == "tls@example.com"


def test_tls_listener_is_not_trusted_without_its_certificate(tls_service):
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", tls_service.scim_port, timeout=10,
                                       context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/scim/v2/ServiceProviderConfig")
    conn.close()


def test_tls_listener_does_not_answer_plain_http(tls_service):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", tls_service.scim_port, timeout=10)
    try:
        conn.request("GET", "/scim/v2/Users", headers={"Authorization": "Bearer " + tls_service.token})
        resp = conn.getresponse()
        assert resp.status != 200
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
