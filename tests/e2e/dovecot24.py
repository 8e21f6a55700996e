"""Private, real Dovecot 2.4.1 (Debian 13's packages, in the chroot tests/trixie.sh makes) + the host's
Postfix 3.7 for end-to-end tests.

Dovecot runs as `chroot CHROOT /usr/sbin/dovecot -F` inside a private mount namespace (`unshare -m`): /dev
and /proc are mounted only there, so nothing appears in the host's mount table and nothing is left mounted
after a crash (the namespace dies with its last process). Its configuration, state, log and mail live in a
private directory inside the chroot (CHROOT/run/o2test-XXXXXXXX/, seen by Dovecot as /run/o2test-XXXXXXXX/).
Listeners are on 127.0.0.1, random ports. The host's Postfix (a private instance, configured by
mailstack.MailStack's own code) does SMTP submission with `smtpd_sasl_type = dovecot` against Dovecot 2.4's
auth service over an inet listener. Never touches /etc/dovecot, /etc/postfix or the system instances. Root.

    stack = Dovecot24Stack(oauth2={"introspection_mode": "post", "introspection_url": url,
                                   "username_attribute": "username", "active_attribute": "active",
                                   "active_value": "true"})
    stack.start()
    try:
        r = stack.imap_login("alice@example.test", token, "XOAUTH2")
        assert r.ok, r.transcript
    finally:
        stack.stop()

The client helpers (imap_login, imap_plain_login, pop3_login, smtp_login, imap_login_curl, all returning
mailstack.Result) and the Postfix set-up are inherited from mailstack.MailStack unchanged.
"""

from __future__ import annotations

import atexit
import socket
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

from mailstack import (  # noqa: F401  (re-exported for tests: one import place)
    HOST,
    MAIL_GID,
    MAIL_UID,
    POSTCONF,
    MailStack,
    Result,
    _free_ports,
    _port_open,
    _proc_stat,
    oauthbearer_string,
    xoauth2_string,
)

DEFAULT_CHROOT = "/var/cache/dovecot-oauth2-tests/trixie"
STAMP = ".dovecot-oauth2-tests-ready"  # written last by tests/trixie.sh
PRIVATE_PREFIX = "o2test-"
# Lua 5.4's default cpath starts here, inside the chroot too (Debian 13's dovecot-auth-lua uses Lua 5.4).
SYSTEM_LUA_CPATH_DIR = "/usr/local/lib/lua/5.4"

# A crash: "child N killed with signal 11/6/7...", a fatal or panic line, a Rust panic. Not a crash: signal
# 15 (the master stopping processes on reload/stop). Same rule as conftest.CRASH.
CRASH = re.compile(r"Fatal|Panic|killed with signal (?!15\b)\d+|segfault|panicked", re.I)

# Runs "$@" (after the root) chrooted, with /dev and /proc mounted in this private mount namespace only.
_ENTER = r"""
set -e
root=$1; shift
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
exec chroot "$root" "$@"
"""


def chroot_dir() -> str:
    return os.path.abspath(os.environ.get("DOVECOT24_CHROOT") or DEFAULT_CHROOT)


def chroot_problem(root: str | None = None) -> str | None:
    """Why the chroot cannot be used (None when it can): for pytest skip/fail messages."""
    root = root or chroot_dir()
    if not os.path.isfile(os.path.join(root, STAMP)):
        return f"no finished Dovecot 2.4 chroot at {root} (run: bash tests/trixie.sh)"
    if not os.access(os.path.join(root, "usr/sbin/dovecot"), os.X_OK):
        return f"{root} has no usr/sbin/dovecot"
    if os.geteuid() != 0:
        return "the Dovecot 2.4 stack must run as root (chroot, mount namespace)"
    return None


def crash_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if CRASH.search(line)]


def _id_from(path: str, name: str) -> int:
    with open(path) as f:
        for line in f:
            parts = line.split(":")
            if parts[0] == name:
                return int(parts[2])
    raise KeyError(f"{name} not in {path}")


def _check_value(key: str, value: str) -> str:
    value = str(value)
    if "\n" in value or "\r" in value or "\n" in key or not re.fullmatch(r"[A-Za-z0-9_./:-]+", key):
        raise ValueError(f"setting not representable in dovecot.conf: {key!r} = {value!r}")
    return value


