"""dovecot-oauth2d's SCIM 2.0 service (issue 13) as its clients see it, for the SCIM tests.

    d = ScimDaemon(workdir, provider_settings, backend_settings).start()
    r = d.scim("POST", "/Users", {"schemas": [USER], "userName": "ann@example.com"})   # Reply
    client = d.scim2_client()            # scim2-client's SyncSCIMClient, the server discovered
    d.status()                           # `dovecot-oauth2d -c FILE --scim-status`

The daemon is oauth2d_runner.Daemon (introspection listener keys, a random listener secret) with the
scim_* keys added: scim_listen on a free loopback port, scim_token `<FILE` with a random token. The
SCIM listener has no startup line of its own to read, so start() waits until the port answers.

Also here: the DMS account files as DMS's scripts read them (accounts, aliases, quotas: a line that
DMS would misread is an error, not skipped), and the hook that makes scim2-tester's generated user
names and emails addresses of a served domain (see served_values()).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Sequence

import oauth2d_runner
from daemon import Reply
from mailstack import HOST, _free_ports

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
MAIL = "urn:ietf:params:scim:schemas:extension:dovecot-oauth2:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
QUOTA_ATTRIBUTE = MAIL + ":mailQuota"
BASE_PATH = "/scim/v2"


def user(name: str, *emails: str, **attrs) -> dict:
    """A User body: userName, and emails (the first primary) when given."""
    body = {"schemas": [USER], "userName": name, **attrs}
    if emails:
        body["emails"] = [{"value": e, "type": "work", "primary": i == 0} for i, e in enumerate(emails)]
    return body


def patch(*operations: dict) -> dict:
    return {"schemas": [PATCH], "Operations": list(operations)}


class ScimDaemon(oauth2d_runner.Daemon):
    """dovecot-oauth2d with its SCIM listener. `scim` holds the scim_* keys other than scim_listen and
    scim_token (the backend's), e.g. {"scim_backend": "dms", "scim_dms_config_dir": ...}."""

    def __init__(self, workdir: str, provider: str, scim: dict[str, str], *, tls: tuple[str, str] | None = None,
                 own_listener: bool = True):
        # own_listener=False: `provider` already has the listener keys (a settings file written by
        # docker/user-patches.sh), which are kept as they are
        self.own_listener = own_listener
        os.makedirs(workdir, exist_ok=True)
        self.scim_port = _free_ports(1)[0]
        self.token = secrets.token_urlsafe(33)  # 44 characters: over the 32 the daemon requires
        self.token_path = os.path.join(os.path.abspath(workdir), "scim.token")
        with open(self.token_path, "w") as f:
            f.write(self.token + "\n")
        os.chmod(self.token_path, 0o600)
        self.tls = tls  # (cert, key) PEM files: the listener speaks TLS, the clients verify that cert
        # The tests send many requests a minute (scim2-tester alone some hundreds): the default rate
        # limit (600/min) stays for the test that checks it.
        self.scim_keys = {"scim_listen": f"{HOST}:{self.scim_port}", "scim_token": f"<{self.token_path}",
                          "scim_max_requests_per_minute": "100000", **scim}
        if tls:
            self.scim_keys.update(scim_tls_cert=tls[0], scim_tls_key=tls[1])
        super().__init__(workdir, provider.rstrip("\n") + "\n" + settings_lines(self.scim_keys))

    def with_listener(self, settings: str) -> str:
        return super().with_listener(settings) if self.own_listener else settings

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.scim_port}{BASE_PATH}"

    def start(self, timeout: float = 20) -> "ScimDaemon":
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.scim("GET", "/ServiceProviderConfig", timeout=2)
                return self
            except OSError:
                if not self.running:
                    raise RuntimeError("dovecot-oauth2d exited:\n" + self.log_since(0))
                time.sleep(0.05)
        raise RuntimeError(f"SCIM listener on {self.scim_port} did not answer:\n" + self.log_since(0))

    # ------------------------------------------------------------------ raw HTTP
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.tls[0])
        ctx.check_hostname = False  # the self-signed cert names 127.0.0.1 as an IP SAN; verified below
        return ctx

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(HOST, self.scim_port, timeout=timeout, context=self.ssl_context())
        return http.client.HTTPConnection(HOST, self.scim_port, timeout=timeout)

    def scim(self, method: str, path: str, body: dict | list | bytes | str | None = None, *,
             token: str | None | bool = True, headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
        """One SCIM request on its own connection; path below /scim/v2 (or absolute when it starts
        with /scim). token=True sends the daemon's token, a string that one, None/False none."""
        h = {"Accept": "application/scim+json"}
        if body is not None:
            h["Content-Type"] = "application/scim+json"
        if token is True:
            h["Authorization"] = "Bearer " + self.token
        elif token:
            h["Authorization"] = "Bearer " + token
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        full = path if path.startswith("/scim") else BASE_PATH + path
        conn = self.connection(timeout)
        try:
            conn.request(method, full, body=body, headers=h)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def create(self, body: dict) -> dict:
        r = self.scim("POST", "/Users", body)
        assert r.status == 201, (r.status, r.text)
        return r.json

    def find(self, filter_text: str) -> Reply:
        """GET /Users?filter=... with the filter percent-encoded."""
        return self.scim("GET", "/Users?filter=" + urllib.parse.quote(filter_text, safe=""))

    def users(self) -> list[dict]:
        """Every user, read page by page (the service may cap count)."""
        out, start = [], 1
        while True:
            r = self.scim("GET", f"/Users?startIndex={start}&count=100")
            assert r.status == 200, (r.status, r.text)
            page = r.json.get("Resources", [])
            out += page
            if not page or len(out) >= r.json["totalResults"]:
                return out
            start += len(page)

    def status(self) -> subprocess.CompletedProcess:
        """`dovecot-oauth2d -c FILE --scim-status` (what was provisioned)."""
        return subprocess.run([self.binary, "-c", self.settings_path, "--scim-status"], capture_output=True,
                              text=True, timeout=60)

    # ------------------------------------------------------------------ scim2-client
    def scim2_client(self, discover: bool = True):
        """scim2-client's SyncSCIMClient over httpx2 with the bearer token; the server discovered
        (its /ServiceProviderConfig, /ResourceTypes and /Schemas) when `discover`."""
        import httpx2
        from scim2_client.engines.httpx2 import SyncSCIMClient

        verify: ssl.SSLContext | bool = self.ssl_context() if self.tls else True
        http_client = httpx2.Client(base_url=self.base_url, headers={"Authorization": "Bearer " + self.token},
                                    verify=verify, timeout=30)
        client = SyncSCIMClient(http_client)
        if discover:
            client.discover()
        return client


def settings_lines(keys: dict[str, str]) -> str:
    return "".join(f"{k} = {v}\n" for k, v in keys.items())


def self_signed_cert(directory: str, name: str = "scim") -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (IP SAN) made by openssl: (cert, key) paths."""
    cert, key = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return cert, key


# ---------------------------------------------------------------------- scim2-tester's generated values

class FreshAddresses(Sequence):
    """A sequence random.choice() draws from: every item asked for is a new address of `domain`.
    scim2-tester takes a field's value from the pydantic field's `examples` when it has some
    (scim2_tester.filling.get_random_example_value: random.choice(field_info.examples)); otherwise it
    makes userName a random UUID and an email value UUID@UUID.com, which a server that provisions
    mail accounts of its own domains must refuse."""

    def __init__(self, domain: str, prefix: str = "t"):
        self.domain, self.prefix = domain, prefix
        self.given: list[str] = []

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index):  # noqa: D105 - any index: a fresh address
        if isinstance(index, slice):
            raise TypeError("FreshAddresses is drawn from one item at a time")
        address = f"{self.prefix}{uuid.uuid4().hex[:20]}@{self.domain}"
        self.given.append(address)
        return address


def served_values(client, domain: str, quotas: Sequence[str] = ("1G", "512M", "20G")) -> FreshAddresses:
    """scim2-tester's extension point, used on the models the client discovered: userName and every
    email value are drawn from FreshAddresses(domain); mailQuota (our extension: a size) from `quotas`.
    Every other attribute keeps the tester's own random values. Returns the address source."""
    addresses = FreshAddresses(domain)
    touched = []
    # The discovered schema models, and the resource model the tester fills (User[MailUser] when an
    # extension is published: a class of its own, with its own field infos).
    models = list(client.provider.models) + [client.get_resource_model("User")]
    for model in models:
        fields = model.model_fields
        if "user_name" in fields:
            fields["user_name"].examples = addresses
            touched.append("userName")
            emails = fields.get("emails")
            if emails is not None:
                item = _item_model(emails.annotation)
                if item is not None and "value" in item.model_fields:
                    item.model_fields["value"].examples = addresses
                    touched.append("emails.value")
        if "mail_quota" in fields:  # our extension's model (scim2-models: one model per schema)
            fields["mail_quota"].examples = list(quotas)
            touched.append("mailQuota")
    assert {"userName", "emails.value"} <= set(touched), (touched, client.provider.models)
    return addresses


def _item_model(annotation):
    """The pydantic model of a (possibly Optional, list-of) annotation."""
    import typing

    from pydantic import BaseModel

    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack += list(typing.get_args(a))
    return None


# ---------------------------------------------------------------------- DMS's account files

class Malformed(AssertionError):
    pass


def _valid_lines(path: str) -> list[str]:
    """DMS's _get_valid_lines_from_file: every line but empty/white-space ones and # comments."""
    if not os.path.exists(path):
        return []
    data = open(path, "rb").read()
    text = data.decode("utf-8")  # a file DMS's bash reads must be text; raises on anything else
    if "\r" in text:
        raise Malformed(f"{path}: CR in the file")
    if text and not text.endswith("\n"):
        raise Malformed(f"{path}: no final newline (DMS would drop or rewrite its last line)")
    return [ln for ln in text.split("\n")[:-1] if not re.fullmatch(r"\s*(#.*)?", ln)]


ADDRESS = re.compile(r"[a-z0-9._+-]{1,64}@[a-z0-9.-]{1,253}")


def _keyed(config_dir: str, name: str, sep: str | None, value_ok, unique: bool = True) -> dict[str, str]:
    """One of DMS's account files as its scripts read it: every valid line `address<sep>value` (sep
    None: white space), the address of our shape and the value accepted by value_ok; anything else,
    and with `unique` a key twice, is Malformed."""
    out = {}
    path = os.path.join(config_dir, name)
    for ln in _valid_lines(path):
        parts = ln.split(sep)
        if len(parts) != 2 or not ADDRESS.fullmatch(parts[0]) or not value_ok(parts[1]):
            raise Malformed(f"{path}: line {ln!r}")
        if unique and parts[0] in out:
            raise Malformed(f"{path}: {parts[0]} twice")
        out[parts[0]] = parts[1]
    return out


def accounts(config_dir: str) -> dict[str, str]:
    """postfix-accounts.cf as DMS's _create_accounts reads it (`IFS='|' read LOGIN PASS ATTRS`):
    address -> password hash; every line `address|{SCHEME}hash` with no third field from us."""
    return _keyed(config_dir, "postfix-accounts.cf", "|", lambda v: re.fullmatch(r"\{[A-Z0-9-]+\}\S+", v))


def aliases(config_dir: str) -> dict[str, list[str]]:
    """postfix-virtual.cf as Postfix (texthash) and DMS read it: alias -> targets (comma separated)."""
    lines = _keyed(config_dir, "postfix-virtual.cf", None,
                   lambda v: all(ADDRESS.fullmatch(t) for t in v.split(",")))
    return {k: v.split(",") for k, v in lines.items()}


def quotas(config_dir: str) -> dict[str, str]:
    """dovecot-quotas.cf as DMS's _add_attribute_dovecot_quota reads it (`IFS=':'`, two fields)."""
    return _keyed(config_dir, "dovecot-quotas.cf", ":", lambda v: re.fullmatch(r"[0-9]+[BkMGT]?", v),
                  unique=False)


def dms_files(config_dir: str) -> dict[str, bytes | None]:
    """The raw bytes of the three files (None: absent), to compare before/after."""
    out = {}
    for name in ("postfix-accounts.cf", "postfix-virtual.cf", "dovecot-quotas.cf"):
        p = os.path.join(config_dir, name)
        out[name] = open(p, "rb").read() if os.path.exists(p) else None
    return out


def wait_for(condition, timeout: float = 30, what: str = "condition"):
    """Polls `condition()` until it returns a true value (returned), or fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)
