"""A docker-mailserver (DMS) edge file tree (commit c9b015d: Debian 13, Dovecot 2.4.1) inside the trixie
chroot, docker/user-patches.sh run on it inside the chroot, and the real Dovecot 2.4.1 and dovecot-oauth2d
(under a real supervisord) run from it.

build_tree(stage, ...) lays out, in a scratch directory inside the chroot (seen there as stage.inside,
the DMS_ROOT user-patches.sh gets), what the DMS edge image has when user-patches.sh runs:
  * /etc/dovecot: Debian 13's stock dovecot configuration as the packages' postinst leaves it (the
    chroot's /etc/dovecot, checked pristine first: `dpkg -V` of the Dovecot packages is clean and every
    file equals the package's copy in /usr/share/dovecot), with DMS edge's dovecot/* files laid over
    /etc/dovecot/conf.d/ (tests/fixtures/dms-edge-c9b015d/README.md), dh.pem, and DMS's ENABLE_OAUTH2=1
    edits made by DMS's own `_setup_oauth2` (scripts/oauth2.sh, run with bash and sed, only its
    /etc/dovecot prefix pointed at the scratch tree); accounts in /etc/dovecot/userdb in the format of
    DMS's helpers/accounts.sh (`LOGIN:{SHA512-CRYPT}HASH:5000:5000::/var/mail/DOMAIN/USER/home::`);
  * /etc/passwd and /etc/group: the chroot's plus the users the image has (docker 5000, postfix);
  * /etc/supervisor: DMS's supervisord.conf and dms-services.conf;
  * the config volume /tmp/docker-mailserver with docker/user-patches.sh and the built dovecot-oauth2d
    (the prebuilt route);
  * /var/mail/DOMAIN/USER/home, /var/log/mail, /dev/shm.

Test-only changes (network, ports, logging), as tests/e2e/dms_root.py does for v15: /etc/dovecot/local.conf
(Debian's dovecot.conf includes it last) moves IMAP to a free loopback port, switches off imaps and
quota-status's fixed port, limits protocols to imap and logs to /var/log/mail/mail.log. OAUTH2_LISTEN
gives the daemon a free loopback port. supervisord is the PyPI package on the host, with DMS's
supervisord.conf and the program file user-patches.sh wrote, their paths moved into the scratch tree
(the command's -c path stays: /etc/dovecot is the scratch one in supervisord's mount namespace).

Every process runs in a private mount namespace (`unshare -m`): the scratch tree's /etc/dovecot,
/etc/passwd, /etc/group, /var/mail, /var/log, /dev/shm are bind-mounted over the chroot's (or, for
supervisord, the host's) only there, so DMS's absolute paths work as in the container and nothing shows
up in the host's mount table. The chroot's own /etc/dovecot is mounted read-only while user-patches.sh
runs, so a write that misses DMS_ROOT fails instead of changing the shared chroot.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

from mailstack import HOST, MailStack, _free_ports, _port_open, _proc_stat, _session_pids

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EDGE_FILES = os.path.join(REPO, "tests", "fixtures", "dms-edge-c9b015d")
USER_PATCHES = os.path.join(REPO, "docker", "user-patches.sh")
BUILT_DAEMON = os.path.join(REPO, "target", "release", "dovecot-oauth2d")

DOVECOT_PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-pop3d", "dovecot-submissiond", "dovecot-sieve",
                    "dovecot-auth-lua")
DOCKER_UID = DOCKER_GID = 5000
POSTFIX_UID, POSTFIX_GID = 4242, 4242  # Debian's postinst picks a system id; any unused one does here
DOMAIN = "example.test"
ACCOUNTS = {"alice@example.test": "alice-mailpw", "bob@example.test": "bob-mailpw",
            "dave@example.test": "dave-mailpw"}
STAGE_PREFIX = "o2dms-"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Relative to the scratch root: bind-mounted over the same path of the chroot (Dovecot, user-patches.sh)
DOVECOT_BINDS = ["/etc/dovecot", "/etc/passwd", "/etc/group", "/var/mail", "/var/log", "/var/lib/dovecot"]


def pristine_problem(chroot: str) -> str | None:
    """Why the chroot's /etc/dovecot is not Debian 13's stock configuration (None when it is)."""
    p = subprocess.run(["chroot", chroot, "dpkg", "-V", *DOVECOT_PACKAGES], capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0 or p.stdout.strip():
        return f"dpkg -V {' '.join(DOVECOT_PACKAGES)} in {chroot}: rc {p.returncode}: {p.stdout}{p.stderr}"
    etc = os.path.join(chroot, "etc/dovecot")
    share = os.path.join(chroot, "usr/share/dovecot")
    for path in glob.glob(os.path.join(etc, "**"), recursive=True):
        rel = os.path.relpath(path, etc)
        if os.path.isdir(path) or rel.startswith("private/"):
            continue
        stock = os.path.join(share, rel)
        if not os.path.isfile(stock) or open(stock, "rb").read() != open(path, "rb").read():
            return f"{path} differs from the package's {stock}"
    return None


def _sha512_crypt(password: str) -> str:
    return subprocess.run(["openssl", "passwd", "-6", password], check=True, capture_output=True,
                          text=True).stdout.strip()


def _id(path: str, name: str) -> int:
    for line in open(path):
        parts = line.split(":")
        if parts[0] == name:
            return int(parts[2])
    raise KeyError(f"{name} not in {path}")


class Stage:
    """A scratch directory inside the chroot: CHROOT/run/o2dms-XXXX/, the tree in its root/."""

    def __init__(self, chroot: str):
        self.chroot = chroot
        name = STAGE_PREFIX + secrets.token_hex(4)
        self.dir = os.path.join(chroot, "run", name)
        os.mkdir(self.dir, 0o755)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, "root")  # on the host
        self.inside = f"/run/{name}/root"           # the same inside the chroot: DMS_ROOT

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def read(self, rel: str) -> str:
        with open(self.path(rel)) as f:
            return f.read()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def dms_enable_oauth2(stage: Stage, env: dict[str, str]) -> None:
    """DMS edge's startup for ENABLE_OAUTH2=1: its own _setup_oauth2 from scripts/oauth2.sh, with
    `sedfile` (DMS's sed wrapper) as sed and /etc/dovecot as the scratch tree's."""
    script = open(os.path.join(EDGE_FILES, "scripts", "oauth2.sh")).read()
    assert script.count("/etc/dovecot/") == 2, "DMS's oauth2.sh changed: check this test's assumptions"
    script = script.replace("/etc/dovecot/", stage.path("etc/dovecot") + "/")
    driver = "_log() { :; }\nsedfile() { sed \"$@\"; }\n" + script + "\n_setup_oauth2\n"
    full = {"PATH": PATH, **{k: v for k, v in env.items() if k.startswith("OAUTH2_")}}
    full.setdefault("OAUTH2_INTROSPECTION_URL", "")
    subprocess.run(["bash", "-c", driver], env=full, check=True, capture_output=True, text=True, timeout=30)


def build_tree(stage: Stage, *, env: dict[str, str], imap_port: int, daemon: str | None,
               enable_oauth2: bool = True) -> None:
    """Lay out the DMS edge image's files under stage.root (see the module docstring)."""
    c = stage.chroot
    j = stage.path
    os.makedirs(stage.root, exist_ok=True)
    os.chmod(stage.root, 0o755)

    # --- Dovecot: Debian 13 stock + DMS edge's files
    shutil.copytree(os.path.join(c, "etc/dovecot"), j("etc/dovecot"), symlinks=True)
    for name in sorted(os.listdir(os.path.join(EDGE_FILES, "dovecot"))):
        dst = j("etc/dovecot/conf.d/" + name)
        shutil.copyfile(os.path.join(EDGE_FILES, "dovecot", name), dst)
        os.chmod(dst, 0o644)
    shutil.copyfile(os.path.join(c, "usr/share/dovecot/dh.pem"), j("etc/dovecot/dh.pem"))
    dovecot_gid = _id(os.path.join(c, "etc/group"), "dovecot")
    dovecot_uid = _id(os.path.join(c, "etc/passwd"), "dovecot")
    with open(j("etc/dovecot/userdb"), "w") as f:
        for login, pw in ACCOUNTS.items():
            user, domain = login.split("@")
            f.write(f"{login}:{{SHA512-CRYPT}}{_sha512_crypt(pw)}:{DOCKER_UID}:{DOCKER_GID}::"
                    f"/var/mail/{domain}/{user}/home::\n")
    os.chown(j("etc/dovecot/userdb"), dovecot_uid, dovecot_gid)  # helpers/accounts.sh: dovecot:dovecot 640
    os.chmod(j("etc/dovecot/userdb"), 0o640)
    if enable_oauth2:
        dms_enable_oauth2(stage, env)
    with open(j("etc/dovecot/local.conf"), "w") as f:
        f.write(f"""# tests/e2e/dms_edge.py: test-only network and logging settings
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
service quota-status {{
  inet_listener quota-status {{
    port = 0
  }}
}}
""")

    # --- accounts of the image: the chroot's plus docker and postfix
    for name in ("passwd", "group"):
        os.makedirs(j("etc"), exist_ok=True)
        shutil.copyfile(os.path.join(c, "etc", name), j("etc/" + name))
    with open(j("etc/passwd"), "a") as f:
        f.write(f"docker:x:{DOCKER_UID}:{DOCKER_GID}::/var/mail:/usr/sbin/nologin\n")
        f.write(f"postfix:x:{POSTFIX_UID}:{POSTFIX_GID}::/var/spool/postfix:/usr/sbin/nologin\n")
    with open(j("etc/group"), "a") as f:
        f.write(f"docker:x:{DOCKER_GID}:\npostfix:x:{POSTFIX_GID}:\n")

    # --- supervisord's configuration as DMS ships it
    os.makedirs(j("etc/supervisor/conf.d"), exist_ok=True)
    shutil.copyfile(os.path.join(EDGE_FILES, "supervisor/supervisord.conf"), j("etc/supervisor/supervisord.conf"))
    shutil.copyfile(os.path.join(EDGE_FILES, "supervisor/dms-services.conf"),
                    j("etc/supervisor/conf.d/dms-services.conf"))

    # --- directories
    for login in ACCOUNTS:
        user, domain = login.split("@")
        d = j(f"var/mail/{domain}/{user}/home")
        os.makedirs(d, exist_ok=True)
        for p in (j(f"var/mail/{domain}"), j(f"var/mail/{domain}/{user}"), d):
            os.chown(p, DOCKER_UID, DOCKER_GID)
    for d in ("var/log/mail", "var/log/supervisor", "var/lib/dovecot", "run", "usr/local/bin",
              "tmp/docker-mailserver"):
        os.makedirs(j(d), exist_ok=True)
        os.chmod(j(d), 0o755)
    os.makedirs(j("dev/shm"), exist_ok=True)
    os.chmod(j("dev/shm"), 0o1777)
    for d in ("run", "tmp", "usr", "usr/local", "var", "dev"):
        os.chmod(j(d), 0o755 if d != "tmp" else 0o1777)

    # --- the config volume: what a user of the prebuilt route copies
    shutil.copy(USER_PATCHES, j("tmp/docker-mailserver/user-patches.sh"))
    if daemon:
        shutil.copy(daemon, j("tmp/docker-mailserver/dovecot-oauth2d"))
        os.chmod(j("tmp/docker-mailserver/dovecot-oauth2d"), 0o755)


_NAMESPACE = r"""
set -e
root=$1 stage=$2; shift 2
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
"""


def _binds(stage: Stage, binds: list[str], target_root: str) -> str:
    return "".join(f'mount --bind "{stage.root}{p}" "{target_root}{p}"\n' for p in binds)


def run_user_patches(stage: Stage, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """bash /tmp/docker-mailserver/user-patches.sh as DMS runs it (root, bash), inside the chroot
    (Debian 13: its dovecot, doveconf, getent), with DMS_ROOT = the scratch tree. The image's accounts
    (/etc/passwd, /etc/group) are the scratch tree's; the chroot's /etc/dovecot is read-only."""
    c = stage.chroot
    script = (_NAMESPACE + _binds(stage, ["/etc/passwd", "/etc/group"], c)
              + f'mount --bind -o ro "{c}/etc/dovecot" "{c}/etc/dovecot"\n'
              + f'mount -o remount,bind,ro "{c}/etc/dovecot"\n'
              + 'exec chroot "$root" "$@"\n')
    full = {"PATH": PATH, "DMS_ROOT": stage.inside, **env}
    argv = ["env", "-i", *[f"{k}={v}" for k, v in full.items()],
            "bash", stage.inside + "/tmp/docker-mailserver/user-patches.sh"]
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", c,
                           stage.root, *argv], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": PATH})


def chroot_run(stage: Stage, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A command inside the chroot with the scratch tree's files at their image paths."""
    c = stage.chroot
    script = _NAMESPACE + _binds(stage, DOVECOT_BINDS, c) + 'exec chroot "$root" "$@"\n'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", c,
                           stage.root, *argv], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": PATH})


def _stop_session(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM to the session leader, SIGKILL to whatever of its session is left after timeout."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.1)
    for pid in _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


class EdgeDovecot:
    """Dovecot 2.4.1 from the chroot, started as DMS's supervisord does (`/usr/sbin/dovecot -F -c
    /etc/dovecot/dovecot.conf`) on the scratch tree. Client helpers are MailStack's."""

    source_ip = MailStack.source_ip
    _sasl = MailStack._sasl
    imap_login = MailStack.imap_login
    imap_plain_login = MailStack.imap_plain_login
    _imap_auth = MailStack._imap_auth
    log_mark = MailStack.log_mark
    log_since = MailStack.log_since
    wait_log = MailStack.wait_log
    random_client_ip = False
    # IMAP from 127.0.0.1 to 127.0.0.1 counts as secured (DMS keeps auth_allow_cleartext = no)
    client_ip: str | None = HOST

    def __init__(self, stage: Stage, imap_port: int):
        self.stage = stage
        self.imap_port = imap_port
        self.log_path = stage.path("var/log/mail/mail.log")
        self.stdout_path = os.path.join(stage.dir, "dovecot.stdout")
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        c = self.stage.chroot
        # a container's /run and /dev/shm start empty
        script = (_NAMESPACE + _binds(self.stage, DOVECOT_BINDS, c)
                  + f'mount --bind "{self.stage.root}/dev/shm" "{c}/dev/shm"\n'
                  + f'mount -t tmpfs -o mode=0755 tmpfs "{c}/run"\n'
                  + 'exec chroot "$root" /usr/sbin/dovecot -F -c /etc/dovecot/dovecot.conf\n')
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", c, self.stage.root],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": PATH})
        deadline = time.monotonic() + timeout
        sock = self.stage.path("dev/shm/sasl-auth.sock")
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._proc.returncode}:\n"
                                   + MailStack._tail(self.stdout_path) + MailStack._tail(self.log_path))
            if _port_open(self.imap_port) and os.path.exists(sock):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("DMS edge Dovecot not up:\n" + MailStack._tail(self.stdout_path)
                           + MailStack._tail(self.log_path))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        _stop_session(self._proc, timeout)
        self._proc = None


