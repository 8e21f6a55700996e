"""Issue 3 end to end: `introspection_mode = local`. The real oidc-provider issues RS256 JWT access
tokens (typ at+jwt, aud urn:dovecot); real Dovecot 2.3 and Postfix check them with the keys the module
found through OIDC discovery, with no provider request per login. Rejections use tokens crafted with
the provider's own private key (tests/idp/forge.mjs, the `jose` library oidc-provider signs with), with
a fresh key, or with none."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time

import pytest

from conftest import ROOT, running_stack
from idp import IdP, decode_jwt

ALICE, BOB = "alice@example.test", "bob@example.test"
AUDIENCE = "urn:dovecot"
FORGE = os.path.join(ROOT, "tests", "idp", "forge.mjs")
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_TOKEN_BYTES = 3000  # IMAP carries about 6 KB of token: keep the oversized token under that
DROP = object()


def local_settings(idp, extra: str = "") -> str:
    return (
        "introspection_mode = local\n"
        f"openid_configuration_url = {idp.discovery_url}\n"
        f"audience = {AUDIENCE}\n"
        "username_attribute = email\n" + extra
    )


def rejected(r) -> bool:
    return not r.ok and not r.tempfail


def b64url(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- crafting tokens -------------------------------------------------------------------------------

def forge(*jobs: dict) -> list:
    """Runs tests/idp/forge.mjs jobs (sign / generate / pem) in one node process."""
    p = subprocess.run(["node", FORGE], input=json.dumps(list(jobs)), capture_output=True, text=True,
                       cwd=os.path.dirname(FORGE), timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def sign(jwk: dict, header: dict, payload: dict) -> str:
    return forge({"op": "sign", "jwk": jwk, "header": header, "payload": payload})[0]


def new_key(alg: str, kid: str) -> dict:
    return forge({"op": "generate", "alg": alg, "kid": kid})[0]


def provider_key(idp) -> dict:
    """The provider's private signing key (the one its JWT access tokens carry the kid of)."""
    return idp.private_jwks()["keys"][0]


def claims(idp, user: str = "alice", **changes) -> dict:
    """What the provider's own JWT access tokens for `user` carry, with `changes` (DROP removes)."""
    now = int(time.time())
    c = {
        "jti": secrets.token_urlsafe(12),
        "sub": f"{user}-sub",
        "iat": now,
        "exp": now + 600,
        "scope": "openid email profile mail",
        "client_id": "mail-client",
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "email": f"{user}@example.test",
        "preferred_username": user,
    }
    for k, v in changes.items():
        if v is DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def provider_signed(idp, **changes) -> str:
    """A token signed with the provider's own key and header, claims as in claims()."""
    key = provider_key(idp)
    return sign(key, {"alg": key["alg"], "typ": "at+jwt", "kid": key["kid"]}, claims(idp, **changes))


def public_jwk(jwk: dict) -> dict:
    return {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


def hs256(secret: bytes, header: dict, payload: dict) -> str:
    signed = b64url(json.dumps(header)) + "." + b64url(json.dumps(payload))
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64url(mac)


# --- stacks ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(workroot, module_dir, idp):
    """One local-mode stack shared by the tests of this file that do not touch the provider."""
    with running_stack(workroot, module_dir, local_settings(idp, f"max_token_bytes = {MAX_TOKEN_BYTES}\n"), prefix="localjwt") as s:
        yield s


@pytest.fixture
def restorable_idp(live_idp):
    """The IdP, given back with its original signing keys, alg and kid whatever the test did to it."""
    orig = (live_idp.keys_file, live_idp.jwt_alg, live_idp.jwt_kid)
    try:
        yield live_idp
    finally:
        if not live_idp.running or (live_idp.keys_file, live_idp.jwt_alg, live_idp.jwt_kid) != orig:
            live_idp.restart(keys_file=orig[0], jwt_alg=orig[1], jwt_kid=orig[2])


def key_fetches(idp) -> int:
    st = idp.stats()
    return st.get(DISCOVERY_PATH, 0) + st.get("/jwks", 0)


def assert_refused(stack, token: str, reason: str, user: str = ALICE, mech: str = "XOAUTH2") -> str:
    mark = stack.log_mark()
    r = stack.imap_login(user, token, mech)
    assert rejected(r), r.text
    log = stack.wait_log(mark, "authentication failed")
    lines = [ln for ln in log.splitlines() if "dovecot-oauth2: authentication failed: " in ln]
    assert len(lines) == 1 and reason in lines[0], log[-2000:]
    return log


# --- logins that must work -------------------------------------------------------------------------

@pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
def test_imap_login_with_the_providers_jwt_access_token_succeeds(stack, live_idp, mech):
    token = live_idp.token("alice", jwt=True)
    header, payload = decode_jwt(token)
    assert (header["typ"], payload["aud"]) == ("at+jwt", AUDIENCE)
    r = stack.imap_login(ALICE, token, mech)
    assert r.ok, r.text


@pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
def test_smtp_submission_with_the_providers_jwt_access_token_succeeds(stack, live_idp, mech):
    r = stack.smtp_login(BOB, live_idp.token("bob", jwt=True), mech)
    assert r.ok, r.text


def test_logins_with_new_jwts_make_no_provider_request_after_the_first(make_stack, live_idp):
    s = make_stack(local_settings(live_idp, "debug = yes\n"), auth_worker_max_count=1)
    tokens = [live_idp.token(u, jwt=True) for u in ("alice", "alice", "bob", "alice", "bob")]
    live_idp.reset_stats()
    assert s.imap_login(ALICE, tokens[0]).ok
    st = live_idp.stats()
    assert (st.get(DISCOVERY_PATH, 0), st.get("/jwks", 0)) == (1, 1), st
    live_idp.reset_stats()
    mark = s.log_mark()
    assert s.imap_login(ALICE, tokens[1], "XOAUTH2").ok
    assert s.smtp_login(BOB, tokens[2], "OAUTHBEARER").ok
    assert s.imap_login(ALICE, tokens[3], "OAUTHBEARER").ok
    assert s.smtp_login(BOB, tokens[4], "XOAUTH2").ok
    assert live_idp.stats() == {}, live_idp.stats()
    assert s.log_since(mark).count("checked locally in") == 4


def test_token_crafted_with_the_providers_key_and_valid_claims_is_accepted(stack, live_idp):
    # The control for every crafted rejection below: forge.mjs signs exactly like the provider.
    r = stack.imap_login(ALICE, provider_signed(live_idp))
    assert r.ok, r.text


# --- logins that must fail, and how --------------------------------------------------------------

def test_unsigned_alg_none_token_is_rejected(stack, live_idp):
    kid = provider_key(live_idp)["kid"]
    token = b64url(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid})) + "." + b64url(json.dumps(claims(live_idp))) + "."
    assert_refused(stack, token, "token is unsigned (alg 'none')")


@pytest.mark.parametrize("secret_form", ["jwk-json", "pem"])
def test_hs256_token_with_the_providers_public_key_as_secret_is_rejected(stack, live_idp, secret_form):
    # Algorithm confusion: a verifier that took the alg from the token would check this HMAC with the
    # public key material it holds for the kid, which anyone can download.
    key = provider_key(live_idp)
    pub = public_jwk(key)
    secret = json.dumps(pub).encode() if secret_form == "jwk-json" else forge({"op": "pem", "jwk": pub})[0].encode()
    token = hs256(secret, {"alg": "HS256", "typ": "at+jwt", "kid": key["kid"]}, claims(live_idp))
    assert_refused(stack, token, "token alg 'HS256' is HMAC; only the provider's public-key signatures are accepted")


def test_payload_edited_after_signing_is_rejected(stack, live_idp):
    # alice's real token, its email changed to bob's: everything but the signature is right for bob.
    real = live_idp.token("alice", jwt=True)
    h, p, sig = real.split(".")
    payload = decode_jwt(real)[1]
    payload["email"] = BOB
    assert_refused(stack, f"{h}.{b64url(json.dumps(payload))}.{sig}", "signature does not verify", user=BOB)


