"""Driver for the real OpenID provider in tests/idp (oidc-provider 9.x).

Python 3.11 standard library only. Starts ``node tests/idp/server.mjs`` on
127.0.0.1, drives a real authorization-code flow (PKCE S256, login form,
automatic consent) and returns the tokens.

Tokens:
  * ``token(user)``            opaque access token (no resource indicator),
                               usable at the userinfo endpoint and introspectable.
  * ``token(user, jwt=True)``  JWT access token for resource ``urn:dovecot``
                               (aud "urn:dovecot", signed with ``jwt_alg``,
                               claims include email and preferred_username).
                               oidc-provider refuses to introspect JWTs (HTTP 400
                               unsupported_token_type) and the userinfo endpoint
                               rejects tokens with an audience.
  * ``token(user, resource="urn:dovecot:opaque")`` opaque token with
                               aud "urn:dovecot" (introspectable, not for userinfo).

Self-check: ``python3 tests/e2e/idp.py``
"""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_JS = os.path.normpath(os.path.join(HERE, "..", "idp", "server.mjs"))

CLIENT_ID = "mail-client"
CLIENT_SECRET = "mail-client-secret"
REDIRECT_URI = "http://127.0.0.1/callback"
JWT_RESOURCE = "urn:dovecot"
DEFAULT_SCOPE = "openid email profile"

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}


class IdPError(RuntimeError):
    """An HTTP step of the flow failed; carries status and body."""

    def __init__(self, step: str, status: int | None, body: str):
        super().__init__(f"{step}: HTTP {status}: {body[:2000]}")
        self.step = step
        self.status = status
        self.body = body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def decode_jwt(token: str) -> tuple[dict, dict]:
    """(header, payload) of a compact JWS, without verifying it."""
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


def _basic(user: str, password: str) -> str:
    raw = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


