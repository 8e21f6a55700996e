"""A minimal client of Dovecot's auth-client socket protocol (the one imap-login and Postfix use), so
tests can hand Dovecot SASL responses that no IMAP or SMTP client would send."""

from __future__ import annotations

import base64
import os
import socket


class AuthClient:
    def __init__(self, path: str, timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")
        self.next_id = 1
        while True:
            line = self.f.readline()
            if not line:
                raise ConnectionError("auth server closed the connection during the handshake")
            if line.startswith(b"DONE"):
                break
        self.sock.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())

    def auth(self, mech: str, resp: bytes, service: str = "imap") -> tuple[str, dict[str, str]]:
        """One AUTH with an initial response. Returns ("OK" | "FAIL" | "CONT", fields)."""
        rid = self.next_id
        self.next_id += 1
        b64 = base64.b64encode(resp).decode()
        self.sock.sendall(f"AUTH\t{rid}\t{mech}\tservice={service}\tno-penalty\tresp={b64}\n".encode())
        while True:
            line = self.f.readline().decode(errors="replace").rstrip("\n")
            if not line:
                raise ConnectionError("auth server closed the connection")
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] == str(rid):
                break
        fields = dict(p.split("=", 1) if "=" in p else (p, "") for p in parts[2:])
        if parts[0] == "CONT":
            # A failing XOAUTH2/OAUTHBEARER first sends an error continuation; answer it to get the FAIL.
            self.sock.sendall(f"CONT\t{rid}\tAQ==\n".encode())
            while True:
                line = self.f.readline().decode(errors="replace").rstrip("\n")
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] == str(rid):
                    fields = dict(p.split("=", 1) if "=" in p else (p, "") for p in parts[2:])
                    break
        return parts[0], fields

    def close(self) -> None:
        self.sock.close()


def xoauth2(user: bytes | str, token: bytes | str) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    t = token.encode() if isinstance(token, str) else token
    return b"user=" + u + b"\x01auth=Bearer " + t + b"\x01\x01"
