"""Private, real Dovecot 2.3 + Postfix 3.7 stack for end-to-end tests.

Runs everything from a temporary work directory, listening on 127.0.0.1 only, and never touches
/etc/dovecot, /etc/postfix or the system instances; it runs beside a running system Dovecot or Postfix:
its own base_dir (auth sockets), state_dir, instance_name and log, free ports on 127.0.0.1, and a
Postfix with its own config_directory, queue_directory and data_directory. The Lua script, the module
and the settings file are installed into the stack's directory (see MailStack.__init__).
Must run as root (Dovecot and Postfix drop privileges themselves).

    stack = MailStack(workdir, lua_script=..., settings_file=..., module_dir=...)
    stack.start()
    try:
        r = stack.imap_login("alice@example.test", token)
        assert r.ok
    finally:
        stack.stop()

Self-check (uses tests/e2e/fake_passdb.lua):  python3 tests/e2e/mailstack.py
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import imaplib
import os
import poplib
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 15.0
MAIL_UID = 8   # Debian's "mail" user/group: an existing unprivileged system account
MAIL_GID = 8

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
DOVECONF = "/usr/bin/doveconf"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"


@dataclasses.dataclass
class Result:
    ok: bool
    tempfail: bool
    text: str
    # every server line seen during the exchange (for debugging / assertions)
    transcript: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:  # pragma: no cover - convenience
        return self.ok


# --------------------------------------------------------------------------- helpers

def xoauth2_string(user: str, token: str) -> str:
    return "user=" + user + "\x01auth=Bearer " + token + "\x01\x01"


def oauthbearer_string(user: str, token: str, port: int, host: str = HOST) -> str:
    return ("n,a=" + user + ",\x01host=" + host + "\x01port=" + str(port)
            + "\x01auth=Bearer " + token + "\x01\x01")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
            p = s.getsockname()[1]
            if p not in ports:
                ports.append(p)
    finally:
        for s in socks:
            s.close()
    return ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _others_can_traverse(path: str) -> bool:
    """True if every directory from / to path is o+x (unprivileged daemons can reach it)."""
    path = os.path.abspath(path)
    while True:
        st = os.stat(path)
        if not st.st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of a process, None if it is gone (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    # rest[0]=state, [1]=ppid, [2]=pgrp, [3]=session
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[1]), int(rest[3])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _session_pids(sid: int) -> list[int]:
    out = []
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st and st[1] == sid:
            out.append(pid)
    return out


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def mail_server_pids() -> list[tuple[int, str]]:
    """Every live dovecot/postfix process on the machine (by executable)."""
    found = []
    for pid in _all_pids():
        if _proc_stat(pid) is None:
            continue
        exe = _exe(pid)
        if (exe.startswith("/usr/lib/dovecot/") or exe == DOVECOT
                or exe.startswith("/usr/lib/postfix/")):
            found.append((pid, _cmdline(pid)))
    return found


def _b64(s: str | bytes) -> str:
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def _is_temp(text: str) -> bool:
    t = text.upper()
    return ("UNAVAILABLE" in t or "TEMPORARY" in t or "[SYS/TEMP]" in t
            or t.startswith("454") or " 454 " in t)


class _FromSource:
    """An imaplib/poplib client that connects from a chosen source address."""

    def __init__(self, host, port, timeout, source):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0) if self._source else None)


class _IMAP4(_FromSource, imaplib.IMAP4):
    pass


class _POP3(_FromSource, poplib.POP3):
    pass


# --------------------------------------------------------------------------- the stack

class LogFile:
    """Reading a log file that grows (`self.log_path`): offsets, text since one, waiting for a line."""

    log_path: str

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

    def wait_log(self, mark: int, needle: str, timeout: float = 10) -> str:
        """Wait until needle appears in the log after mark; returns the text (may lack needle)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(mark)
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)