class IdP:
    introspection_client = ("dovecot", "dovecot-secret")
    client = (CLIENT_ID, CLIENT_SECRET)
    # Clients allowed the password grant (server.mjs): client_secret_post and client_secret_basic.
    grant_client = ("dovecot-grant", "dovecot-grant-secret")
    grant_client_basic = ("dovecot-grant-basic", "dovecot-grant-secret")

    def __init__(
        self,
        workdir: str,
        port: int | None = None,
        keys_file: str | None = None,
        access_token_ttl: int = 3600,
        jwt_alg: str = "RS256",
        jwt_kid: str | None = None,
    ):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = port or free_port()
        # when no file is given the server generates a key and saves it here,
        # so restarts reuse it and private_jwks() can read it
        self.keys_file = os.path.abspath(keys_file) if keys_file else os.path.join(self.workdir, "idp-keys.json")
        self.access_token_ttl = access_token_ttl
        self.jwt_alg = jwt_alg
        self.jwt_kid = jwt_kid
        self.log_path = os.path.join(self.workdir, "idp.log")
        self._proc: subprocess.Popen | None = None
        self._log = None

    # ------------------------------------------------------------ urls
    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def authorization_url(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def userinfo_url(self) -> str:
        return f"{self.issuer}/me"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/token/introspection"

    @property
    def revocation_url(self) -> str:
        return f"{self.issuer}/token/revocation"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    # ------------------------------------------------------------ process
    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("IdP already running")
        env = dict(os.environ)
        env.update(
            IDP_PORT=str(self.port),
            IDP_ISSUER=self.issuer,
            IDP_KEYS=self.keys_file,
            IDP_ACCESS_TOKEN_TTL=str(self.access_token_ttl),
            IDP_JWT_ALG=self.jwt_alg,
        )
        if self.jwt_kid:
            env["IDP_JWT_KID"] = self.jwt_kid
        else:
            env.pop("IDP_JWT_KID", None)
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            ["node", SERVER_JS],
            cwd=os.path.dirname(SERVER_JS),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        last = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._cleanup()
                raise RuntimeError(f"IdP exited early; see {self.log_path}:\n{self._tail()}")
            try:
                r = self._request("GET", self.discovery_url, timeout=2)
                if r.status == 200:
                    return
                last = r.status
            except OSError as e:
                last = e
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"IdP did not answer discovery within 20 s ({last}); see {self.log_path}:\n{self._tail()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._cleanup()
        # wait until the port is free again (as Node will bind it: TIME_WAIT leftovers do not count)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", self.port))
                    return
                except OSError:
                    time.sleep(0.05)

    def restart(self, **changes) -> None:
        """Stop, apply attribute changes (keys_file, access_token_ttl, jwt_alg, jwt_kid), start on the same port."""
        self.stop()
        for k, v in changes.items():
            if k not in ("keys_file", "access_token_ttl", "jwt_alg", "jwt_kid"):
                raise TypeError(f"unknown IdP setting {k!r}")
            if k == "keys_file" and v is not None:
                v = os.path.abspath(v)
            setattr(self, k, v)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _cleanup(self) -> None:
        self._proc = None
        if self._log:
            self._log.close()
            self._log = None

    def _tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ http
    def _request(self, method, url, *, data=None, headers=None, opener=None, timeout=10) -> _Response:
        if isinstance(data, dict):
            data = urllib.parse.urlencode(data).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        opener = opener or urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        try:
            with opener.open(req, timeout=timeout) as resp:
                return _Response(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as e:
            body = e.read() if e.fp else b""
            return _Response(e.code, e.headers, body)

    def _get_json(self, url):
        r = self._request("GET", url)
        if r.status != 200:
            raise IdPError(f"GET {url}", r.status, r.text)
        return r.json()

    def discovery(self) -> dict:
        return self._get_json(self.discovery_url)

    def jwks(self) -> dict:
        """The public JWKS served at jwks_uri."""
        return self._get_json(self.jwks_url)

    def private_jwks(self) -> dict:
        """The private signing keys in use ({"keys": [...]}), as read from keys_file."""
        with open(self.keys_file) as f:
            return json.load(f)

    def stats(self) -> dict:
        return self._get_json(f"{self.issuer}/__stats")

    def reset_stats(self) -> None:
        r = self._request("POST", f"{self.issuer}/__stats/reset", data=b"")
        if r.status != 200:
            raise IdPError("POST /__stats/reset", r.status, r.text)

    # ------------------------------------------------------------ flow
    def token_response(
        self,
        user: str,
        *,
        jwt: bool = False,
        password: str | None = None,
        scope: str = DEFAULT_SCOPE,
        resource: str | None = None,
    ) -> dict:
        """Run a full authorization-code flow for ``user``; return the token endpoint JSON."""
        if password is None:
            password = PASSWORDS.get(user, "")
        if resource is None and jwt:
            resource = JWT_RESOURCE
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(jar),
            _NoRedirect(),
        )
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        params = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "state": state,
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if resource:
            params["resource"] = resource
        url = f"{self.authorization_url}?{urllib.parse.urlencode(params)}"
        method, data = "GET", None
        code = None
        for _ in range(20):
            r = self._request(method, url, data=data, opener=opener)
            step = f"{method} {urllib.parse.urlsplit(url).path}"
            if r.status in (301, 302, 303, 307, 308):
                loc = urllib.parse.urljoin(url, r.headers["Location"])
                if loc.startswith(REDIRECT_URI):
                    q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
                    if "error" in q:
                        raise IdPError(f"{step} -> callback", r.status, loc)
                    if q.get("state") != [state]:
                        raise IdPError(f"{step} -> callback state mismatch", r.status, loc)
                    code = q["code"][0]
                    break
                url, method, data = loc, "GET", None
                continue
            if r.status == 200 and 'action="/interaction/' in r.text and "/login" in r.text:
                m = re.search(r'action="([^"]+/login)"', r.text)
                url = urllib.parse.urljoin(url, m.group(1))
                method, data = "POST", {"login": user, "password": password}
                continue
            raise IdPError(step, r.status, r.text)
        if code is None:
            raise IdPError("authorization flow", None, "too many steps without reaching the redirect_uri")

        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
        if resource:
            form["resource"] = resource
        r = self._request("POST", self.token_url, data=form, headers={"Authorization": _basic(*self.client)})
        if r.status != 200:
            raise IdPError("POST /token", r.status, r.text)
        return r.json()

    def token(self, user: str, *, jwt: bool = False, password: str | None = None,
              scope: str = DEFAULT_SCOPE, resource: str | None = None) -> str:
        return self.token_response(user, jwt=jwt, password=password, scope=scope, resource=resource)["access_token"]

    def refresh(self, refresh_token: str, *, resource: str | None = None) -> dict:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if resource:
            form["resource"] = resource
        r = self._request("POST", self.token_url, data=form, headers={"Authorization": _basic(*self.client)})
        if r.status != 200:
            raise IdPError("POST /token (refresh)", r.status, r.text)
        return r.json()

    # ------------------------------------------------------------ resource-server side helpers
    def userinfo(self, access_token: str) -> dict:
        r = self._request("GET", self.userinfo_url, headers={"Authorization": f"Bearer {access_token}"})
        if r.status != 200:
            raise IdPError("GET /me", r.status, r.text + " " + r.headers.get("WWW-Authenticate", ""))
        return r.json()

    def introspect(self, token: str, client: tuple[str, str] | None = None) -> dict:
        """RFC 7662 introspection with client_secret_basic (default: the dovecot client)."""
        r = self._request("POST", self.introspection_url, data={"token": token},
                          headers={"Authorization": _basic(*(client or self.introspection_client))})
        if r.status != 200:
            raise IdPError("POST /token/introspection", r.status, r.text)
        return r.json()

    # ------------------------------------------------------------ password grant, app passwords
    def password_grant(self, username: str, password: str, scope: str = DEFAULT_SCOPE) -> _Response:
        """POST /token grant_type=password as the dovecot-grant client (client_secret_post)."""
        cid, secret = self.grant_client
        return self._request("POST", self.token_url, data={
            "grant_type": "password", "username": username, "password": password, "scope": scope,
            "client_id": cid, "client_secret": secret})

    def new_app_password(self, user: str) -> str:
        """A new app password for ``user`` (a username or email the IdP knows)."""
        r = self._request("POST", f"{self.issuer}/__app_passwords", data={"username": user})
        if r.status != 200:
            raise IdPError("POST /__app_passwords", r.status, r.text)
        return r.json()["password"]

    def password_grant_tokens(self) -> list[str]:
        """The access tokens the password grant issued (the last 1000)."""
        return self._get_json(f"{self.issuer}/__password_grant_tokens")

    def revoke_app_password(self, password: str) -> None:
        r = self._request("POST", f"{self.issuer}/__app_passwords/revoke", data={"password": password})
        if r.status != 200:
            raise IdPError("POST /__app_passwords/revoke", r.status, r.text)

    def revoke(self, token: str, client: tuple[str, str] | None = None) -> None:
        r = self._request("POST", self.revocation_url, data={"token": token},
                          headers={"Authorization": _basic(*(client or self.client))})
        if r.status != 200:
            raise IdPError("POST /token/revocation", r.status, r.text)


def _self_check() -> int:
    with tempfile.TemporaryDirectory(prefix="idp-selfcheck-") as tmp:
        idp = IdP(tmp)
        idp.start()
        try:
            disc = idp.discovery()
            for k in ("jwks_uri", "userinfo_endpoint", "introspection_endpoint", "token_endpoint"):
                print(f"discovery {k} = {disc[k]}")
            assert disc["userinfo_endpoint"] == idp.userinfo_url
            assert disc["introspection_endpoint"] == idp.introspection_url
            assert disc["jwks_uri"] == idp.jwks_url

            resp = idp.token_response("alice")
            at = resp["access_token"]
            print(f"\nalice opaque token: len={len(at)} token_type={resp['token_type']} "
                  f"expires_in={resp['expires_in']} scope={resp.get('scope')!r} "
                  f"keys={sorted(resp)}")
            assert "." not in at
            ui = idp.userinfo(at)
            print("alice userinfo:", json.dumps(ui))
            assert ui["email"] == "alice@example.test" and ui["preferred_username"] == "alice"
            intro = idp.introspect(at)
            print("alice opaque introspection (dovecot client):", json.dumps(intro))
            assert intro["active"] is True and intro["email"] == "alice@example.test"

            resp = idp.token_response("bob", jwt=True)
            jt = resp["access_token"]
            header, payload = decode_jwt(jt)
            print(f"\nbob JWT token: len={len(jt)} expires_in={resp['expires_in']} scope={resp.get('scope')!r}")
            print("bob JWT header:", json.dumps(header))
            print("bob JWT payload:", json.dumps(payload))
            assert payload["aud"] == JWT_RESOURCE and payload["email"] == "bob@example.test"
            assert header["alg"] == idp.jwt_alg
            assert header["kid"] in [k["kid"] for k in idp.jwks()["keys"]]
            try:
                print("bob JWT introspection:", idp.introspect(jt))
            except IdPError as e:
                print(f"bob JWT introspection refused by oidc-provider (expected): HTTP {e.status} {e.body}")
            try:
                idp.userinfo(jt)
                raise AssertionError("userinfo accepted an audience-restricted JWT")
            except IdPError as e:
                print(f"bob JWT at userinfo refused (expected): HTTP {e.status}")

            ot = idp.token("carol", resource="urn:dovecot:opaque")
            print(f"\ncarol opaque urn:dovecot:opaque token len={len(ot)}; introspection:",
                  json.dumps(idp.introspect(ot)))

            dt = idp.token("dave")
            print("dave userinfo:", json.dumps(idp.userinfo(dt)))

            try:
                idp.token("alice", password="wrong")
                raise AssertionError("login with a wrong password succeeded")
            except IdPError as e:
                print(f"\nalice with wrong password fails (expected): {e.step} HTTP {e.status}")
                assert e.status == 401

            idp.revoke(at)
            assert idp.introspect(at)["active"] is False
            print("alice opaque token after revocation: active=false")

            r = idp.password_grant("alice@example.test", "alice-pw")
            assert r.status == 200, r.text
            pt = r.json()["access_token"]
            print(f"\npassword grant alice: keys={sorted(r.json())} userinfo={json.dumps(idp.userinfo(pt))}")
            app = idp.new_app_password("bob")
            assert idp.password_grant("bob@example.test", app).status == 200
            assert idp.password_grant("alice@example.test", app).json()["error"] == "invalid_grant"
            assert idp.password_grant("carol", "carol-pw").json()["error"] == "invalid_grant", "MFA user"
            assert idp.password_grant("carol", idp.new_app_password("carol")).status == 200
            idp.revoke_app_password(app)
            r = idp.password_grant("bob@example.test", app)
            print(f"revoked app password: HTTP {r.status} {r.text}")
            assert r.status == 400 and r.json()["error"] == "invalid_grant"

            print("\nstats:", json.dumps(idp.stats()))
            idp.reset_stats()
            assert idp.stats() == {}

            kid_before = header["kid"]
            idp.restart()
            assert decode_jwt(idp.token("bob", jwt=True))[0]["kid"] == kid_before
            print(f"restart on port {idp.port} reused key {kid_before}")
        except Exception:
            print("---- idp.log tail ----\n" + idp._tail(), file=sys.stderr)
            raise
        finally:
            idp.stop()
        print("\nSELF-CHECK OK")
    return 0


if __name__ == "__main__":
    sys.exit(_self_check())