def test_expired_token_is_rejected(stack, live_idp):
    now = int(time.time())
    token = provider_signed(live_idp, iat=now - 7200, exp=now - 3600)
    assert_refused(stack, token, "token expired 36")


def test_token_not_yet_valid_is_rejected(stack, live_idp):
    token = provider_signed(live_idp, nbf=int(time.time()) + 3600)
    assert_refused(stack, token, "token is not valid yet (nbf 3")


def test_token_of_another_issuer_is_rejected(stack, live_idp):
    token = provider_signed(live_idp, iss="https://idp.attacker.example")
    assert_refused(stack, token, "token issuer 'https://idp.attacker.example' is not accepted")


def test_token_for_another_audience_is_rejected(stack, live_idp):
    token = provider_signed(live_idp, aud="urn:some-other-api")
    assert_refused(stack, token, f"token audience does not include any of '{AUDIENCE}'")


def test_token_without_aud_is_rejected_when_audience_is_set(stack, live_idp):
    token = provider_signed(live_idp, aud=DROP)
    assert_refused(stack, token, f"token audience does not include any of '{AUDIENCE}'")


def test_unknown_kid_is_rejected_after_one_key_refetch(make_stack, live_idp):
    # The interval leaves a busy machine ample time for the three logins after the refetch.
    interval = 10
    s = make_stack(local_settings(live_idp, f"jwks_refetch_min_interval_secs = {interval}\n"), auth_worker_max_count=1,
                   postfix=False)
    assert s.imap_login(ALICE, live_idp.token("alice", jwt=True)).ok
    first_fetch = time.monotonic()
    stranger = new_key("RS256", "not-the-providers-kid")
    forged = [sign(stranger, {"alg": "RS256", "typ": "at+jwt", "kid": "not-the-providers-kid"}, claims(live_idp))
              for _ in range(3)]
    time.sleep(max(0.0, interval + 0.2 - (time.monotonic() - first_fetch)))  # past the interval since the first fetch
    live_idp.reset_stats()
    refetched = time.monotonic()
    assert_refused(s, forged[0], "no signing key 'not-the-providers-kid' for this issuer, even after refetching the keys")
    assert live_idp.stats().get("/jwks", 0) == 1, live_idp.stats()
    # More made-up kids within the interval do not reach the provider.
    for t in forged[1:]:
        assert rejected(s.imap_login(ALICE, t))
    assert time.monotonic() - refetched < interval, "too slow to test the rate limit"
    assert live_idp.stats().get("/jwks", 0) == 1, live_idp.stats()