class Supervisor:
    """A real supervisord (PyPI `supervisor`, run by this Python) with DMS's supervisord.conf and the
    program file user-patches.sh wrote, their paths moved into the scratch tree; in a mount namespace
    where the scratch tree's /etc/dovecot, /etc/passwd and /etc/group are the real ones, so the program's
    `-c /etc/dovecot/...` and `user=dovecot` mean what they mean in the container."""

    PROGRAM = "etc/supervisor/conf.d/dovecot-oauth2d.conf"

    def __init__(self, stage: Stage):
        self.stage = stage
        self.conf = os.path.join(stage.dir, "supervisord.conf")
        self.program = os.path.join(stage.dir, "dovecot-oauth2d.program.conf")
        self.stdout_path = os.path.join(stage.dir, "supervisord.stdout")
        self.log_path = stage.path("var/log/mail/dovecot-oauth2d.log")
        self._proc: subprocess.Popen | None = None

    def _moved(self, text: str) -> str:
        r = self.stage.root
        for p in ("/var/log/", "/dev/shm/", "/var/run/", "/etc/supervisor/", "/usr/local/bin/"):
            text = text.replace(p, r + p)
        return text

    def write_config(self) -> None:
        conf = self._moved(open(self.stage.path("etc/supervisor/supervisord.conf")).read())
        # Only the daemon's program: DMS's dms-services.conf starts start-mailserver.sh and reads
        # variables (POSTGREY_*, FETCHMAIL_POLL) that only a container has.
        conf, n = re.subn(r"(?m)^files = .*$", f"files = {self.program}", conf)
        assert n == 1, conf
        with open(self.conf, "w") as f:
            f.write(conf)
        program = open(self.stage.path(self.PROGRAM)).read()
        with open(self.program, "w") as f:
            f.write(self._moved(program))

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        for d in ("var/log/supervisor", "var/log/mail", "var/run"):
            os.makedirs(self.stage.path(d), exist_ok=True)
        script = ("set -e\n" + _binds(self.stage, ["/etc/dovecot", "/etc/passwd", "/etc/group"], "")
                  + f'exec "{sys.executable}" -m supervisor.supervisord -c "{self.conf}"\n')
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": PATH})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"supervisord exited with {self._proc.returncode}:\n"
                                   + MailStack._tail(self.stdout_path)
                                   + MailStack._tail(self.stage.path("var/log/supervisor/supervisord.log")))
            if self.ctl("pid").returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("supervisord did not answer:\n" + MailStack._tail(self.stdout_path))

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=timeout, env={"PATH": PATH})

    def status(self, name: str = "dovecot-oauth2d") -> str:
        return self.ctl("status", name).stdout

    def wait_state(self, state: str, name: str = "dovecot-oauth2d", timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.status(name)
            if re.search(rf"\b{state}\b", out):
                return out
            time.sleep(0.2)
        return out

    def stop(self, timeout: float = 40.0) -> None:
        _stop_session(self._proc, timeout)
        self._proc = None


SUPERVISOR_FUNCTIONS = ("log", "err", "supervisord_running", "start_daemon", "stop_daemon")


def run_supervisor_functions(supervisor: "Supervisor", call: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Runs user-patches.sh's own supervisord functions (their text taken from the script) with bash on
    this host, where the PyPI supervisorctl is: `supervisorctl` on PATH is that one, with the moved
    supervisord.conf. (Inside the chroot there is no supervisor; the rest of the script runs there.)"""
    script = open(USER_PATCHES).read()
    parts = []
    for name in SUPERVISOR_FUNCTIONS:
        m = re.search(rf"^{name}\(\) \{{[^\n]*\}}$|^{name}\(\) \{{\n.*?^\}}$", script, re.M | re.S)
        assert m, f"function {name} not found in user-patches.sh"
        parts.append(m.group(0))
    consts = "\n".join(re.findall(r"^RT_(?:DAEMON|SETTINGS)=.*$", script, re.M))
    bindir = os.path.join(supervisor.stage.dir, "bin")
    os.makedirs(bindir, exist_ok=True)
    wrapper = os.path.join(bindir, "supervisorctl")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -m supervisor.supervisorctl -c "{supervisor.conf}" "$@"\n')
    os.chmod(wrapper, 0o755)
    body = "set -uo pipefail\n" + consts + "\n" + "\n".join(parts) + "\n" + call + "\n"
    return subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": bindir + ":" + PATH})


def free_ports(n: int) -> list[int]:
    return _free_ports(n)


def stage_pids(stage: Stage) -> list[int]:
    """Processes running a binary of the scratch tree (the installed daemon): none may be left after a
    test. (Dovecot's and supervisord's processes are stopped by session; see _stop_session.)"""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
        except OSError:
            continue
        if exe.startswith(stage.dir) and _proc_stat(int(d)):
            out.append(int(d))
    return out