class MailStack(LogFile):
    def __init__(self, workdir: str, *, lua_script: str, settings_file: str | None,
                 module_dir: str | None,
                 users=("alice@example.test", "bob@example.test", "dave@example.test"),
                 auth_cache: bool = False,
                 auth_worker_max_count: int | None = None,
                 passdb_mechanisms: str = "xoauth2 oauthbearer",
                 extra_dovecot_conf: str = "",
                 extra_env: dict[str, str] | None = None,
                 postfix: bool = True,
                 auth_debug: bool = False,
                 auth_verbose: bool = True,
                 passdb_args_extra: str = "",
                 dovecot_submission: bool = True,
                 random_client_ip: bool = True,
                 passdb_conf: str | None = None,
                 oauth2_passdb_file: str | None = None):
        if os.geteuid() != 0:
            raise RuntimeError("MailStack must run as root")
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.users = tuple(users)
        self.auth_cache = auth_cache
        self.auth_worker_max_count = auth_worker_max_count
        self.passdb_mechanisms = passdb_mechanisms
        self.extra_dovecot_conf = extra_dovecot_conf
        self.extra_env = dict(extra_env or {})
        self.use_postfix = postfix
        self.auth_debug = auth_debug
        self.auth_verbose = auth_verbose
        self.passdb_args_extra = passdb_args_extra
        self.use_dovecot_submission = dovecot_submission
        # Replaces the two default passdb blocks (Lua for tokens, then passwd-file for plain/login):
        # the text may use {lua_args} (file=<script> blocking=yes ...) and {passwd_file}.
        self.passdb_conf = passdb_conf
        # Dovecot's own `passdb { driver = oauth2 }` with this settings file instead of the Lua passdb
        # (for dovecot-oauth2d behind the built-in driver); lua_script is then unused.
        self.oauth2_passdb_file = os.path.abspath(oauth2_passdb_file) if oauth2_passdb_file else None
        # Dovecot's auth penalty (anvil, per remote IP, up to 15 s after repeated failures) is not
        # switched off by auth_failure_delay = 0 and Postfix never sends no-penalty: every client
        # connection therefore comes from its own random 127.x.y.z source address.
        self.random_client_ip = random_client_ip
        self.client_ip: str | None = None   # fixed source address when random_client_ip is False

        (self.imap_port, self.pop3_port, self.submission_port,
         self.dovecot_submission_port) = _free_ports(4)

        # Unix sockets: keep base_dir short (108-byte sun_path limit).
        cand = os.path.join(self.workdir, "run")
        # ... and reachable by Postfix's smtpd (user postfix) for the auth-client socket.
        if len(cand) + len("/login/imap-login-XXXX") < 100 and _others_can_traverse(self.workdir):
            os.makedirs(cand, exist_ok=True)
            self.base_dir = cand
            self._own_runtime = False
        else:
            self.base_dir = tempfile.mkdtemp(prefix="dv", dir="/tmp")
            self._own_runtime = True
        os.chmod(self.base_dir, 0o755)

        # Directories unprivileged daemons (mail uid, postfix) must reach.
        if _others_can_traverse(self.workdir):
            self.vardir = self.workdir
        else:
            self.vardir = tempfile.mkdtemp(prefix="mailstack-var-", dir="/tmp")
            os.chmod(self.vardir, 0o755)
            self._own_vardir = True
        self._own_vardir = self.vardir != self.workdir
        if self._own_runtime or self._own_vardir:
            atexit.register(self.cleanup)

        # What Dovecot reads is installed into the stack's own directory, as a real install puts it
        # under /etc/dovecot and /usr/local/lib/lua: owned by root, readable by the auth process (user
        # dovecot, which loads the script and the module), and reachable whatever the modes of the
        # directories above the checkout (a clone under /root or in a `mktemp -d` directory is 0700).
        # The settings file keeps its owner and mode (tests check how the module treats them).
        self.install_dir = os.path.join(self.vardir, "installed")
        os.makedirs(os.path.join(self.install_dir, "lib"), exist_ok=True)
        for d in (self.install_dir, os.path.join(self.install_dir, "lib")):
            os.chown(d, 0, 0)
            os.chmod(d, 0o755)
        self.lua_script = self._install(lua_script, os.path.join(self.install_dir, os.path.basename(lua_script)))
        self.settings_file = None
        if settings_file:
            self.settings_file = self._install(
                settings_file, os.path.join(self.install_dir, os.path.basename(settings_file)), keep_mode=True)
        self.module_dir = None
        if module_dir:
            self.module_dir = os.path.join(self.install_dir, "lib")
            for name in sorted(os.listdir(module_dir)):
                if name.endswith(".so"):
                    self._install(os.path.join(module_dir, name), os.path.join(self.module_dir, name))

        self.conf_path = os.path.join(self.workdir, "dovecot.conf")
        self.log_path = os.path.join(self.workdir, "dovecot.log")
        self.stdout_path = os.path.join(self.workdir, "dovecot.stdout")
        self.auth_client_socket = os.path.join(self.base_dir, "auth-client")
        self.passwd_file = os.path.join(self.vardir, "passwd")
        self.users_file = os.path.join(self.vardir, "users")
        self.mail_root = os.path.join(self.vardir, "mail")

        self.pf_config_dir = os.path.join(self.workdir, "postfix")
        self.pf_queue_dir = os.path.join(self.vardir, "postfix-spool")
        self.pf_data_dir = os.path.join(self.vardir, "postfix-data")
        self.pf_log_path = os.path.join(self.workdir, "postfix.log")

        self._dovecot: subprocess.Popen | None = None
        self._dovecot_sid: int | None = None
        self._postfix_master: int | None = None
        self.postfix_notes: list[str] = []

        self._write_dovecot_files()
        if self.use_postfix:
            self._write_postfix_files()

    # ------------------------------------------------------------------ config

    @staticmethod
    def _install(src: str, dst: str, keep_mode: bool = False) -> str:
        """Copies src to dst, root-owned 0644 (keep_mode: src's owner and mode); returns dst."""
        tmp = dst + ".tmp"
        shutil.copyfile(src, tmp)
        if keep_mode:
            st = os.stat(src)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, st.st_mode & 0o7777)
        else:
            os.chown(tmp, 0, 0)
            os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
        return dst

    def _import_environment(self) -> str:
        env = {}
        if self.module_dir:
            env["LUA_CPATH_5_4"] = self.module_dir + "/?.so;;"
        if self.settings_file:
            env["DOVECOT_OAUTH2_CONFIG"] = self.settings_file
        env.update(self.extra_env)
        for k, v in env.items():
            if any(c in v for c in " \t\n#\"") or any(c in k for c in " \t="):
                raise ValueError(f"import_environment value not representable: {k}={v!r}")
        return " ".join(["$import_environment"] + [f"{k}={v}" for k, v in env.items()])

    def _write_dovecot_files(self) -> None:
        os.makedirs(self.mail_root, exist_ok=True)
        os.chown(self.mail_root, MAIL_UID, MAIL_GID)
        os.chmod(self.mail_root, 0o755)
        with open(self.passwd_file, "w") as f:
            for u in self.users + ("carol@example.test",):
                local = u.split("@", 1)[0]
                f.write(f"{u}:{{PLAIN}}{local}-mailpw::::::\n")
        os.chmod(self.passwd_file, 0o644)
        with open(self.users_file, "w") as f:
            for u in self.users:
                f.write(f"{u}::{MAIL_UID}:{MAIL_GID}::{self.mail_root}/{u}::\n")
        os.chmod(self.users_file, 0o644)

        cache = ""
        if self.auth_cache:
            cache = ("auth_cache_size = 10M\nauth_cache_ttl = 1 hour\n"
                     "auth_cache_negative_ttl = 1 hour\n")
        workers = ""
        if self.auth_worker_max_count is not None:
            workers = f"auth_worker_max_count = {self.auth_worker_max_count}\n"
        lua_args = f"file={self.lua_script} blocking=yes"
        if self.passdb_args_extra:
            lua_args += " " + self.passdb_args_extra
        inst = "mailstack-" + os.path.basename(self.base_dir.rstrip("/")) + str(self.imap_port)

        conf = f"""# generated by tests/e2e/mailstack.py -- standalone, does not include /etc/dovecot
instance_name = {inst}
base_dir = {self.base_dir}
state_dir = {self.base_dir}/state
protocols = imap pop3{" submission" if self.use_dovecot_submission else ""}
listen = {HOST}
hostname = mail.example.test
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
auth_verbose = {"yes" if self.auth_verbose else "no"}
auth_debug = {"yes" if self.auth_debug else "no"}
{cache}{workers}first_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_GID}
mail_location = maildir:~/Maildir
import_environment = {self._import_environment()}

{self._passdb_conf(lua_args)}userdb {{
  driver = passwd-file
  args = {self.users_file}
}}

service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
{self._dovecot_submission_conf()}{self.extra_dovecot_conf}
"""
        with open(self.conf_path, "w") as f:
            f.write(conf)
        os.makedirs(os.path.join(self.base_dir, "state"), exist_ok=True)

    def _passdb_conf(self, lua_args: str) -> str:
        if self.passdb_conf is not None:
            return self.passdb_conf.format(lua_args=lua_args, passwd_file=self.passwd_file)
        if self.oauth2_passdb_file:
            driver, args = "oauth2", self.oauth2_passdb_file
        else:
            driver, args = "lua", lua_args
        return f"""passdb {{
  driver = {driver}
  mechanisms = {self.passdb_mechanisms}
  args = {args}
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN {self.passwd_file}
}}
"""

    def _dovecot_submission_conf(self) -> str:
        if not self.use_dovecot_submission:
            return ""
        # relays to the private Postfix (only needed after login; nothing is sent)
        relay_port = self.submission_port if self.use_postfix else 9
        return f"""submission_relay_host = {HOST}
submission_relay_port = {relay_port}
submission_relay_trusted = no
service submission-login {{
  inet_listener submission {{
    address = {HOST}
    port = {self.dovecot_submission_port}
  }}
  inet_listener submissions {{
    port = 0
  }}
}}
"""

    def doveconf_check(self) -> str:
        """Run doveconf -n on the generated file; raises on errors, returns its stderr."""
        p = subprocess.run([DOVECONF, "-c", self.conf_path, "-n"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"doveconf failed ({p.returncode}): {p.stderr}")
        return p.stderr

    def _write_postfix_files(self) -> None:
        os.makedirs(self.pf_config_dir, exist_ok=True)
        for d in (self.pf_queue_dir, self.pf_data_dir):
            os.makedirs(d, exist_ok=True)
        os.chown(self.pf_queue_dir, 0, 0)
        os.chmod(self.pf_queue_dir, 0o755)
        os.chown(self.pf_data_dir, 102 if _uid("postfix") is None else _uid("postfix"), 0)
        os.chmod(self.pf_data_dir, 0o700)
        main_cf = f"""# generated by tests/e2e/mailstack.py
compatibility_level = 3.6
config_directory = {self.pf_config_dir}
queue_directory = {self.pf_queue_dir}
data_directory = {self.pf_data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.example.test
mydomain = example.test
myorigin = example.test
mydestination =
relayhost =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
maillog_file = {self.pf_log_path}
maillog_file_prefixes = {self.workdir}
smtpd_banner = $myhostname ESMTP mailstack
smtpd_tls_security_level = none
smtpd_tls_auth_only = no
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.auth_client_socket}
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated reject
smtpd_recipient_restrictions =
line_length_limit = 262144
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_auth_rate_limit = 0
smtpd_hard_error_limit = 1000
smtpd_soft_error_limit = 1000
smtpd_error_sleep_time = 0
default_process_limit = 50
"""
        master_cf = f"""# generated by tests/e2e/mailstack.py -- no port 25, submission only
{HOST}:{self.submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
        with open(os.path.join(self.pf_config_dir, "main.cf"), "w") as f:
            f.write(main_cf)
        with open(os.path.join(self.pf_config_dir, "master.cf"), "w") as f:
            f.write(master_cf)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.doveconf_check()
        with open(self.stdout_path, "ab") as out:
            self._dovecot = subprocess.Popen(
                [DOVECOT, "-F", "-c", self.conf_path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        self._dovecot_sid = self._dovecot.pid
        try:
            if self.use_postfix:
                self._start_postfix()
            self._wait_ports()
        except BaseException:
            self.stop()
            raise

    def _postfix_env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": self.pf_config_dir}

    def _postfix_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([POSTFIX, "-c", self.pf_config_dir, *args], capture_output=True,
                           text=True, timeout=60, env=self._postfix_env())
        if check and p.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed ({p.returncode}):\n"
                               f"{p.stdout}{p.stderr}")
        return p

    def _start_postfix(self) -> None:
        # `postfix start` creates the missing queue subdirectories with their owners (post-install
        # create-missing). Not `postfix set-permissions`: it also sets the modes of the machine's own
        # Postfix files (/usr/sbin/postdrop, /etc/postfix/postfix-files, ...).
        p = self._postfix_cmd("check", check=False)
        if p.stdout.strip() or p.stderr.strip():
            self.postfix_notes.append("check: " + (p.stdout + p.stderr).strip())
        self._postfix_cmd("start")
        pidfile = os.path.join(self.pf_queue_dir, "pid", "master.pid")
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with open(pidfile) as f:
                    self._postfix_master = int(f.read().split()[0])
                if _proc_stat(self._postfix_master):
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.1)
        raise RuntimeError("postfix master.pid did not appear")

    def _wait_ports(self, timeout: float = 20.0) -> None:
        ports = {"imap": self.imap_port, "pop3": self.pop3_port}
        if self.use_postfix:
            ports["submission"] = self.submission_port
        if self.use_dovecot_submission:
            ports["dovecot-submission"] = self.dovecot_submission_port
        deadline = time.time() + timeout
        pending = dict(ports)
        while pending and time.time() < deadline:
            if self._dovecot is not None and self._dovecot.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._dovecot.returncode}: "
                                   + self._tail(self.stdout_path) + self._tail(self.log_path))
            for name, port in list(pending.items()):
                if _port_open(port):
                    del pending[name]
            if pending:
                time.sleep(0.1)
        if pending:
            raise RuntimeError(f"ports not listening after {timeout}s: {pending}\n"
                               + self._tail(self.log_path) + self._tail(self.pf_log_path))
        # the auth-client socket must exist for postfix
        deadline = time.time() + timeout
        while not os.path.exists(self.auth_client_socket) and time.time() < deadline:
            time.sleep(0.1)

    @staticmethod
    def _tail(path: str, n: int = 4000) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - n))
                return f"\n--- {path} ---\n" + f.read().decode(errors="replace")
        except OSError:
            return ""

    def stack_pids(self) -> dict[str, list[int]]:
        """Processes belonging to this stack (by session: dovecot -F runs in its own session,
        the postfix master calls setsid())."""
        out = {"dovecot": [], "postfix": []}
        if self._dovecot_sid:
            out["dovecot"] = _session_pids(self._dovecot_sid)
        if self._postfix_master:
            out["postfix"] = _session_pids(self._postfix_master)
        # belt and braces: postfix children carry MAIL_CONFIG=<our dir> in their environment
        if self.use_postfix:
            needle = ("MAIL_CONFIG=" + self.pf_config_dir).encode()
            for pid in _all_pids():
                if pid in out["postfix"] or not _exe(pid).startswith("/usr/lib/postfix/"):
                    continue
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if needle in f.read().split(b"\0"):
                            out["postfix"].append(pid)
                except OSError:
                    pass
        return out

    def stop(self, timeout: float = 20.0) -> None:
        # postfix first (it talks to dovecot's auth socket)
        if self.use_postfix and self._postfix_master:
            self._postfix_cmd("stop", check=False)
        if self._dovecot is not None and self._dovecot.poll() is None:
            try:
                self._dovecot.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._dovecot is not None:
                self._dovecot.poll()
            left = self.stack_pids()
            if not left["dovecot"] and not left["postfix"] and \
                    (self._dovecot is None or self._dovecot.returncode is not None):
                break
            time.sleep(0.1)
        else:
            left = self.stack_pids()
            print(f"mailstack: still running {timeout}s after stop, SIGKILL: "
                  f"{[(p, _cmdline(p)) for p in left['dovecot'] + left['postfix']]}",
                  file=sys.stderr)
            for pid in left["dovecot"] + left["postfix"]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self._dovecot is not None:
                try:
                    self._dovecot.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            deadline = time.time() + 10
            while time.time() < deadline:
                left = self.stack_pids()
                if not left["dovecot"] and not left["postfix"]:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"processes left after stop: {left}")

    def reload(self) -> None:
        subprocess.run([DOVEADM, "-c", self.conf_path, "reload"], check=True,
                       capture_output=True, timeout=30)

    def cleanup(self) -> None:
        """Remove the out-of-workdir helper directories (call after stop(); also run at exit)."""
        if self.stack_pids()["dovecot"] or self.stack_pids()["postfix"]:
            return
        if self._own_runtime:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._own_vardir:
            shutil.rmtree(self.vardir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ logs / processes

    def wait_log(self, mark: int, needle: str, timeout: float = 5.0) -> str:
        return LogFile.wait_log(self, mark, needle, timeout)

    def auth_worker_pids(self) -> list[int]:
        out = []
        for pid in self.stack_pids()["dovecot"]:
            # title is "<instance>/auth -w" (or "/auth worker: ..." with verbose_proctitle)
            cmd = _cmdline(pid)
            if "/auth " in cmd and ("worker" in cmd or cmd.endswith(" -w") or " -w " in cmd):
                out.append(pid)
        return sorted(out)

    def process_table(self) -> list[tuple[int, str]]:
        p = self.stack_pids()
        return [(pid, _cmdline(pid)) for pid in sorted(p["dovecot"] + p["postfix"])]

    # ------------------------------------------------------------------ clients

    def source_ip(self) -> str | None:
        """Source address for the next client connection."""
        if self.client_ip:
            return self.client_ip
        if not self.random_client_ip:
            return None
        r = random.SystemRandom()
        return f"127.{r.randint(1, 254)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def _sasl(self, mech: str, user: str, token: str, port: int) -> str:
        mech = mech.upper()
        if mech == "XOAUTH2":
            return xoauth2_string(user, token)
        if mech == "OAUTHBEARER":
            return oauthbearer_string(user, token, port)
        if mech == "PLAIN":  # token is the password here
            return "\0" + user + "\0" + token
        raise ValueError(mech)

    def imap_login(self, user: str, token: str, mech: str = "OAUTHBEARER") -> Result:
        return self._imap_auth(mech.upper(), self._sasl(mech, user, token, self.imap_port))

    def imap_plain_login(self, user: str, password: str) -> Result:
        return self._imap_auth("PLAIN", "\0" + user + "\0" + password)

    def imap_login_command(self, user: str, password: str) -> Result:
        """IMAP's own LOGIN command (what most mail clients send for a password), then SELECT INBOX."""
        try:
            imap = _IMAP4(HOST, self.imap_port, CLIENT_TIMEOUT, self.source_ip())
        except OSError as e:
            return Result(False, False, f"connect failed: {e}")
        try:
            try:
                typ, data = imap.login(user, password)
            except imaplib.IMAP4.error as e:
                return Result(False, _is_temp(str(e)), str(e), [str(e)])
            text = f"{typ} " + b" ".join(d for d in data if d).decode(errors="replace")
            styp, sdata = imap.select("INBOX")
            if styp != "OK":
                return Result(False, False, f"SELECT {styp} {sdata}", [text])
            imap.logout()
            return Result(True, False, text, [text])
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError) as e:
            text = f"connection error: {e!r}"
            return Result(False, _is_temp(text), text, [text])
        finally:
            try:
                imap.shutdown()
            except Exception:
                pass

    def _imap_auth(self, mech: str, sasl: str) -> Result:
        transcript: list[str] = []
        calls = {"n": 0}

        def authobject(challenge: bytes) -> bytes:
            calls["n"] += 1
            if challenge:
                transcript.append("+ " + challenge.decode(errors="replace"))
            if calls["n"] == 1 and not challenge:
                return sasl.encode()
            # error continuation ({"status":"invalid_token",...}): answer with ^A
            return b"\x01"

        try:
            imap = _IMAP4(HOST, self.imap_port, CLIENT_TIMEOUT, self.source_ip())
        except OSError as e:
            return Result(False, False, f"connect failed: {e}", transcript)
        try:
            try:
                typ, data = imap.authenticate(mech, authobject)
            except imaplib.IMAP4.error as e:
                text = str(e)
                transcript.append(text)
                return Result(False, _is_temp(text), text, transcript)
            text = f"{typ} " + b" ".join(d for d in data if d).decode(errors="replace")
            transcript.append(text)
            if typ != "OK":
                return Result(False, _is_temp(text), text, transcript)
            # prove the userdb/mail side works
            try:
                styp, sdata = imap.select("INBOX")
            except imaplib.IMAP4.error as e:
                text = f"SELECT failed: {e}"
                transcript.append(text)
                return Result(False, _is_temp(text), text, transcript)
            transcript.append(f"SELECT {styp} {sdata}")
            if styp != "OK":
                return Result(False, False, f"SELECT {styp} {sdata}", transcript)
            try:
                imap.logout()
            except (imaplib.IMAP4.error, OSError):
                pass
            return Result(True, False, text, transcript)
        except (OSError, imaplib.IMAP4.abort, EOFError) as e:
            text = f"connection error: {e!r}"
            transcript.append(text)
            return Result(False, _is_temp(text), text, transcript)
        finally:
            try:
                imap.shutdown()
            except Exception:
                pass

    def pop3_login(self, user: str, token: str, mech: str = "OAUTHBEARER") -> Result:
        sasl = self._sasl(mech, user, token, self.pop3_port)
        transcript: list[str] = []
        try:
            pop = _POP3(HOST, self.pop3_port, CLIENT_TIMEOUT, self.source_ip())
        except OSError as e:
            return Result(False, False, f"connect failed: {e}", transcript)
        try:
            transcript.append(pop.getwelcome().decode(errors="replace"))
            pop._putcmd(f"AUTH {mech.upper()} {_b64(sasl)}")
            line = pop._getline()[0].decode(errors="replace")
            transcript.append(line)
            rounds = 0
            while line.startswith("+") and not line.startswith("+OK") and rounds < 3:
                rounds += 1
                pop._putcmd("AQ==")  # "\x01": abort after the error status
                line = pop._getline()[0].decode(errors="replace")
                transcript.append(line)
            if not line.startswith("+OK"):
                return Result(False, _is_temp(line), line, transcript)
            try:
                st = pop.stat()
                transcript.append(f"STAT {st}")
                pop.quit()
            except (poplib.error_proto, OSError) as e:
                text = f"after login: {e}"
                transcript.append(text)
                return Result(False, _is_temp(text), text, transcript)
            return Result(True, False, line, transcript)
        except (OSError, poplib.error_proto, EOFError) as e:
            text = f"connection error: {e!r}"
            transcript.append(text)
            return Result(False, _is_temp(text), text, transcript)
        finally:
            try:
                pop.close()
            except Exception:
                pass

    def smtp_login(self, user: str, token: str, mech: str = "OAUTHBEARER",
                   server: str = "postfix", initial_response: bool | None = None,
                   starttls: bool = False) -> Result:
        """EHLO + AUTH against Postfix's submission (server="postfix", the default) or against
        Dovecot's own submission service (server="dovecot").

        initial_response: send the SASL string on the AUTH line (RFC 4954 initial response) or
        after an empty "334" challenge.  None = auto: always for Postfix (line_length_limit is
        raised), for Dovecot only when the AUTH line stays short (its submission rejects long
        command lines with "500 5.5.2 Line too long").
        starttls: switch to TLS (certificate not checked) before AUTH."""
        if server == "postfix":
            if not self.use_postfix:
                raise RuntimeError("stack started without postfix")
            port = self.submission_port
        elif server == "dovecot":
            if not self.use_dovecot_submission:
                raise RuntimeError("stack started without dovecot submission")
            port = self.dovecot_submission_port
        else:
            raise ValueError(server)
        sasl = self._sasl(mech, user, token, port)
        transcript: list[str] = []
        src = self.source_ip()
        try:
            smtp = smtplib.SMTP(HOST, port, timeout=CLIENT_TIMEOUT,
                                source_address=(src, 0) if src else None)
        except OSError as e:
            return Result(False, False, f"connect failed: {e}", transcript)
        try:
            code, msg = smtp.ehlo("client.example.test")
            transcript.append(f"{code} {msg.decode(errors='replace')}")
            if starttls:  # e.g. docker-mailserver's submission (smtpd_tls_security_level=encrypt)
                import ssl
                code, msg = smtp.starttls(context=ssl._create_unverified_context())
                transcript.append(f"{code} {msg.decode(errors='replace')}")
                code, msg = smtp.ehlo("client.example.test")
                transcript.append(f"{code} {msg.decode(errors='replace')}")
            b64 = _b64(sasl)
            if initial_response is None:
                initial_response = server == "postfix" or len(b64) <= 400
            if initial_response:
                code, msg = smtp.docmd("AUTH", f"{mech.upper()} {b64}")
            else:
                code, msg = smtp.docmd("AUTH", mech.upper())
                transcript.append(f"{code} {msg.decode(errors='replace')}")
                if code == 334:
                    code, msg = smtp.docmd(b64)
            text = f"{code} {msg.decode(errors='replace')}"
            transcript.append(text)
            rounds = 0
            while code == 334 and rounds < 3:
                rounds += 1
                code, msg = smtp.docmd("AQ==")
                text = f"{code} {msg.decode(errors='replace')}"
                transcript.append(text)
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            # 454 = temporary auth failure; Dovecot's submission answers 451 for an internal
            # error (e.g. passdb ok but user not in userdb)
            return Result(code == 235, 400 <= code < 500, text, transcript)
        except (OSError, smtplib.SMTPException) as e:
            text = f"connection error: {e!r}"
            transcript.append(text)
            return Result(False, _is_temp(text), text, transcript)
        finally:
            try:
                smtp.close()
            except Exception:
                pass

    def imap_login_curl(self, user: str, token: str) -> Result:
        """curl 7.88 IMAP login with --oauth2-bearer (always OAUTHBEARER on this curl)."""
        cmd = ["curl", "-sS", "-v", "--max-time", str(int(CLIENT_TIMEOUT)),
               "--login-options", "AUTH=OAUTHBEARER", "--oauth2-bearer", token,
               "--user", user + ":", f"imap://{HOST}:{self.imap_port}/"]
        src = self.source_ip()
        if src:
            cmd[1:1] = ["--interface", src]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=CLIENT_TIMEOUT + 5, errors="replace")
        except subprocess.TimeoutExpired:
            return Result(False, False, "curl timed out")
        server = [ln[2:] for ln in p.stderr.splitlines() if ln.startswith("< ")]
        # the server's reply to curl's AUTHENTICATE command (tag A001/A002...)
        final = ""
        for ln in server:
            parts = ln.split(" ", 2)
            if len(parts) >= 2 and parts[0] not in ("*", "+") and parts[1] in ("OK", "NO", "BAD"):
                final = ln
                if parts[1] != "OK":
                    break
        if not final:
            final = (server[-1] if server else "") or p.stderr.strip().splitlines()[-1:][0] \
                if p.stderr.strip() else f"curl exit {p.returncode}"
        text = f"{final} (curl exit {p.returncode})"
        return Result(p.returncode == 0, _is_temp(final), text, server + [p.stdout])