def test_jwk_whose_type_does_not_fit_the_tokens_alg_is_rejected(stack, live_idp):
    # Header alg ES256 naming the provider's RSA key, signed by some EC key.
    kid = provider_key(live_idp)["kid"]
    ec = new_key("ES256", kid)
    token = sign(ec, {"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims(live_idp))
    assert_refused(stack, token, f"signing key '{kid}' is RSA, which cannot verify alg 'ES256'")


@pytest.mark.parametrize(
    "part,bad,reason",
    [
        ("payload", "e30+", "JWT payload is not base64url-encoded JSON"),
        ("payload", b64url("{not json"), "JWT payload is not base64url-encoded JSON"),
        ("signature", "a+b/", "JWT signature is not base64url"),
        ("header", b64url("[1]"), "JWT header is not base64url-encoded JSON"),
    ],
    ids=["payload-not-base64url", "payload-not-json", "signature-not-base64url", "header-not-an-object"],
)
def test_malformed_base64_or_json_is_rejected(stack, live_idp, part, bad, reason):
    parts = dict(zip(("header", "payload", "signature"), provider_signed(live_idp).split(".")))
    parts[part] = bad
    token = ".".join(parts[k] for k in ("header", "payload", "signature"))
    assert_refused(stack, token, f"malformed token: {reason}")


def test_token_over_max_token_bytes_is_rejected_without_asking_the_provider(stack, live_idp):
    token = provider_signed(live_idp, pad="x" * MAX_TOKEN_BYTES)
    live_idp.reset_stats()
    assert_refused(stack, token, f"over max_token_bytes ({MAX_TOKEN_BYTES})")
    assert key_fetches(live_idp) == 0


def test_valid_jwt_of_another_user_is_rejected(stack, live_idp):
    token = live_idp.token("alice", jwt=True)
    assert_refused(stack, token, f"token belongs to '{ALICE}', not to login user '{BOB}'", user=BOB, mech="OAUTHBEARER")


def test_opaque_token_without_introspection_url_is_rejected_with_the_reason(stack, live_idp):
    live_idp.reset_stats()
    assert_refused(stack, live_idp.token("alice"), "opaque token and no introspection_url for non-JWT tokens")
    assert live_idp.stats().get("/me", 0) == 0


def test_token_with_a_negative_exp_is_rejected(stack, live_idp):
    # A signed exp that is not a time must not count as absent (or as "never expires").
    assert_refused(stack, provider_signed(live_idp, exp=-1), "token claim 'exp' is not a time")


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
def test_token_naming_a_key_in_its_header_is_rejected_even_when_validly_signed(stack, live_idp, name):
    key = provider_key(live_idp)
    value = {"jku": f"{live_idp.issuer}/jwks", "x5u": f"{live_idp.issuer}/cert.pem", "jwk": public_jwk(key),
             "x5c": ["MIIB"]}[name]
    token = sign(key, {"alg": key["alg"], "typ": "at+jwt", "kid": key["kid"], name: value}, claims(live_idp))
    assert_refused(stack, token, f"token header carries '{name}'")


def test_audience_with_a_space_inside_one_value_is_rejected(stack, live_idp):
    token = provider_signed(live_idp, aud=f"evil {AUDIENCE}")
    assert_refused(stack, token, f"token audience does not include any of '{AUDIENCE}'")


def test_username_claim_that_is_an_array_is_rejected(stack, live_idp):
    token = provider_signed(live_idp, email=[ALICE, None])
    assert_refused(stack, token, "provider reply's 'email' (username_attribute) is not one string")


# --- two tenants: a key verifies only the issuer its source is bound to -----------------------------

ALIAS = "https://sts.windows.test/tenant-a/"  # like Entra's v1 issuer: announced by no discovery document


@pytest.fixture(scope="module")
def tenant_b(workroot, idp):
    """A second, independent provider: another tenant with its own issuer and key, whose key has the
    same kid as tenant A's (kids are the providers' to choose: only the binding tells them apart)."""
    d = os.path.join(workroot, "idp-tenant-b")
    os.makedirs(d, exist_ok=True)
    kid = provider_key(idp)["kid"]
    keys = os.path.join(d, f"keys-{secrets.token_hex(4)}.json")
    with open(keys, "w") as f:
        json.dump({"keys": [new_key("RS256", kid)]}, f)
    b = IdP(d, keys_file=keys, jwt_kid=kid)
    b.start()
    yield b
    b.stop()


def tenant_token(signer, tenant_a, **changes) -> str:
    key = provider_key(signer)
    return sign(key, {"alg": key["alg"], "typ": "at+jwt", "kid": key["kid"]}, claims(tenant_a, **changes))


def two_tenant_settings(a, b, extra: str = "") -> str:
    return (
        "introspection_mode = local\n"
        f"openid_configuration_url = {a.discovery_url} {b.discovery_url}\n"
        f"audience = {AUDIENCE}\n"
        "username_attribute = email\n" + extra
    )


def test_listed_issuer_no_document_announces_is_not_verified_with_another_tenants_key(
        make_stack, live_idp, tenant_b):
    # The README's former Entra recipe: an `issuers` entry that no discovery document announces.
    s = make_stack(two_tenant_settings(live_idp, tenant_b, f"issuers = {live_idp.issuer} {tenant_b.issuer} {ALIAS}\n"),
                   postfix=False)
    mark = s.log_mark()
    r = s.imap_login(ALICE, tenant_token(tenant_b, live_idp, iss=ALIAS))
    assert not r.ok and r.tempfail, r.text
    log = s.wait_log(mark, "temporary failure")
    assert f"token issuer '{ALIAS}' is in issuers, but no key source is bound to it" in log, log[-2000:]
    # Each tenant's own tokens are accepted, and neither key signs for the other tenant.
    assert s.imap_login(ALICE, live_idp.token("alice", jwt=True)).ok
    assert s.imap_login(ALICE, tenant_b.token("alice", jwt=True)).ok
    assert provider_key(tenant_b)["kid"] == provider_key(live_idp)["kid"]
    assert_refused(s, tenant_token(tenant_b, live_idp), "signature does not verify")


def test_alias_bound_to_a_tenants_key_set_is_verified_only_with_that_key_set(make_stack, live_idp, tenant_b):
    s = make_stack(two_tenant_settings(live_idp, tenant_b, f"jwks_url = {live_idp.jwks_url}={ALIAS}\n"), postfix=False)
    r = s.imap_login(ALICE, tenant_token(live_idp, live_idp, iss=ALIAS))
    assert r.ok, r.text
    assert_refused(s, tenant_token(tenant_b, live_idp, iss=ALIAS), "signature does not verify")
    assert_refused(s, tenant_token(tenant_b, live_idp), "signature does not verify")
    assert s.imap_login(ALICE, tenant_b.token("alice", jwt=True)).ok


# --- opaque tokens next to JWTs --------------------------------------------------------------------

def test_opaque_token_goes_to_the_userinfo_introspection_url_and_jwts_stay_local(make_stack, live_idp):
    # oidc-provider's userinfo reply has no aud, and `audience` applies to every mode: not set here.
    s = make_stack(
        "introspection_mode = local\n"
        f"openid_configuration_url = {live_idp.discovery_url}\n"
        f"introspection_url = {live_idp.userinfo_url}\n"
        "username_attribute = email\n",
        postfix=False,
    )
    opaque, jwt = live_idp.token("alice"), live_idp.token("alice", jwt=True)
    live_idp.reset_stats()
    assert s.imap_login(ALICE, opaque).ok
    assert live_idp.stats().get("/me", 0) == 1
    assert s.imap_login(ALICE, jwt).ok
    assert live_idp.stats().get("/me", 0) == 1


def test_opaque_token_goes_to_rfc7662_introspection_with_audience_set(make_stack, live_idp):
    s = make_stack(
        local_settings(live_idp, f"introspection_url = {live_idp.introspection_url}\n"
                       "client_id = dovecot\nclient_secret = dovecot-secret\n"),
        postfix=False,
    )
    opaque = live_idp.token("alice", resource="urn:dovecot:opaque")
    live_idp.reset_stats()
    assert s.imap_login(ALICE, opaque).ok
    assert live_idp.stats().get("/token/introspection", 0) == 1


# --- key rotation and outages ----------------------------------------------------------------------

def rotate(idp, new_keys: list[dict], signing_kid: str, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"keys": new_keys}, f)
    idp.restart(keys_file=path, jwt_kid=signing_kid)


def test_rotated_signing_key_is_accepted_without_restarting_dovecot(make_stack, restorable_idp, workroot):
    idp = restorable_idp
    s = make_stack(local_settings(idp, "jwks_refetch_min_interval_secs = 1\n"), auth_worker_max_count=1, postfix=False)
    first_fetch = time.monotonic()
    assert s.imap_login(ALICE, idp.token("alice", jwt=True)).ok
    old_kid = provider_key(idp)["kid"]
    old_unused, old_used = idp.token("alice", jwt=True), idp.token("alice", jwt=True)
    assert s.imap_login(ALICE, old_used).ok
    # The old key is gone from the provider's key set (an abrupt rotation).
    new = new_key("RS256", "rotated-" + secrets.token_hex(4))
    rotate(idp, [new], new["kid"], os.path.join(workroot, f"rotated-{new['kid']}.json"))
    time.sleep(max(0.0, 1.2 - (time.monotonic() - first_fetch)))
    token = idp.token("alice", jwt=True)
    assert decode_jwt(token)[0]["kid"] == new["kid"] != old_kid
    idp.reset_stats()
    r = s.imap_login(ALICE, token, "XOAUTH2")
    assert r.ok, r.text
    assert idp.stats().get("/jwks", 0) == 1
    # A token of the removed key that was never seen: refused, its key is no longer published.
    assert_refused(s, old_unused, f"no signing key '{old_kid}' for this issuer")
    # One accepted before the rotation is still served from the module's cache (cache_ttl_secs).
    assert s.imap_login(ALICE, old_used).ok


def test_tokens_of_the_previous_key_stay_valid_while_the_provider_still_publishes_it(
        make_stack, restorable_idp, workroot):
    idp = restorable_idp
    s = make_stack(local_settings(idp, "jwks_refetch_min_interval_secs = 1\n"), auth_worker_max_count=1, postfix=False)
    first_fetch = time.monotonic()
    assert s.imap_login(ALICE, idp.token("alice", jwt=True)).ok
    old = provider_key(idp)
    old_unused = idp.token("alice", jwt=True)
    # Graceful rotation: the new key signs, the old one is still in the key set.
    new = new_key("RS256", "next-" + secrets.token_hex(4))
    rotate(idp, [new, old], new["kid"], os.path.join(workroot, f"rotated-{new['kid']}.json"))
    time.sleep(max(0.0, 1.2 - (time.monotonic() - first_fetch)))
    token = idp.token("alice", jwt=True)
    assert decode_jwt(token)[0]["kid"] == new["kid"]
    assert s.imap_login(ALICE, token).ok
    assert s.imap_login(ALICE, old_unused).ok


def test_provider_down_after_keys_were_fetched_new_jwt_is_still_accepted(make_stack, restorable_idp):
    idp = restorable_idp
    s = make_stack(local_settings(idp), auth_worker_max_count=1)
    assert s.imap_login(ALICE, idp.token("alice", jwt=True)).ok
    fresh_imap, fresh_smtp = idp.token("alice", jwt=True), idp.token("bob", jwt=True)
    idp.stop()
    r = s.imap_login(ALICE, fresh_imap)
    assert r.ok, r.text
    r = s.smtp_login(BOB, fresh_smtp)
    assert r.ok, r.text
    # Refusals still work without the provider.
    assert_refused(s, provider_signed(idp, exp=int(time.time()) - 3600), "token expired")


def test_provider_down_before_any_key_was_fetched_is_a_temporary_failure(make_stack, restorable_idp):
    idp = restorable_idp
    token = idp.token("alice", jwt=True)
    idp.stop()
    s = make_stack(local_settings(idp), postfix=False)
    mark = s.log_mark()
    r = s.imap_login(ALICE, token)
    assert r.tempfail, r.text
    log = s.wait_log(mark, "temporary failure")
    assert f"dovecot-oauth2: temporary failure: no signing keys from {idp.discovery_url}: provider unreachable" in log, log[-2000:]
    assert "authentication failed" not in log


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_provider_signing_with_a_non_rsa_key_is_accepted(make_stack, restorable_idp, workroot, alg):
    idp = restorable_idp
    keys = os.path.join(workroot, f"idp-keys-{alg}-{secrets.token_hex(4)}.json")  # generated on start
    idp.restart(keys_file=keys, jwt_alg=alg, jwt_kid=None)
    s = make_stack(local_settings(idp), postfix=False)
    token = idp.token("alice", jwt=True)
    assert decode_jwt(token)[0]["alg"] == alg
    r = s.imap_login(ALICE, token, "XOAUTH2")
    assert r.ok, r.text
    assert_refused(s, idp.token("bob", jwt=True), f"token belongs to '{BOB}'")
