"""Driver for the real dovecot-oauth2d binary (target/release/dovecot-oauth2d) in tests.

    d = Daemon(workdir, settings_text, client=("dovecot-d", "SECRET")).start()
    r = d.introspect(token)          # Reply(status, headers, body, json)
    d.sighup(); d.stop() -> exit code

It listens on 127.0.0.1 with a port the kernel picks (`listen = 127.0.0.1:0`); the port is read from
the startup line. Its standard error goes to WORKDIR/daemon.log. Python 3.11 standard library only.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse

from mailstack import LogFile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BINARY = os.path.join(ROOT, "target", "release", "dovecot-oauth2d")

STARTED = re.compile(r"dovecot-oauth2d: info: listening on (?:127\.0\.0\.1:(\d+)|unix:\S+)"
                     r"(?:.*?metrics on (?:127\.0\.0\.1:(\d+)|unix:\S+))?")


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, as Dovecot 2.4 sends it with http_client_proxy_socket_path."""

    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Daemon(LogFile):
    def __init__(self, workdir: str, settings: str, client: tuple[str, str], binary: str = BINARY):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.client = client
        self.binary = binary
        self.settings_path = os.path.join(self.workdir, "dovecot-oauth2d.conf")
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self.write_settings(settings)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    # ------------------------------------------------------------ process
    def write_settings(self, text: str) -> None:
        """Writes the settings file atomically (as an admin's editor or a config tool should)."""
        tmp = self.settings_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.settings_path)

    def start(self, timeout: float = 20) -> "Daemon":
        if not os.path.exists(self.binary):
            raise RuntimeError(f"{self.binary} missing: run `cargo build --release` first")
        mark = self.log_mark()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", self.settings_path], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = STARTED.search(self.log_since(mark))
            if m:
                self.port = int(m.group(1)) if m.group(1) else None
                self.metrics_port = int(m.group(2)) if m.group(2) else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot-oauth2d exited with {self.proc.returncode}:\n{self.log_since(mark)}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"dovecot-oauth2d did not start within {timeout} s:\n{self.log_since(mark)}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def sighup(self, wait_for: str = "reload", timeout: float = 10) -> str:
        """Sends SIGHUP and returns the log text up to the reload's result line."""
        mark = self.log_mark()
        self.signal(signal.SIGHUP)
        return self.wait_log(mark, wait_for, timeout)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._log.close()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------ log: LogFile's log_mark, log_since, wait_log

    # ------------------------------------------------------------ http
    @property
    def introspection_url(self) -> str:
        user, secret = (urllib.parse.quote(x, safe="") for x in self.client)
        return f"http://{user}:{secret}@127.0.0.1:{self.port}/introspect"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None | bool = True, port: int | None = None, timeout: float = 30) -> Reply:
        """One request on its own connection. auth=True sends the daemon's credentials, a pair others,
        None/False none."""
        h = dict(headers or {})
        if auth is True:
            h["Authorization"] = basic(*self.client)
        elif auth:
            h["Authorization"] = basic(*auth)
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def introspect(self, token: str, auth: tuple[str, str] | None | bool = True, extra: str = "") -> Reply:
        body = "token=" + urllib.parse.quote(token, safe="") + extra
        return self.request("POST", "/introspect", body.encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"}, auth=auth)

    def metrics(self) -> dict[str, float]:
        """The samples of GET /metrics by series (name and labels as written)."""
        r = self.request("GET", "/metrics", port=self.metrics_port or self.port)
        assert r.status == 200, r
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                out[series] = float(value)
        return out
