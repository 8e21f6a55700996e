"""Hostile input end to end (issue 6): tokens of every size and byte, SASL messages with extra
separators, usernames that differ only in case or Unicode form. None may crash an auth-worker, none
may be accepted for anyone but the token's owner."""

from __future__ import annotations

import time

import pytest

from authclient import AuthClient, xoauth2
from conftest import crash_lines, running_stack

ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def hostile_stack(workroot, module_dir, stub):
    settings = f"introspection_url = {stub.url}\nmax_token_bytes = 4096\n"
    with running_stack(workroot, module_dir, settings, prefix="hostile", postfix=False, auth_worker_max_count=2) as s:
        yield s


@pytest.fixture
def hostile(hostile_stack, stub):
    s = hostile_stack
    c = AuthClient(s.auth_client_socket)
    yield s, c
    # Whatever the test sent, the auth process is alive and still gives right answers.
    verdict, fields = c.auth("XOAUTH2", xoauth2(ALICE, known_token(stub, ALICE, "after")))
    c.close()
    assert verdict == "OK", fields
    log = open(s.log_path, errors="replace").read()
    crashes = crash_lines(log)
    assert not crashes, crashes[:5]


def known_token(stub, email=ALICE, tag="t") -> str:
    t = f"hostile-{tag}-{time.time_ns()}"
    stub.tokens[t] = email
    return t


@pytest.mark.parametrize("size", [1, 2, 64, 1024, 4096, 4097, 8192, 12000])
def test_unknown_tokens_of_any_size_fail_and_oversized_ones_never_reach_the_provider(hostile, stub, size):
    s, c = hostile
    before = stub.requests
    mark = s.log_mark()
    verdict, _ = c.auth("XOAUTH2", xoauth2(ALICE, "A" * size))
    assert verdict == "FAIL"
    if size > 4096:
        assert f"token is {size} bytes, over max_token_bytes (4096)" in s.wait_log(mark, "authentication failed")
        assert stub.requests == before


@pytest.mark.parametrize(
    "token",
    [b"abc\x00def", b"\xff\xfe\xfd", b"caf\xc3\xa9", b"has space", b"tab\there", b"a=b", b"\x7f", b"tok\r\nINJECT"],
    ids=["nul", "non-utf8", "utf8", "space", "tab", "inner-equals", "del", "crlf"],
)
def test_tokens_with_bytes_outside_rfc6750_are_refused_without_a_provider_request(hostile, stub, token):
    s, c = hostile
    before = stub.requests
    verdict, _ = c.auth("XOAUTH2", xoauth2(ALICE, token))
    assert verdict == "FAIL"
    assert stub.requests == before


def test_a_valid_token_still_works_after_all_that(hostile, stub):
    s, c = hostile
    for junk in (b"\x00" * 10, b"\xff" * 100, b"A" * 9000):
        c.auth("XOAUTH2", xoauth2(ALICE, junk))
    verdict, fields = c.auth("XOAUTH2", xoauth2(ALICE, known_token(stub)))
    assert verdict == "OK", fields


WRONG_USER = "token belongs to 'alice@example.test', not to login user 'bob@example.test'"


@pytest.mark.parametrize(
    "sasl,expected",
    [
        # Dovecot 2.3 takes the last user=: the login is alice's, with alice's token.
        (b"user=%(bob)s\x01user=%(alice)s\x01auth=Bearer %(tok)s\x01\x01", "OK"),
        (b"user=%(alice)s\x01user=%(bob)s\x01auth=Bearer %(tok)s\x01\x01", WRONG_USER),
        (b"user=%(bob)s\x01auth=Bearer %(tok)s\x01auth=Bearer %(tok)s\x01\x01", WRONG_USER),
        (b"user=%(bob)s\x01\x01\x01auth=Bearer %(tok)s\x01\x01", WRONG_USER),
        (b"user=%(bob)s\x01auth=Bearer %(tok)s\x01extra=1\x01\x01", WRONG_USER),
        (b"user=%(bob)s\x01auth=bearer %(tok)s\x01\x01", WRONG_USER),
        # The second space makes the token start with one: not a b64token, the provider is not asked.
        (b"user=%(bob)s\x01auth=Bearer  %(tok)s\x01\x01", "malformed token: characters outside RFC 6750 b64token"),
    ],
    ids=["two-users", "two-users-last-is-bob", "two-auths", "empty-fields", "extra-field", "lowercase-scheme",
         "double-space"],
)
def test_odd_xoauth2_messages_never_log_in_as_anyone_but_the_tokens_owner(hostile, stub, sasl, expected):
    s, c = hostile
    tok = known_token(stub, ALICE)
    msg = sasl % {b"bob": b"bob@example.test", b"alice": ALICE.encode(), b"tok": tok.encode()}
    mark = s.log_mark()
    verdict, fields = c.auth("XOAUTH2", msg)
    if expected == "OK":
        assert (verdict, fields.get("user")) == ("OK", ALICE), fields
    else:
        assert verdict == "FAIL", fields
        assert expected in s.wait_log(mark, "authentication failed"), s.log_since(mark)[-2000:]