def _mounts_under(path: str) -> list[str]:
    path = path.rstrip("/")
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


class Dovecot24Stack(MailStack):
    """Dovecot 2.4.1 in the trixie chroot (+ the host's Postfix). Constructor arguments (all keywords):

    oauth2            dict for the global `oauth2 {}` block (introspection_mode, introspection_url,
                      username_attribute, active_attribute, active_value, username_validation_format,
                      http_client_request_timeout, ...); None = no block
    oauth2_extra      raw text added inside `oauth2 {}` (nested blocks such as `fields { ... }`)
    mechanisms        auth_mechanisms (default "plain login", plus "xoauth2 oauthbearer" with an oauth2
                      block: without one, Dovecot 2.4.1's auth process dies at start, "Cannot initialize
                      oauth2: Missing oauth2_introspection_mode setting")
    lua_script        host path of a Lua passdb script, copied into the private dir (mode 0644)
    lua_mechanisms    its mechanisms_filter (default "plain login"; None = every mechanism)
    lua_settings      dict for `lua_settings {}` (passed to script_init)
    lua_use_worker    passdb use_worker (None = Dovecot's default)
    module_so         host path of a Lua C module (the built libdovecot_oauth2.so), copied into the
                      private dir as module_name and put on LUA_CPATH_5_4 (nothing shared is written)
    module_name       file name `require` looks for (default "dovecot_oauth2.so")
    environment       extra variables for Dovecot's processes (import_environment)
    users             users with a mailbox (passwd-file userdb); their PLAIN password for the passwd
                      passdb is "<local part>-mailpw"
    users_without_mailbox  users in the passwd passdb but not in the userdb ("valid token, user
                      missing from the userdb")
    userdb            "passwd-file" (default) or "static" (every user exists, no missing user)
    passwd_passdb     a passwd-file passdb for PLAIN/LOGIN (default: only when there is no lua_script)
    auth_username_format  default "%{user | lower}" (docker-mailserver's)
    auth_verbose, auth_debug, auth_cache (auth_cache_size 10M when True). auth_debug makes Dovecot 2.4.1
                      log the introspection URL with its credentials and the token itself.
    auth_internal_failure_delay  default "0" (Dovecot's default is 2 s, after every internal failure,
                      failed introspections included); auth_failure_delay is always 0
    postfix           run the host's Postfix submission against Dovecot's SASL (default True)
    postfix_sasl      "inet" (default: Dovecot auth inet_listener on 127.0.0.1) or "unix" (the
                      auth-client socket through the chroot's path)
    dovecot_submission  Dovecot 2.4's own submission service (default True)
    extra_dovecot_conf  raw text appended to dovecot.conf
    random_client_ip  every client connection from its own 127.x.y.z (Dovecot's per-IP penalty)
    chroot            the chroot (default $DOVECOT24_CHROOT or /var/cache/dovecot-oauth2-tests/trixie)
    """

    def __init__(self, *, oauth2: dict[str, str] | None = None, oauth2_extra: str = "",
                 mechanisms: str | None = None,
                 lua_script: str | None = None, lua_mechanisms: str | None = "plain login",
                 lua_settings: dict[str, str] | None = None, lua_use_worker: bool | None = None,
                 module_so: str | None = None, module_name: str = "dovecot_oauth2.so",
                 environment: dict[str, str] | None = None,
                 users=("alice@example.test", "bob@example.test", "dave@example.test"),
                 users_without_mailbox=("carol@example.test",),
                 userdb: str = "passwd-file", passwd_passdb: bool | None = None,
                 auth_username_format: str = "%{user | lower}",
                 auth_verbose: bool = True, auth_debug: bool = False, auth_cache: bool = False,
                 auth_internal_failure_delay: str = "0",
                 postfix: bool = True, postfix_sasl: str = "inet", dovecot_submission: bool = True,
                 extra_dovecot_conf: str = "", random_client_ip: bool = True,
                 chroot: str | None = None):
        if os.geteuid() != 0:
            raise RuntimeError("Dovecot24Stack must run as root")
        self.root = os.path.abspath(chroot or chroot_dir())
        problem = chroot_problem(self.root)
        if problem:
            raise RuntimeError(problem)
        if userdb not in ("passwd-file", "static"):
            raise ValueError(f"userdb must be passwd-file or static, not {userdb!r}")
        if postfix_sasl not in ("inet", "unix"):
            raise ValueError(f"postfix_sasl must be inet or unix, not {postfix_sasl!r}")
        self.version = self._chroot_version()
        if not self.version.startswith("2.4."):
            raise RuntimeError(f"expected Dovecot 2.4.x in {self.root}, got {self.version!r}")
        _reap_stale_private_dirs(self.root)

        self.oauth2 = dict(oauth2) if oauth2 is not None else None
        self.oauth2_extra = oauth2_extra
        if mechanisms is None:
            mechanisms = "plain login" + (" xoauth2 oauthbearer" if oauth2 is not None else "")
        self.mechanisms = mechanisms
        self.lua_mechanisms = lua_mechanisms
        self.lua_settings = dict(lua_settings or {})
        self.lua_use_worker = lua_use_worker
        self.environment = dict(environment or {})
        self.users = tuple(users)
        self.users_without_mailbox = tuple(users_without_mailbox)
        self.userdb = userdb
        self.passwd_passdb = (lua_script is None) if passwd_passdb is None else passwd_passdb
        self.auth_username_format = auth_username_format
        self.auth_verbose = auth_verbose
        self.auth_debug = auth_debug
        self.auth_cache = auth_cache
        self.auth_internal_failure_delay = _check_value("auth_internal_failure_delay", auth_internal_failure_delay)
        self.use_postfix = postfix
        self.postfix_sasl = postfix_sasl
        self.use_dovecot_submission = dovecot_submission
        self.extra_dovecot_conf = extra_dovecot_conf
        self.random_client_ip = random_client_ip
        self.client_ip: str | None = None

        self.dovecot_uid = _id_from(os.path.join(self.root, "etc/passwd"), "dovecot")
        self.dovecot_gid = _id_from(os.path.join(self.root, "etc/group"), "dovecot")

        (self.imap_port, self.pop3_port, self.submission_port, self.dovecot_submission_port,
         self.auth_port) = _free_ports(5)

        # The private directory: self.priv inside the chroot, self.workdir the same on the host.
        name = PRIVATE_PREFIX + secrets.token_hex(4)
        self.priv = "/run/" + name
        self.workdir = self.host_path(self.priv)
        os.makedirs(os.path.dirname(self.workdir), exist_ok=True)
        os.mkdir(self.workdir, 0o755)
        os.chmod(self.workdir, 0o755)
        self._removed = False
        self._started = False
        atexit.register(self._atexit)

        self.base_dir = self.host_path(self.priv + "/run")
        self.conf_path = self.host_path(self.priv + "/dovecot.conf")
        self.log_path = self.host_path(self.priv + "/dovecot.log")
        self.stdout_path = self.host_path(self.priv + "/dovecot.stdout")
        self.auth_client_socket = self.host_path(self.priv + "/run/auth-client")
        # for authclient.AuthClient (it reads the server's handshake before sending VERSION)
        self.auth_legacy_socket = self.host_path(self.priv + "/run/auth-client-legacy")
        self.passwd_file = self.host_path(self.priv + "/passwd")
        self.users_file = self.host_path(self.priv + "/users")
        self.mail_root = self.host_path(self.priv + "/mail")
        self.vardir = self.workdir
        self._own_runtime = self._own_vardir = False

        self.pf_config_dir = os.path.join(self.workdir, "postfix")
        self.pf_queue_dir = os.path.join(self.workdir, "postfix-spool")
        self.pf_data_dir = os.path.join(self.workdir, "postfix-data")
        self.pf_log_path = os.path.join(self.workdir, "postfix.log")

        self._dovecot: subprocess.Popen | None = None
        self._dovecot_sid: int | None = None
        self._postfix_master: int | None = None
        self.postfix_notes: list[str] = []

        self.lua_script = None
        if lua_script:
            self.lua_script = self.put_file("passdb.lua", path=lua_script, mode=0o644)
        self.module_dir = None
        if module_so:
            self.put_file("lib/" + module_name, path=module_so, mode=0o644)
            self.module_dir = self.priv + "/lib"
        for d in (self.base_dir, self.host_path(self.priv + "/state")):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        self._write_dovecot_files()
        if self.use_postfix:
            self._write_postfix_files()

    # ------------------------------------------------------------------ paths and files

    def host_path(self, chroot_path: str) -> str:
        """The host's path of a path inside the chroot."""
        if not chroot_path.startswith("/"):
            raise ValueError(chroot_path)
        return self.root + chroot_path

    def put_file(self, name: str, data: str | bytes | None = None, *, path: str | None = None,
                 mode: int = 0o640, group: str = "dovecot") -> str:
        """Write a file into the private dir (from data or a host file), owned root:<group of the
        chroot>, mode `mode`. Returns its path as Dovecot sees it (inside the chroot)."""
        if (data is None) == (path is None):
            raise ValueError("give data or path")
        inside = self.private_path(name)
        dest = self.host_path(inside)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        d = os.path.dirname(dest)
        while len(d) > len(self.workdir):
            os.chmod(d, 0o755)
            d = os.path.dirname(d)
        tmp = dest + ".tmp"
        if path is not None:
            shutil.copyfile(path, tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        gid = _id_from(os.path.join(self.root, "etc/group"), group)
        os.chown(tmp, 0, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        return inside

    def private_path(self, name: str) -> str:
        """Path (inside the chroot) of `name` in the private dir, e.g. for a socket the daemon listens on:
        the host sees it at host_path(private_path(name))."""
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(name)
        return self.priv + "/" + name

    RECONFIGURABLE = ("oauth2", "oauth2_extra", "mechanisms", "lua_mechanisms", "lua_settings",
                      "lua_use_worker", "environment", "auth_username_format", "auth_verbose", "auth_debug",
                      "auth_cache", "auth_internal_failure_delay", "extra_dovecot_conf")

    def reconfigure(self, **changes) -> None:
        """Change settings given to the constructor (see RECONFIGURABLE) and rewrite dovecot.conf. Before
        start() that is all; on a running stack call reload() afterwards."""
        for k, v in changes.items():
            if k not in self.RECONFIGURABLE:
                raise ValueError(f"{k} cannot be changed after construction")
            setattr(self, k, v)
        with open(self.conf_path, "w") as f:
            f.write(self.dovecot_conf())

    # ------------------------------------------------------------------ running things in the chroot

    def _enter(self, argv: list[str]) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", _ENTER, "sh", self.root, *argv]

    def chroot_run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside the chroot (own mount namespace with /dev and /proc)."""
        return subprocess.run(self._enter(list(argv)), capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def _chroot_version(self) -> str:
        p = subprocess.run(["chroot", self.root, "/usr/sbin/dovecot", "--version"], capture_output=True,
                           text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"chroot {self.root} dovecot --version failed: {p.stderr}")
        return p.stdout.strip()

    def doveconf_check(self) -> str:
        """doveconf -n on the generated file; raises on errors, returns the output."""
        p = self.chroot_run("/usr/bin/doveconf", "-c", self.priv + "/dovecot.conf", "-n")
        if p.returncode != 0:
            raise RuntimeError(f"doveconf failed ({p.returncode}): {p.stderr}{p.stdout[-2000:]}")
        return p.stdout

    def doveadm(self, *args: str) -> subprocess.CompletedProcess:
        return self.chroot_run("/usr/bin/doveadm", "-c", self.priv + "/dovecot.conf", *args)

    def reload(self) -> None:
        p = self.doveadm("reload")
        if p.returncode != 0:
            raise RuntimeError(f"doveadm reload failed: {p.stderr}")

    # ------------------------------------------------------------------ config

    def _write_dovecot_files(self) -> None:
        os.makedirs(self.mail_root, exist_ok=True)
        os.chown(self.mail_root, MAIL_UID, MAIL_GID)
        os.chmod(self.mail_root, 0o755)
        mail = self.priv + "/mail"
        with open(self.passwd_file, "w") as f:
            for u in self.users + self.users_without_mailbox:
                f.write(f"{u}:{{PLAIN}}{u.split('@', 1)[0]}-mailpw::::::\n")
        os.chmod(self.passwd_file, 0o644)
        with open(self.users_file, "w") as f:
            for u in self.users:
                f.write(f"{u}::{MAIL_UID}:{MAIL_GID}::{mail}/{u}::\n")
        os.chmod(self.users_file, 0o644)
        with open(self.conf_path, "w") as f:
            f.write(self.dovecot_conf())

    def dovecot_conf(self) -> str:
        p = self.priv
        out = [
            "# generated by tests/e2e/dovecot24.py -- standalone, does not include /etc/dovecot",
            "dovecot_config_version = 2.4.1",
            "dovecot_storage_version = 2.4.1",
            f"instance_name = {os.path.basename(p)}",
            f"base_dir = {p}/run",
            f"state_dir = {p}/state",
            "protocols = imap pop3" + (" submission" if self.use_dovecot_submission else ""),
            f"listen = {HOST}",
            "hostname = mail.example.test",
            f"log_path = {p}/dovecot.log",
            f"info_log_path = {p}/dovecot.log",
            f"debug_log_path = {p}/dovecot.log",
            "ssl = no",
            "auth_allow_cleartext = yes",
            f"auth_mechanisms = {_check_value('auth_mechanisms', self.mechanisms)}",
            "auth_failure_delay = 0",
            # 2.4 also delays internal failures (2 s by default), e.g. every failed introspection
            f"auth_internal_failure_delay = {self.auth_internal_failure_delay}",
            f"auth_username_format = {_check_value('auth_username_format', self.auth_username_format)}",
            f"auth_verbose = {'yes' if self.auth_verbose else 'no'}",
            f"auth_debug = {'yes' if self.auth_debug else 'no'}",
            f"first_valid_uid = {MAIL_UID}",
            f"first_valid_gid = {MAIL_GID}",
            "mail_driver = maildir",
            "mail_path = ~/Maildir",
        ]
        if self.auth_cache:
            out += ["auth_cache_size = 10M", "auth_cache_ttl = 1 hour", "auth_cache_negative_ttl = 1 hour"]
        env = {}
        if self.module_dir:
            env["LUA_CPATH_5_4"] = self.module_dir + "/?.so;;"
        env.update(self.environment)
        if env:
            out.append("import_environment {")
            out += [f"  {_check_value(k, k)} = {_quote(v)}" for k, v in env.items()]
            out.append("}")
        if self.oauth2 is not None:
            out.append("oauth2 {")
            out += [f"  {_check_value(k, k)} = {_check_value(k, v)}" for k, v in self.oauth2.items()]
            if self.oauth2_extra:
                out.append(self.oauth2_extra)
            out.append("}")
        if self.lua_script:
            out += ["passdb lua {", "  driver = lua", f"  lua_file = {self.lua_script}"]
            if self.lua_mechanisms is not None:
                out.append(f"  mechanisms_filter = {_check_value('mechanisms_filter', self.lua_mechanisms)}")
            if self.lua_use_worker is not None:
                out.append(f"  use_worker = {'yes' if self.lua_use_worker else 'no'}")
            if self.lua_settings:
                out.append("  lua_settings {")
                out += [f"    {_check_value(k, k)} = {_quote(v)}" for k, v in self.lua_settings.items()]
                out.append("  }")
            out.append("}")
        if self.passwd_passdb:
            out += ["passdb passwd {", "  driver = passwd-file", f"  passwd_file_path = {p}/passwd",
                    "  mechanisms_filter = plain login", "}"]
        if self.userdb == "passwd-file":
            out += ["userdb users {", "  driver = passwd-file", f"  passwd_file_path = {p}/users", "}"]
        else:
            out += ["userdb static {", "  driver = static", "  fields {", f"    uid = {MAIL_UID}",
                    f"    gid = {MAIL_GID}", f"    home = {p}/mail/%{{user}}", "  }", "}"]
        out += [
            "service imap-login {",
            f"  inet_listener imap {{\n    port = {self.imap_port}\n  }}",
            "  inet_listener imaps {\n    port = 0\n  }",
            "}",
            "service pop3-login {",
            f"  inet_listener pop3 {{\n    port = {self.pop3_port}\n  }}",
            "  inet_listener pop3s {\n    port = 0\n  }",
            "}",
            "service auth {",
            "  unix_listener auth-client {\n    mode = 0666\n  }",
            # sends its whole handshake at once, as 2.3 did: tests/e2e/authclient.py works with it
            "  unix_listener auth-client-legacy {\n    type = auth-legacy\n    mode = 0666\n  }",
            # for the host's Postfix (smtpd_sasl_path = inet:127.0.0.1:PORT)
            f"  inet_listener auth-inet {{\n    port = {self.auth_port}\n    type = auth\n  }}",
            "}",
            # Dovecot's per-IP auth penalty (anvil) is not lifted by auth_failure_delay = 0 and Postfix
            # never sends no-penalty: without the penalty socket the auth process cannot apply it.
            "service anvil {",
            "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }",
            "}",
        ]
        if self.use_dovecot_submission:
            relay = self.submission_port if self.use_postfix else 9
            out += [
                f"submission_relay_host = {HOST}",
                f"submission_relay_port = {relay}",
                "submission_relay_trusted = no",
                "service submission-login {",
                f"  inet_listener submission {{\n    port = {self.dovecot_submission_port}\n  }}",
                "  inet_listener submissions {\n    port = 0\n  }",
                "}",
            ]
        if self.extra_dovecot_conf:
            out.append(self.extra_dovecot_conf)
        return "\n".join(out) + "\n"

    def _write_postfix_files(self) -> None:
        super()._write_postfix_files()  # mailstack's private Postfix, config_directory in our dir
        sasl = f"inet:{HOST}:{self.auth_port}" if self.postfix_sasl == "inet" else self.auth_client_socket
        p = subprocess.run([POSTCONF, "-c", self.pf_config_dir, "-e", f"smtpd_sasl_path = {sasl}"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"postconf failed: {p.stderr}")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._removed:
            raise RuntimeError("this stack was stopped and its directory removed; make a new one")
        self.doveconf_check()
        with open(self.stdout_path, "ab") as out:
            self._dovecot = subprocess.Popen(
                self._enter(["/usr/sbin/dovecot", "-F", "-c", self.priv + "/dovecot.conf"]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        # unshare, sh and chroot exec into dovecot: same pid, own session
        self._dovecot_sid = self._dovecot.pid
        self._started = True
        try:
            if self.use_postfix:
                self._start_postfix()
            self._wait_ports()
        except BaseException:
            self.stop()
            raise

    def _wait_ports(self, timeout: float = 30.0) -> None:
        ports = {"imap": self.imap_port, "pop3": self.pop3_port, "auth-inet": self.auth_port}
        if self.use_postfix:
            ports["submission"] = self.submission_port
        if self.use_dovecot_submission:
            ports["dovecot-submission"] = self.dovecot_submission_port
        deadline = time.time() + timeout
        pending = dict(ports)
        while time.time() < deadline:
            if self._dovecot is not None and self._dovecot.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._dovecot.returncode}: "
                                   + self._tail(self.stdout_path) + self._tail(self.log_path))
            for name, port in list(pending.items()):
                if _port_open(port):
                    del pending[name]
            if not pending and os.path.exists(self.auth_client_socket) and self._auth_ready():
                return
            fatal = crash_lines(self.log_since(0))
            if fatal:
                raise RuntimeError("dovecot failed to start:\n" + "\n".join(fatal[:10]))
            time.sleep(0.1)
        raise RuntimeError(f"not listening after {timeout}s: {pending} (auth-client socket: "
                           f"{os.path.exists(self.auth_client_socket)})\n"
                           + self._tail(self.log_path) + self._tail(self.pf_log_path))

    def _auth_ready(self) -> bool:
        """The auth process answers the auth-client handshake (it died at start otherwise)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(self.auth_client_socket)
                # 2.4 sends VERSION and waits for the client's before the rest (2.3 sent it all at once)
                s.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
                buf = b""
                while b"\nDONE\n" not in b"\n" + buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    buf += chunk
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        """The Dovecot master is still running."""
        return self._dovecot is not None and self._dovecot.poll() is None

    def stop(self, timeout: float = 20.0, remove: bool | None = None) -> None:
        """Stop Postfix and Dovecot (SIGKILL after timeout), then remove the private dir (unless
        remove=False or $DOVECOT24_KEEP is set). The mounts vanish with Dovecot's mount namespace."""
        if self._started:
            super().stop(timeout)
            self._started = False
        if remove is None:
            remove = not os.environ.get("DOVECOT24_KEEP")
        if remove:
            self.cleanup()
        elif not self._removed:
            print(f"dovecot24: files kept in {self.workdir}", file=sys.stderr)

    def cleanup(self) -> None:
        """Remove the private dir (only once nothing of this stack runs and nothing is mounted there)."""
        if self._removed or not os.path.isdir(self.workdir):
            self._removed = True
            return
        left = self.stack_pids()
        if left["dovecot"] or left["postfix"]:
            raise RuntimeError(f"not removing {self.workdir}: processes still running {left}")
        mounts = _mounts_under(self.workdir) + _mounts_under(self.root + "/dev") + _mounts_under(self.root + "/proc")
        if mounts:
            raise RuntimeError(f"not removing {self.workdir}: mounted on the host: {mounts}")
        shutil.rmtree(self.workdir)
        self._removed = True

    def _atexit(self) -> None:
        try:
            self.stop(timeout=10)
        except Exception as e:  # pragma: no cover - best effort at interpreter exit
            print(f"dovecot24: cleanup at exit failed: {e}", file=sys.stderr)

    # ------------------------------------------------------------------ logs

    def new_log(self) -> "LogCursor":
        """A cursor at the current end of Dovecot's log: cursor.read() returns the lines written since."""
        return LogCursor(self)

    def crashes_since(self, mark: int) -> list[str]:
        return crash_lines(self.log_since(mark))

    def all_crashes(self) -> list[str]:
        return crash_lines(self.log_since(0))


class LogCursor:
    def __init__(self, stack: Dovecot24Stack):
        self.stack = stack
        self.mark = stack.log_mark()

    def read(self) -> str:
        """New text since the last read (or since the cursor was made)."""
        text = self.stack.log_since(self.mark)
        self.mark += len(text.encode())
        return text

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        """Wait until needle shows up after the mark; returns the text (possibly without it)."""
        return self.stack.wait_log(self.mark, needle, timeout)


def _quote(v: str) -> str:
    v = str(v)
    if "\n" in v or '"' in v or "\\" in v:
        raise ValueError(f"value not representable in dovecot.conf: {v!r}")
    return f'"{v}"'


def _reap_stale_private_dirs(root: str, min_age: float = 3600.0) -> None:
    """Remove private dirs of stacks that died without cleanup (killed test runs): older than an hour,
    their Dovecot master gone, nothing mounted."""
    run = os.path.join(root, "run")
    try:
        names = os.listdir(run)
    except OSError:
        return
    now = time.time()
    for name in names:
        if not name.startswith(PRIVATE_PREFIX):
            continue
        d = os.path.join(run, name)
        try:
            if now - os.stat(d).st_mtime < min_age:
                continue
            with open(os.path.join(d, "run", "master.pid")) as f:
                pid = int(f.read().split()[0])
            if _proc_stat(pid) is not None and os.readlink(f"/proc/{pid}/root") == root:
                continue
        except (OSError, ValueError, IndexError):
            pass
        if not _mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)


def _selfcheck() -> int:  # pragma: no cover - manual smoke test: python3 tests/e2e/dovecot24.py
    s = Dovecot24Stack(postfix=True)
    print(f"Dovecot {s.version}, private dir {s.workdir}")
    t0 = time.time()
    s.start()
    print(f"started in {time.time() - t0:.2f}s: imap={s.imap_port} pop3={s.pop3_port} "
          f"submission={s.submission_port} auth={s.auth_port}")
    try:
        for fn, args in ((s.imap_plain_login, ("alice@example.test", "alice-mailpw")),
                         (s.imap_plain_login, ("alice@example.test", "wrong"))):
            r = fn(*args)
            print(f"{fn.__name__}{args}: ok={r.ok} {r.text}")
        print(s.log_since(0)[-3000:])
    finally:
        s.stop()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(_selfcheck())