def _uid(name: str) -> int | None:
    import pwd
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


# --------------------------------------------------------------------------- self-check

def _selfcheck() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "fake_passdb.lua")
    failures = 0

    def check(name: str, cond: bool, r: Result | str = "") -> None:
        nonlocal failures
        status = "PASS" if cond else "FAIL"
        if not cond:
            failures += 1
        detail = r.text if isinstance(r, Result) else r
        if isinstance(r, Result):
            detail = f"ok={r.ok} tempfail={r.tempfail} :: {r.text}"
        print(f"[{status}] {name}: {detail}", flush=True)

    before = mail_server_pids()
    if before:
        print(f"note: mail server processes already running before start: {before}")

    tmp = tempfile.mkdtemp(prefix="mailstack-selfcheck-")
    stack = MailStack(tmp, lua_script=script, settings_file=None, module_dir=None,
                      auth_worker_max_count=4)
    print(f"workdir={tmp} base_dir={stack.base_dir} imap={stack.imap_port} "
          f"pop3={stack.pop3_port} submission={stack.submission_port}")
    t0 = time.time()
    stack.start()
    print(f"started in {time.time() - t0:.2f}s; processes:")
    for pid, cmd in stack.process_table():
        print(f"   {pid} {cmd}")
    if stack.postfix_notes:
        print("postfix notes:", *stack.postfix_notes, sep="\n   ")
    try:
        a, c = "alice@example.test", "carol@example.test"

        def logged(fn, *args):
            m = stack.log_mark()
            r = fn(*args)
            time.sleep(0.2)
            return r, stack.log_since(m)

        cases = [
            ("IMAP OAUTHBEARER good", lambda: stack.imap_login(a, "good-token"), "ok"),
            ("IMAP XOAUTH2 good", lambda: stack.imap_login(a, "good-token", "XOAUTH2"), "ok"),
            ("IMAP OAUTHBEARER bad", lambda: stack.imap_login(a, "bad-token"), "no"),
            ("IMAP XOAUTH2 bad", lambda: stack.imap_login(a, "bad-token", "XOAUTH2"), "no"),
            ("IMAP OAUTHBEARER temp", lambda: stack.imap_login(a, "temp-token"), "temp"),
            ("IMAP XOAUTH2 temp", lambda: stack.imap_login(a, "temp-token", "XOAUTH2"), "temp"),
            ("POP3 OAUTHBEARER good", lambda: stack.pop3_login(a, "good-token"), "ok"),
            ("POP3 XOAUTH2 good", lambda: stack.pop3_login(a, "good-token", "XOAUTH2"), "ok"),
            ("POP3 OAUTHBEARER bad", lambda: stack.pop3_login(a, "bad-token"), "no"),
            ("POP3 OAUTHBEARER temp", lambda: stack.pop3_login(a, "temp-token"), "temp"),
            ("SMTP OAUTHBEARER good", lambda: stack.smtp_login(a, "good-token"), "ok"),
            ("SMTP XOAUTH2 good", lambda: stack.smtp_login(a, "good-token", "XOAUTH2"), "ok"),
            ("SMTP OAUTHBEARER bad", lambda: stack.smtp_login(a, "bad-token"), "no"),
            ("SMTP XOAUTH2 bad", lambda: stack.smtp_login(a, "bad-token", "XOAUTH2"), "no"),
            # Postfix 3.7's dovecot SASL client turns every FAIL (also code=temp_fail) into 535
            ("SMTP OAUTHBEARER temp (Postfix: 535, not 454)",
             lambda: stack.smtp_login(a, "temp-token"), "no"),
            ("SMTP XOAUTH2 temp (Postfix: 535, not 454)",
             lambda: stack.smtp_login(a, "temp-token", "XOAUTH2"), "no"),
            ("Dovecot-submission OAUTHBEARER good",
             lambda: stack.smtp_login(a, "good-token", server="dovecot"), "ok"),
            ("Dovecot-submission XOAUTH2 good",
             lambda: stack.smtp_login(a, "good-token", "XOAUTH2", server="dovecot"), "ok"),
            ("Dovecot-submission OAUTHBEARER bad",
             lambda: stack.smtp_login(a, "bad-token", server="dovecot"), "no"),
            ("Dovecot-submission OAUTHBEARER temp",
             lambda: stack.smtp_login(a, "temp-token", server="dovecot"), "temp"),
            ("Dovecot-submission XOAUTH2 temp",
             lambda: stack.smtp_login(a, "temp-token", "XOAUTH2", server="dovecot"), "temp"),
            ("curl IMAP good", lambda: stack.imap_login_curl(a, "good-token"), "ok"),
            ("curl IMAP bad", lambda: stack.imap_login_curl(a, "bad-token"), "no"),
            ("IMAP PLAIN passwd-file", lambda: stack.imap_plain_login(a, "alice-mailpw"), "ok"),
            ("IMAP PLAIN wrong password", lambda: stack.imap_plain_login(a, "nope"), "no"),
            ("IMAP PLAIN with token (lua passdb not used for plain)",
             lambda: stack.imap_plain_login(a, "good-token"), "no"),
            # passdb OK + userdb "user not found" = internal error -> [UNAVAILABLE] / [SYS/TEMP]
            ("IMAP carol (no mail account) good-token",
             lambda: stack.imap_login(c, "good-token"), "fail"),
            ("POP3 carol (no mail account) good-token",
             lambda: stack.pop3_login(c, "good-token"), "fail"),
            ("Dovecot-submission carol (no mail account) good-token",
             lambda: stack.smtp_login(c, "good-token", server="dovecot"), "fail"),
            ("SMTP carol (no mail account) good-token [info]",
             lambda: stack.smtp_login(c, "good-token"), "info"),
            ("IMAP 8 KB token (rejected, must not hang)",
             lambda: stack.imap_login(a, "x" * 8192), "no"),
            ("SMTP 8 KB token (rejected, must not hang)",
             lambda: stack.smtp_login(a, "x" * 8192), "no"),
        ]
        for name, fn, want in cases:
            r, log = logged(fn)
            if want == "ok":
                cond = r.ok and not r.tempfail
            elif want == "no":
                cond = not r.ok and not r.tempfail
            elif want == "temp":
                cond = not r.ok and r.tempfail
            elif want == "fail":
                cond = not r.ok
            else:
                cond = True
            check(name, cond, r)
            conts = [t for t in r.transcript if t.startswith("+ ") or t.startswith("334 ")]
            if conts:
                print(f"      server continuation: {conts[0][:200]}")
            for ln in log.strip().splitlines():
                print(f"      log| {ln[:300]}")
        print("processes:")
        for pid, cmd in stack.process_table():
            print(f"   {pid} {cmd}")
        workers = stack.auth_worker_pids()
        check("auth_worker_pids() non-empty", bool(workers), str(workers))
        m = stack.log_mark()
        stack.reload()
        time.sleep(1.0)
        check("reload", stack.imap_login(a, "good-token").ok, stack.log_since(m).strip()[:300])
    finally:
        stack.stop()
    left = stack.stack_pids()
    check("no process of this stack left after stop()",
          not left["dovecot"] and not left["postfix"], str(left))
    # Other instances (a system Dovecot, other stacks) may run beside this one: only noted.
    others = mail_server_pids()
    if others:
        print(f"note: other mail server processes on the machine: {others}")
    stack.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'ALL PASSED' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_selfcheck())