@pytest.mark.parametrize(
    "gs2,expected",
    [
        # Dovecot 2.3 takes the last a=.
        (b"n,a=bob@example.test,a=alice@example.test,", "OK"),
        (b"n,a=alice@example.test,a=bob@example.test,", WRONG_USER),
        (b"n,a=bob@example.test,,", WRONG_USER),
        (b"y,a=bob@example.test,", WRONG_USER),
        (b"n,,", "Missing username or token"),  # refused by Dovecot before any passdb
    ],
    ids=["two-users", "two-users-last-is-bob", "empty-field", "channel-binding-flag", "no-user"],
)
def test_odd_oauthbearer_gs2_headers_never_log_in_as_anyone_but_the_tokens_owner(hostile, stub, gs2, expected):
    s, c = hostile
    tok = known_token(stub, ALICE).encode()
    mark = s.log_mark()
    verdict, fields = c.auth("OAUTHBEARER", gs2 + b"\x01auth=Bearer " + tok + b"\x01\x01")
    if expected == "OK":
        assert (verdict, fields.get("user")) == ("OK", ALICE), fields
    else:
        assert verdict == "FAIL", fields
        assert expected in s.wait_log(mark, expected), s.log_since(mark)[-2000:]


# A provider value that tries to forge a log line, act on the admin's terminal and cut the line short.
FORGED = "forged-line-8d1f"
HOSTILE_VALUE = f"evil\nauth: Info: {FORGED} accepted root\x1b[2J\x00tail"


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"email": HOSTILE_VALUE}, "token belongs to 'evil\\nauth: info: " + FORGED),
        ({"error": HOSTILE_VALUE}, "provider said error 'evil\\nauth: Info: " + FORGED),
        ({"email": ALICE, "status": "ok", "iss": HOSTILE_VALUE}, "token issuer 'evil\\nauth: Info: " + FORGED),
        ({"email": ALICE, "status": HOSTILE_VALUE}, "account is not active (status = 'evil\\nauth: Info: " + FORGED),
    ],
    ids=["username", "provider-error", "issuer", "active-attribute"],
)
def test_provider_strings_cannot_forge_or_cut_a_line_in_dovecots_log(make_stack, stub, claims, reason):
    s = make_stack(f"introspection_url = {stub.url}\nissuers = https://idp.test\nactive_attribute = status\n"
                   "active_value = ok\n", postfix=False)
    tok = known_token(stub, ALICE, "forge")
    stub.per_token[tok] = ("claims", claims)
    mark = s.log_mark()
    assert not s.imap_login(ALICE, tok).ok
    s.wait_log(mark, "authentication failed")
    with open(s.log_path, "rb") as f:
        f.seek(mark)
        raw = f.read()
    assert b"\x1b" not in raw and b"\x00" not in raw, raw[-2000:]
    lines = raw.decode().splitlines()
    refusal = [line for line in lines if "authentication failed" in line]
    shown = refusal[0].lower() if refusal else ""  # the username is compared (and shown) lower-cased
    assert reason.lower() in shown and "\\u{1b}[2j\\u{0}tail" in shown, lines
    # The hostile value stayed inside the refusal line: no line of its own.
    assert all(FORGED not in line or "authentication failed" in line for line in lines), lines


def test_login_name_in_another_case_is_the_same_user_as_in_dovecot(hostile, stub):
    s, c = hostile
    verdict, fields = c.auth("XOAUTH2", xoauth2("ALICE@Example.TEST", known_token(stub, ALICE)))
    assert verdict == "OK" and fields.get("user") == ALICE, fields


@pytest.mark.parametrize(
    "login,owner",
    [
        ("alic\u00e9@example.test", "alice\u0301@example.test"),  # NFC vs NFD
        ("\u212aate@example.test", "kate@example.test"),  # KELVIN SIGN vs k
        ("alice@example.test", "alice@example.test\u200b"),  # zero-width space
        ("alice@example.test", "\uff41lice@example.test"),  # fullwidth a
    ],
    ids=["nfc-vs-nfd", "kelvin-sign", "zero-width", "fullwidth"],
)
def test_usernames_that_differ_only_in_unicode_form_are_different_users(hostile, stub, login, owner):
    s, c = hostile
    verdict, fields = c.auth("XOAUTH2", xoauth2(login, known_token(stub, owner)))
    assert verdict == "FAIL", fields
