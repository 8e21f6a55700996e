"""A docker-mailserver (DMS) v15.1.0 file tree on this machine, and real Dovecot + Postfix run from it.

build_tree(root, ...) lays out, under `root`, what the DMS image has at startup when the daemons are
about to start (right where DMS runs user-patches.sh):
  * /etc/dovecot: Debian 12's stock configuration of the installed dovecot packages, from the packages'
    pristine files (pristine.py; never the machine's live /etc/dovecot), with
    tests/fixtures/dms-v15.1.0/dovecot laid over it at the documented places, and DMS's ENABLE_OAUTH2=1 startup edits: `!include auth-oauth2.conf.ext` uncommented in
    10-auth.conf, existing keys of dovecot-oauth2.conf.ext set from OAUTH2_* (keys the file lacks are not
    added, as DMS does); accounts in /etc/dovecot/userdb (`LOGIN:{SHA512-CRYPT}HASH:5000:5000::...`);
  * /etc/postfix: Debian's stock Postfix files (pristine.py) with DMS's main.cf and master.cf, plus the maps DMS
    writes at startup (vhost, virtual, maps/*.pcre) and dhparams.pem;
  * the docker user and group (5000), /var/mail/DOMAIN/USER, /usr/lib/dovecot/modules/auth/
    libauthdb_lua.so (a link to the real one, as the dovecot-auth-lua package installs it);
  * the config volume /tmp/docker-mailserver with docker/user-patches.sh, the built module as
    dovecot_oauth2.so and lua/dovecot-oauth2.lua (the prebuilt route).

DmsStack(root).start() runs Dovecot and Postfix from that tree unchanged, in a private mount namespace
(`unshare -m`) where the tree's /etc/dovecot, /etc/postfix, /etc/passwd, /etc/group, /var/mail,
/var/spool/postfix, /var/lib/{dovecot,postfix}, /var/log, /run, /dev/shm and /usr/local are bind-mounted
over the real ones, so DMS's absolute paths (/etc/dovecot/userdb, /dev/shm/sasl-auth.sock,
/etc/dovecot/lua/...) work as in the container. The network is shared with the host, so the only
test-only changes are about the network and logging: /etc/dovecot/local.conf (Debian's dovecot.conf
includes it last) moves IMAP to a free loopback port, switches off imaps, limits protocols to imap
(this machine has no lmtpd) and logs to /var/log/mail/mail.log (rsyslog does that in DMS); Postfix
gets the submission service on a free loopback port instead of 587 (smtp/25 and submissions/465 are
commented out) and maillog_file = /var/log/mail/mail.log. DMS's own files are otherwise as shipped.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import time

import mailstack
import pristine
from mailstack import HOST, MailStack, _free_ports, _port_open, _proc_stat, _session_pids

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DMS_FILES = os.path.join(REPO, "tests", "fixtures", "dms-v15.1.0")
USER_PATCHES = os.path.join(REPO, "docker", "user-patches.sh")
LUA_SCRIPT = os.path.join(REPO, "lua", "dovecot-oauth2.lua")

DOCKER_UID = DOCKER_GID = 5000
DOMAIN = "example.test"
# login -> PLAIN password (the passwd-file accounts DMS would create from postfix-accounts.cf)
ACCOUNTS = {"alice@example.test": "alice-mailpw", "bob@example.test": "bob-mailpw",
            "dave@example.test": "dave-mailpw"}

# paths bind-mounted from the tree over the real ones (all exist on a Debian 12 host with dovecot
# and postfix installed)
BINDS = ["/etc/dovecot", "/etc/postfix", "/etc/passwd", "/etc/group", "/var/mail",
         "/var/spool/postfix", "/var/lib/postfix", "/var/lib/dovecot", "/var/log", "/run",
         "/dev/shm", "/usr/local"]


def _sha512_crypt(password: str) -> str:
    return subprocess.run(["openssl", "passwd", "-6", password], check=True, capture_output=True,
                          text=True).stdout.strip()


def dms_enable_oauth2(root: str, env: dict[str, str]) -> None:
    """What DMS v15.1.0's startup does for ENABLE_OAUTH2=1 (before user-patches.sh)."""
    auth = os.path.join(root, "etc/dovecot/conf.d/10-auth.conf")
    text = open(auth).read()
    text = text.replace("#!include auth-oauth2.conf.ext", "!include auth-oauth2.conf.ext")
    open(auth, "w").write(text)
    path = os.path.join(root, "etc/dovecot/dovecot-oauth2.conf.ext")
    lines = open(path).read().splitlines(keepends=True)
    for name, value in env.items():
        if not name.startswith("OAUTH2_"):
            continue
        key = name[len("OAUTH2_"):].lower()
        # only keys already in the file, as DMS does
        lines = [f"{key} = {value}\n" if ln.split("=", 1)[0].strip() == key and "=" in ln else ln
                 for ln in lines]
    open(path, "w").write("".join(lines))


