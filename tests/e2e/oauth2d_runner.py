"""dovecot-oauth2d (target/release/dovecot-oauth2d) run for the end-to-end tests: a settings file with a
free loopback port and a random listener secret, the daemon in its own session, its stderr in a log file
under the suite's workroot (so the session's leak check reads it), and helpers for Dovecot's side: the
introspection URL with the credentials, the `oauth2 {}` block for Dovecot 2.4, the args file of Dovecot
2.3's `driver = oauth2`, and the daemon's /metrics.

    d = Daemon(workdir, "introspection_url = ...\\nusername_attribute = email\\n")
    d.start()
    stack = Dovecot24Stack(oauth2=d.dovecot24_block())
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request

from mailstack import _free_ports, _port_open

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILT_DAEMON = os.path.join(REPO, "target", "release", "dovecot-oauth2d")


def fingerprint(token: str) -> str:
    """What the daemon logs instead of a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def daemon_problem() -> str | None:
    if not os.access(BUILT_DAEMON, os.X_OK):
        return f"{BUILT_DAEMON} missing: run `cargo build --release` first"
    return None


class Daemon:
    def __init__(self, workdir: str, settings: str, *, client_id: str = "dovecot", port: int | None = None,
                 binary: str = BUILT_DAEMON):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.binary = binary
        self.port = port or _free_ports(1)[0]
        self.client_id = client_id
        self.secret = secrets.token_hex(24)
        self.secret_path = os.path.join(workdir, "listen.secret")
        with open(self.secret_path, "w") as f:
            f.write(self.secret + "\n")
        os.chmod(self.secret_path, 0o600)
        self.settings_path = os.path.join(workdir, "dovecot-oauth2d.conf")
        self.log_path = os.path.join(workdir, "dovecot-oauth2d.log")
        self.write_settings(settings)
        self._proc: subprocess.Popen | None = None

    def write_settings(self, settings: str) -> None:
        """The provider part is `settings`; the listener keys are added (atomically replaced file)."""
        text = (settings.rstrip("\n") + "\n" + f"listen = 127.0.0.1:{self.port}\n"
                f"listen_client_id = {self.client_id}\nlisten_client_secret = <{self.secret_path}\n")
        tmp = self.settings_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.settings_path)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([self.binary, "-c", self.settings_path], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log, start_new_session=True, env={})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dovecot-oauth2d exited with {self._proc.returncode}:\n{self.log_since(0)}")
            if _port_open(self.port) and self.health() == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot-oauth2d not answering on {self.port}:\n{self.log_since(0)}")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        rc = self._proc.returncode
        self._proc = None
        return rc

    # ------------------------------------------------------------------ what Dovecot is given

    @property
    def introspection_url(self) -> str:
        return f"http://{self.client_id}:{self.secret}@127.0.0.1:{self.port}/introspect"

    def dovecot24_block(self, **extra: str) -> dict[str, str]:
        """The README's `oauth2 {}` block for Dovecot 2.4."""
        block = {"introspection_mode": "post", "introspection_url": self.introspection_url,
                 "username_attribute": "username", "username_validation_format": "%{user | lower}",
                 "active_attribute": "active", "active_value": "true"}
        block.update(extra)
        return {k: v for k, v in block.items() if v is not None}

    def dovecot23_args(self, **extra: str) -> str:
        """The same keys in the file of Dovecot 2.3's `passdb { driver = oauth2 }`."""
        keys = {"introspection_mode": "post", "introspection_url": self.introspection_url,
                "username_attribute": "username", "active_attribute": "active", "active_value": "true"}
        keys.update(extra)
        return "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)

    # ------------------------------------------------------------------ HTTP

    def _get(self, path: str, auth: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            cred = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
            req.add_header("Authorization", "Basic " + cred)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def health(self) -> int | None:
        try:
            return self._get("/health")[0]
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """/metrics samples: {'name{labels}': value}."""
        status, text = self._get("/metrics")
        assert status == 200, (status, text)
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    # ------------------------------------------------------------------ log

    def log_mark(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_log(self, mark: int, needle: str | re.Pattern, timeout: float = 30.0) -> str:
        """Wait (bounded) until needle appears after mark; returns the text (maybe without it)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(mark)
            found = needle.search(text) if isinstance(needle, re.Pattern) else needle in text
            if found or time.monotonic() > deadline:
                return text
            time.sleep(0.05)
