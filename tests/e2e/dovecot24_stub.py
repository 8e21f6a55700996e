"""A tiny RFC 7662 introspection endpoint for the Dovecot 2.4 harness's self-test (and for experiments
with Dovecot's own oauth2 client). Not a provider: tokens are looked up in a table the test fills.

    stub = IntrospectionStub(client_id="dovecot", client_secret="s3cret").start()
    stub.replies["tok-alice"] = (200, {"active": True, "username": "alice@example.test"})
    ... oauth2 {introspection_url = stub.url ...}
    stub.stop()

Unknown tokens get 200 {"active": false}. Wrong or missing HTTP Basic credentials get 401 (no body).
Every request is recorded (method, target, headers, body) in stub.requests. Listens on 127.0.0.1 (random
port) or, with unix_path, on a unix socket (to try Dovecot's http_client_proxy_socket_path).
"""

from __future__ import annotations

import base64
import hmac
import http.server
import json
import os
import socketserver
import threading
import urllib.parse


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "introspection-stub"

    def log_message(self, *args):  # quiet
        pass

    def address_string(self):  # unix sockets have no (host, port)
        return "unix" if isinstance(self.client_address, (str, bytes)) else self.client_address[0]

    def _reply(self, status: int, body: bytes | None, ctype: str = "application/json") -> None:
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _handle(self) -> None:
        stub: IntrospectionStub = self.server.stub  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20)).decode(errors="replace") if length else ""
        rec = {"method": self.command, "target": self.path, "headers": dict(self.headers.items()),
               "body": body, "form": dict(urllib.parse.parse_qsl(body, keep_blank_values=True))}
        if "?" in self.path:
            rec["query"] = dict(urllib.parse.parse_qsl(self.path.split("?", 1)[1], keep_blank_values=True))
        auth = self.headers.get("Authorization", "")
        rec["basic"] = None
        if auth.startswith("Basic "):
            try:
                rec["basic"] = tuple(base64.b64decode(auth[6:]).decode().split(":", 1))
            except (ValueError, UnicodeDecodeError):
                rec["basic"] = ("<undecodable>",)
        with stub.lock:
            stub.requests.append(rec)
        if stub.hold is not None:
            stub.held.set()
            stub.hold.wait()
        if stub.client_id is not None:
            want = f"{stub.client_id}:{stub.client_secret}".encode()
            got = base64.b64decode(auth[6:] or "") if auth.startswith("Basic ") else b""
            if not hmac.compare_digest(want, got):
                self._reply(401, None)
                return
        token = rec["form"].get("token") or rec.get("query", {}).get("token") or ""
        if not token and auth.startswith("Bearer "):
            token = auth[7:]
        status, reply = stub.replies.get(token, (200, {"active": False}))
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self._reply(status, data)

    do_POST = _handle
    do_GET = _handle


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class IntrospectionStub:
    def __init__(self, client_id: str | None = None, client_secret: str = "", unix_path: str | None = None,
                 socket_mode: int = 0o666):
        self.client_id = client_id
        self.client_secret = client_secret
        self.unix_path = unix_path
        self.socket_mode = socket_mode
        self.replies: dict[str, tuple[int, dict | bytes]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.hold: threading.Event | None = None  # set: requests wait until hold.set() (timeouts)
        self.held = threading.Event()              # set when a request is waiting on hold
        self._server = None
        self._thread = None
        self.port = 0

    def start(self) -> "IntrospectionStub":
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            self._server = _UnixServer(self.unix_path, _Handler)
            os.chmod(self.unix_path, self.socket_mode)
        else:
            self._server = _TCPServer(("127.0.0.1", 0), _Handler)
            self.port = self._server.server_address[1]
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def url(self, path: str = "/introspect", userinfo: str | None = None, host: str | None = None) -> str:
        """http://[userinfo@]127.0.0.1:PORT/path; userinfo defaults to the stub's credentials
        (percent-encoded)."""
        if userinfo is None and self.client_id is not None:
            userinfo = (urllib.parse.quote(self.client_id, safe="") + ":"
                        + urllib.parse.quote(self.client_secret, safe=""))
        hostport = host or f"127.0.0.1:{self.port}"
        return f"http://{userinfo + '@' if userinfo else ''}{hostport}{path}"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.unix_path and os.path.exists(self.unix_path):
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