def build_tree(root: str, *, module: str | None, env: dict[str, str], imap_port: int = 143,
               submission_port: int = 587, enable_oauth2: bool = True) -> None:
    """Lay out the DMS image's files under root (see the module docstring)."""
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731

    # --- Dovecot: Debian 12 stock + DMS's files
    pristine.pristine_dovecot_etc(j("etc/dovecot"))
    for name in os.listdir(os.path.join(DMS_FILES, "dovecot")):
        src = os.path.join(DMS_FILES, "dovecot", name)
        if name in ("dovecot-oauth2.conf.ext", "dovecot-ldap.conf.ext"):
            dst = j("etc/dovecot", name)
        else:  # *.conf, *.inc, auth-*.conf.ext
            dst = j("etc/dovecot/conf.d", name)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
    shutil.copyfile(pristine.package_file("dovecot-core", "/usr/share/dovecot/dh.pem"), j("etc/dovecot/dh.pem"))
    with open(j("etc/dovecot/userdb"), "w") as f:
        for login, pw in ACCOUNTS.items():
            user, domain = login.split("@")
            f.write(f"{login}:{{SHA512-CRYPT}}{_sha512_crypt(pw)}:{DOCKER_UID}:{DOCKER_GID}::"
                    f"/var/mail/{domain}/{user}/home::\n")
    os.chown(j("etc/dovecot/userdb"), mailstack._uid("dovecot") or 0, 0)
    os.chmod(j("etc/dovecot/userdb"), 0o640)
    if enable_oauth2:
        dms_enable_oauth2(root, env)
    # test only: network and logging (see the module docstring)
    with open(j("etc/dovecot/local.conf"), "w") as f:
        f.write(f"""# tests/e2e/dms_root.py: test-only network and logging settings
protocols = imap
listen = {HOST}
log_path = /var/log/mail/mail.log
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")

    # --- Postfix: Debian 12 stock + DMS's main.cf / master.cf + the maps DMS writes
    pristine.pristine_postfix_etc(j("etc/postfix"))
    for name in ("main.cf", "master.cf"):
        shutil.copyfile(os.path.join(DMS_FILES, "postfix", name), j("etc/postfix", name))
    os.makedirs(j("etc/postfix/maps"), exist_ok=True)
    for name in ("header_checks.pcre", "sender_header_filter.pcre"):
        open(j("etc/postfix/maps", name), "w").close()
    with open(j("etc/postfix/vhost"), "w") as f:
        f.write(DOMAIN + "\n")
    open(j("etc/postfix/virtual"), "w").close()
    shutil.copyfile(pristine.package_file("dovecot-core", "/usr/share/dovecot/dh.pem"), j("etc/postfix/dhparams.pem"))
    master = open(j("etc/postfix/master.cf")).read().splitlines()
    out = []
    for ln in master:
        if ln.startswith("submission ") and " inet " in ln:
            ln = f"{HOST}:{submission_port}" + ln[len("submission"):]
        elif (ln.startswith("smtp ") or ln.startswith("submissions ")) and " inet " in ln:
            out.append("# tests/e2e/dms_root.py: not on this host's ports")
            ln = "#" + ln
        out.append(ln)
    # the commented services' "-o" lines must go too
    text, skip = [], False
    for ln in out:
        if ln.startswith("#") and " inet " in ln:
            skip = True
        elif not ln.startswith("  -o"):
            skip = False
        text.append("#" + ln if skip and ln.startswith("  -o") else ln)
    open(j("etc/postfix/master.cf"), "w").write("\n".join(text) + "\n")
    subprocess.run(["postconf", "-c", j("etc/postfix"), "-e",
                    "maillog_file = /var/log/mail/mail.log", f"inet_interfaces = {HOST}",
                    "inet_protocols = ipv4", "myhostname = mail.example.test"],
                   check=True, capture_output=True)

    # --- accounts, users, directories
    for name in ("passwd", "group"):
        shutil.copyfile(f"/etc/{name}", j("etc", name))
    with open(j("etc/passwd"), "a") as f:
        f.write(f"docker:x:{DOCKER_UID}:{DOCKER_GID}::/var/mail:/usr/sbin/nologin\n")
    with open(j("etc/group"), "a") as f:
        f.write(f"docker:x:{DOCKER_GID}:\n")
    for login in ACCOUNTS:
        user, domain = login.split("@")
        d = j("var/mail", domain, user, "home")
        os.makedirs(d, exist_ok=True)
        for p in (j("var/mail", domain), j("var/mail", domain, user), d):
            os.chown(p, DOCKER_UID, DOCKER_GID)
    for d in ("var/spool/postfix", "var/lib/postfix", "var/lib/dovecot", "var/log/mail", "run",
              "usr/local/lib", "usr/local/bin", "usr/local/share", "tmp/docker-mailserver"):
        os.makedirs(j(d), exist_ok=True)
        os.chmod(j(d), 0o755)
    # as the postfix package installs it (Postfix's data_directory, where master.lock lives)
    postfix_ids = (mailstack._uid("postfix"), grp.getgrnam("postfix").gr_gid)
    os.chown(j("var/lib/postfix"), *postfix_ids)
    os.makedirs(j("dev/shm"), exist_ok=True)
    os.chmod(j("dev/shm"), 0o1777)
    os.makedirs(j("usr/lib/dovecot/modules/auth"), exist_ok=True)
    os.symlink("/usr/lib/dovecot/modules/auth/libauthdb_lua.so",
               j("usr/lib/dovecot/modules/auth/libauthdb_lua.so"))

    # --- the config volume: what a user of the prebuilt route copies
    shutil.copy(USER_PATCHES, j("tmp/docker-mailserver/user-patches.sh"))
    shutil.copy(LUA_SCRIPT, j("tmp/docker-mailserver/dovecot-oauth2.lua"))
    if module:
        shutil.copy(module, j("tmp/docker-mailserver/dovecot_oauth2.so"))


def run_user_patches(root: str, env: dict[str, str], path_prefix: str | None = None
                     ) -> subprocess.CompletedProcess:
    """bash /tmp/docker-mailserver/user-patches.sh as DMS runs it, with DMS_ROOT=root."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if path_prefix:
        path = path_prefix + ":" + path
    full = {"PATH": path, "DMS_ROOT": root, **env}
    return subprocess.run(["bash", os.path.join(root, "tmp/docker-mailserver/user-patches.sh")],
                          env=full, capture_output=True, text=True, timeout=60)


def snapshot(root: str) -> dict[str, tuple]:
    """Every file and directory under root: (type, mode, uid, gid, content or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_mode, st.st_uid, st.st_gid, f.read())
    return out


class DmsStack:
    """Dovecot + Postfix started from a DMS tree in a private mount namespace. Client helpers are
    MailStack's (imap_login, smtp_login, ...), which only need the ports and source-address policy."""

    # MailStack's clients and log helpers, used as they are
    source_ip = MailStack.source_ip
    _sasl = MailStack._sasl
    imap_login = MailStack.imap_login
    imap_plain_login = MailStack.imap_plain_login
    _imap_auth = MailStack._imap_auth
    smtp_login = MailStack.smtp_login
    imap_login_curl = MailStack.imap_login_curl
    log_mark = MailStack.log_mark
    log_since = MailStack.log_since
    wait_log = MailStack.wait_log

    use_postfix = True
    use_dovecot_submission = False
    random_client_ip = True
    client_ip: str | None = None

    def __init__(self, root: str, imap_port: int, submission_port: int):
        self.root = root
        self.imap_port = imap_port
        self.submission_port = submission_port
        self.log_path = os.path.join(root, "var/log/mail/mail.log")
        self.stdout_path = os.path.join(os.path.dirname(root), "namespace.stdout")
        self._proc: subprocess.Popen | None = None
        self._postfix_master: int | None = None

    @staticmethod
    def free_ports() -> tuple[int, int]:
        a, b = _free_ports(2)
        return a, b

    def start(self, timeout: float = 30.0) -> None:
        mounts = "\n".join(f'mount --bind "{self.root}{p}" "{p}"' for p in BINDS)
        script = f"""set -e
{mounts}
postfix start
exec /usr/sbin/dovecot -F -c /etc/dovecot/dovecot.conf
"""
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        pidfile = os.path.join(self.root, "var/spool/postfix/pid/master.pid")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dovecot/namespace exited with {self._proc.returncode}:\n"
                                   + MailStack._tail(self.stdout_path) + MailStack._tail(self.log_path))
            if self._postfix_master is None:
                try:
                    pid = int(open(pidfile).read().split()[0])
                    if _proc_stat(pid):
                        self._postfix_master = pid
                except (OSError, ValueError, IndexError):
                    pass
            if (self._postfix_master and _port_open(self.imap_port) and _port_open(self.submission_port)
                    and os.path.exists(os.path.join(self.root, "dev/shm/sasl-auth.sock"))):
                return
            time.sleep(0.1)
        raise RuntimeError("DMS stack not up:\n" + MailStack._tail(self.stdout_path)
                           + MailStack._tail(self.log_path))

    def pids(self) -> list[int]:
        out = []
        if self._proc is not None:
            out += _session_pids(self._proc.pid)
        if self._postfix_master:
            out += _session_pids(self._postfix_master)
        return out

    def stop(self, timeout: float = 20.0) -> None:
        # Postfix master shuts down on SIGTERM (what `postfix stop` sends); then Dovecot.
        for pid in ([self._postfix_master] if self._postfix_master else []) + \
                ([self._proc.pid] if self._proc is not None and self._proc.poll() is None else []):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while self.pids() and time.time() < deadline:
            if self._proc is not None:
                self._proc.poll()
            time.sleep(0.1)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
