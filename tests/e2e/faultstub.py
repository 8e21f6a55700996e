"""A provider that misbehaves on purpose, for faults a real OpenID provider won't produce: slow replies,
5xx, 429, redirects, resets, garbage, huge or endless bodies, hostile claim values. Between faults it
answers userinfo like a provider would (Bearer token -> {"email": ...}; an unknown token -> 401), so
recovery can be observed. A fault can be set for everyone (`set`), for one token (`per_token`) or for
the tokens it does not know (`unknown`), so one client's tokens can misbehave while others' work.
Loopback only."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultStub:
    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {})  # token -> email
        self.fault: str = "ok"
        self.arg = 0
        self.per_token: dict[str, tuple[str, object]] = {}  # token -> (fault, arg), before `fault`
        self.unknown: tuple[str, object] = ("status", 401)  # what a token not in `tokens` gets
        self.requests = 0
        self.requests_by_token: dict[str, int] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                with stub._lock:
                    stub.requests += 1
                    stub.requests_by_token[token] = stub.requests_by_token.get(token, 0) + 1
                stub._answer(self, token)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/userinfo"

    def start(self) -> "FaultStub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set(self, fault: str, arg: object = 0) -> None:
        self.fault, self.arg = fault, arg

    def _answer(self, h: BaseHTTPRequestHandler, token: str) -> None:
        fault, arg = self.per_token.get(token, (self.fault, self.arg))
        if fault == "slow":
            time.sleep(arg)
            fault = "ok"
        if fault == "ok":
            email = self.tokens.get(token)
            if email is None:
                fault, arg = self.unknown
                if fault == "status" and arg == 401:
                    return self._send(h, 401, b'{"error":"invalid_token"}')
                return self._answer_fault(h, fault, arg)
            return self._send(h, 200, json.dumps({"email": email, "sub": email}).encode())
        return self._answer_fault(h, fault, arg)

    def _answer_fault(self, h: BaseHTTPRequestHandler, fault: str, arg: object) -> None:
        if fault == "claims":
            # A 200 reply with these claims (a dict), as a hostile or broken provider may send.
            return self._send(h, 200, json.dumps(arg).encode())
        if fault == "status":
            return self._send(h, int(arg), b'{"error":"server_error"}')
        if fault == "redirect":
            return self._send(h, 302, b"", {"Location": f"http://127.0.0.1:{self.port}/elsewhere"})
        if fault == "garbage":
            return self._send(h, 200, b"<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"})
        if fault == "huge":
            return self._send(h, 200, b'{"email":"' + b"x" * int(arg) + b'"}')
        if fault == "endless":
            # A chunked body, no length announced, that trickles in forever (until the client gives up).
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            try:
                while True:
                    h.wfile.write(b"1\r\n \r\n")
                    h.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                return
        if fault == "reset":
            # RST instead of FIN: SO_LINGER with a zero timeout, then close.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        raise ValueError(fault)

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass
