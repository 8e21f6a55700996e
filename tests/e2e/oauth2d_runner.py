"""dovecot-oauth2d as Dovecot's oauth2 client sees it, for the tests that put a real Dovecot in front of
it: daemon.Daemon (the daemon's own test driver) with the listener keys written for it (a random secret
read from a file with `<`, a free loopback port or a unix socket) and Dovecot's side of the
configuration (the README's `oauth2 {}` block for 2.4).

    d = Daemon(workdir, "introspection_url = ...\\nusername_attribute = email\\n").start()
    stack = Dovecot24Stack(oauth2=d.dovecot24_block())
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.parse

import daemon as daemon_driver
from daemon import BINARY as BUILT_DAEMON

REPO = daemon_driver.ROOT


def fingerprint(token: str) -> str:
    """What the daemon logs instead of a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def daemon_problem() -> str | None:
    if not os.access(BUILT_DAEMON, os.X_OK):
        return f"{BUILT_DAEMON} missing: run `cargo build --release` first"
    return None


class Daemon(daemon_driver.Daemon):
    def __init__(self, workdir: str, settings: str, *, client_id: str = "dovecot", listen: str = "127.0.0.1:0"):
        os.makedirs(workdir, exist_ok=True)
        self.secret = secrets.token_hex(24)
        self.secret_path = os.path.join(os.path.abspath(workdir), "listen.secret")
        with open(self.secret_path, "w") as f:
            f.write(self.secret + "\n")
        os.chmod(self.secret_path, 0o600)
        self.listen = listen
        self.client = (client_id, self.secret)
        super().__init__(workdir, self.with_listener(settings), client=self.client)

    def with_listener(self, settings: str) -> str:
        """The provider part is `settings`; the listener keys are added."""
        return (settings.rstrip("\n") + "\n" + f"listen = {self.listen}\n"
                f"listen_client_id = {self.client[0]}\nlisten_client_secret = <{self.secret_path}\n")

    @property
    def socket_path(self) -> str | None:
        return self.listen[len("unix:"):] if self.listen.startswith("unix:") else None

    @property
    def introspection_url(self) -> str:
        if self.socket_path is None:
            return super().introspection_url
        # through a unix socket Dovecot sends the URL as a proxy request; the host is never contacted
        user, secret = (urllib.parse.quote(x, safe="") for x in self.client)
        return f"http://{user}:{secret}@localhost/introspect"

    def dovecot24_block(self, socket_inside: str | None = None, **extra: str | None) -> dict[str, str]:
        """The README's `oauth2 {}` block for Dovecot 2.4 (`socket_inside`: the daemon's socket as
        Dovecot sees it, for http_client_proxy_socket_path)."""
        block = {"introspection_mode": "post", "introspection_url": self.introspection_url,
                 "username_attribute": "username", "username_validation_format": "%{user | lower}",
                 "active_attribute": "active", "active_value": "true"}
        if socket_inside:
            block["http_client_proxy_socket_path"] = socket_inside
        block.update(extra)
        return {k: v for k, v in block.items() if v is not None}

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)
