"""Issue 14, point 1: README.md's "Install on Debian 12" works as written, on Debian's stock config.

The README's own code blocks are applied, in their order, to a private copy of the configuration a
fresh install of the dovecot packages leaves in /etc/dovecot (pristine.py: from the packages' files,
never the machine's /etc/dovecot). Each block the install uses is marked in README.md by a comment
right above it:

    <!-- test:plain-debian12:packages -->      apt-get install ...: the packages must be installed here
    <!-- test:plain-debian12:sh -->            shell commands, run as written (as root, from the checkout)
    <!-- test:plain-debian12:file=PATH -->     the whole content of a new file PATH
    <!-- test:plain-debian12:patch=PATH -->    a unified diff against Debian's PATH
    <!-- test:plain-debian12:verify -->        the README's check with a token ($TOKEN), run after start

Everything runs in a private mount namespace (`unshare -m`) where a scratch tree is bind-mounted over
/etc/dovecot, /usr/local, /var/mail, /var/lib/dovecot, /var/log and /run, so the README's absolute
paths are used unchanged and nothing of the machine's is touched. The only test-only settings are the
network and the log, in /etc/dovecot/local.conf (Debian's dovecot.conf includes it last): listeners on
free ports of 127.0.0.1 (imaps and pop3 off), log_path = /var/log/dovecot.log. The values an admin
substitutes are replaced by the test's: the provider URL by the test provider's, example.com by
example.test (the provider's users), localhost by 127.0.0.1 and the test's IMAP port.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import ssl
import subprocess
import tempfile
import time

import imaplib
import pytest

import pristine
from conftest import ROOT
from mailstack import HOST, _free_ports, _IMAP4, _port_open, _session_pids, xoauth2_string

README = os.path.join(ROOT, "README.md")
# a marker, then a fenced block at the same indentation (blocks inside a numbered list are indented)
MARK = re.compile(r"^( *)<!-- test:plain-debian12:(\w+)(?:=(\S+))? -->\n\1```[\w-]*\n(.*?)^\1```$", re.M | re.S)
BINDS = ["/etc/dovecot", "/usr/local", "/var/mail", "/var/lib/dovecot", "/var/log", "/run"]
PROVIDER_IN_README = "https://auth.example.com/application/o/userinfo/"
ALICE, BOB = "alice@example.test", "bob@example.test"


def readme_blocks() -> list[tuple[str, str | None, str]]:
    """(kind, argument, content) of every marked block of README.md, in order."""
    with open(README) as f:
        found = MARK.finditer(f.read())
        return [(m.group(2), m.group(3), _dedent(m.group(4), len(m.group(1)))) for m in found]


def _dedent(text: str, n: int) -> str:
    lines = text.split("\n")
    assert all(ln[:n].strip() == "" for ln in lines), text
    return "\n".join(ln[n:] for ln in lines)


def apply_unified_diff(path: str, diff: str) -> None:
    """Applies a unified diff to path; every context and removed line must match exactly."""
    with open(path) as f:
        lines = f.read().split("\n")
    hunks = re.split(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@.*\n", diff, flags=re.M)
    offset = 0
    for start, body in zip(hunks[1::2], hunks[2::2]):
        old, new = [], []
        for ln in body.rstrip("\n").split("\n"):
            tag, text = (ln[:1], ln[1:]) if ln else (" ", "")  # an empty line: a blank context line
            if tag in (" ", "-"):
                old.append(text)
            if tag in (" ", "+"):
                new.append(text)
            assert tag in (" ", "-", "+"), f"not a diff line: {ln!r}"
        at = int(start) - 1 + offset
        assert lines[at:at + len(old)] == old, f"{path}: hunk at line {start} does not match Debian's file"
        lines[at:at + len(old)] = new
        offset += len(new) - len(old)
    with open(path, "w") as f:
        f.write("\n".join(lines))


class PlainDebianRoot:
    """The scratch tree and the namespace runner."""

    def __init__(self, root: str):
        self.root = root
        pristine.pristine_dovecot_etc(self.path("/etc/dovecot"))
        for d in BINDS[1:]:
            os.makedirs(self.path(d), exist_ok=True)
            os.chmod(self.path(d), 0o755)
        # /var/mail as Debian's base-files package makes it
        os.chown(self.path("/var/mail"), 0, 8)
        os.chmod(self.path("/var/mail"), 0o2775)
        self.log_path = self.path("/var/log/dovecot.log")
        self.stdout_path = os.path.join(os.path.dirname(root), "namespace.stdout")
        self._proc: subprocess.Popen | None = None

    def path(self, p: str) -> str:
        return self.root + p

    def _script(self, body: str) -> list[str]:
        mounts = "\n".join(f'mount --bind "{self.path(p)}" "{p}"' for p in BINDS)
        return ["unshare", "-m", "--propagation", "private", "bash", "-c",
                f"set -euo pipefail\n{mounts}\ncd {ROOT}\n{body}"]

    def sh(self, commands: str) -> subprocess.CompletedProcess:
        return subprocess.run(self._script(commands), capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def start(self, port: int, timeout: float = 30.0) -> None:
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(self._script("exec /usr/sbin/dovecot -F"), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        deadline = time.time() + timeout
        while not _port_open(port):
            if self._proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("dovecot did not start:\n" + self.log() + open(self.stdout_path).read())
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
        deadline = time.time() + 20
        while _session_pids(self._proc.pid) and time.time() < deadline:
            self._proc.poll()
            time.sleep(0.1)
        for pid in _session_pids(self._proc.pid):
            os.kill(pid, signal.SIGKILL)
        self._proc.wait(10)

    def log(self, mark: int = 0) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(mark)
                return f.read()
        except OSError:
            return ""

    def log_mark(self) -> int:
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

    def wait_log(self, mark: int, needle: str, timeout: float = 10.0) -> str:
        deadline = time.time() + timeout
        while needle not in self.log(mark) and time.time() < deadline:
            time.sleep(0.05)
        return self.log(mark)


def local_conf(imap_port: int) -> str:
    return f"""# tests/e2e/test_readme_install.py: test-only network and log settings
listen = {HOST}
log_path = /var/log/dovecot.log
protocols = imap
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def imap_starttls_login(port: int, user: str, token: str) -> tuple[bool, str]:
    """XOAUTH2 after STARTTLS (Debian's ssl = yes, snakeoil certificate, not checked), from an address
    of 127/8 other than the server's: for Dovecot a remote client, so plaintext auth needs TLS."""
    r = random.SystemRandom()  # a new address each time: Dovecot's per-address auth penalty stays off
    src = f"127.{r.randint(1, 254)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    imap = _IMAP4(HOST, port, 15, src)
    try:
        imap.starttls(ssl._create_unverified_context())
        try:
            typ, data = imap.authenticate("XOAUTH2", lambda c: b"\x01" if c else xoauth2_string(user, token).encode())
        except imaplib.IMAP4.error as e:
            return False, str(e)
        typ, data = imap.select("INBOX")
        return typ == "OK", f"SELECT {typ} {data}"
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def install_from_readme(workroot: str, idp, name: str, extra_local_conf: str = "") -> PlainDebianRoot:
    """README's install applied to Debian's stock configuration in a new tree, Dovecot started."""
    blocks = readme_blocks()
    kinds = [(k, a) for k, a, _ in blocks]
    for needed in [("packages", None), ("sh", None), ("file", "/etc/dovecot/dovecot-oauth2.conf.ext"),
                   ("file", "/etc/dovecot/conf.d/auth-oauth2.conf.ext"),
                   ("patch", "/etc/dovecot/conf.d/10-auth.conf"), ("verify", None)]:
        assert needed in kinds, f"README.md has no block marked {needed}"
    port, = _free_ports(1)
    substitutions = [(PROVIDER_IN_README, idp.userinfo_url), ("@example.com", "@example.test"),
                     ("imap://localhost/", f"imap://{HOST}:{port}/")]

    def admins_values(text: str) -> str:
        for a, b in substitutions:
            text = text.replace(a, b)
        return text

    d = tempfile.mkdtemp(prefix=f"readme-{name}-", dir=workroot)
    os.chmod(d, 0o755)
    tree = PlainDebianRoot(os.path.join(d, "root"))
    verify = []
    for kind, arg, content in blocks:
        content = admins_values(content)
        if kind == "packages":
            words = content.split()
            assert words[:2] == ["apt-get", "install"], content
            for pkg in words[2:]:
                assert pristine.installed(pkg), f"README's package {pkg} is not installed here"
        elif kind == "sh":
            p = tree.sh(content)
            assert p.returncode == 0, f"README block failed:\n{content}\n{p.stdout}{p.stderr}"
        elif kind == "file":
            assert arg.startswith("/etc/dovecot/") and not arg.endswith("/local.conf"), arg
            assert not os.path.exists(tree.path(arg)), f"{arg} exists in Debian's config: the README creates it"
            with open(tree.path(arg), "w") as f:  # as an editor makes it (umask 022)
                f.write(content)
            os.chmod(tree.path(arg), 0o644)
        elif kind == "patch":
            apply_unified_diff(tree.path(arg), content)
        elif kind == "verify":
            verify.append(content)
        else:
            raise AssertionError(f"unknown README test block kind {kind!r}")
    with open(tree.path("/etc/dovecot/local.conf"), "w") as f:
        f.write(local_conf(port) + extra_local_conf)
    p = tree.sh("doveconf -n")
    assert p.returncode == 0, p.stderr
    tree.doveconf = p.stdout
    tree.port = port
    tree.verify = verify
    tree.start(port)
    return tree


@pytest.fixture(scope="module")
def installed(workroot, idp):
    """The README's install at Debian's default log verbosity."""
    tree = install_from_readme(workroot, idp, "plain-debian12")
    yield tree
    tree.stop()


@pytest.fixture(scope="module")
def installed_verbose(workroot, idp):
    """The same with auth_verbose = yes (test-only, in local.conf): Dovecot then also logs what each
    passdb did, PAM's "pam(USER,...)" lines included."""
    tree = install_from_readme(workroot, idp, "plain-debian12-verbose", "auth_verbose = yes\n")
    yield tree
    tree.stop()


def test_the_install_adds_nothing_but_the_readmes_blocks_to_debians_configuration(installed):
    conf = installed.doveconf
    assert re.search(r"^auth_mechanisms = plain xoauth2 oauthbearer$", conf, re.M), conf
    assert "auth_verbose" not in conf, "Debian's default log verbosity (auth_verbose = no) is kept"
    # the Lua passdb comes before Debian's PAM passdb, with the module where Lua finds it
    assert conf.index("driver = lua") < conf.index("driver = pam")
    assert os.path.exists(installed.path("/usr/local/lib/lua/5.4/dovecot_oauth2.so"))
    st = os.stat(installed.path("/etc/dovecot/dovecot-oauth2.conf.ext"))
    assert (st.st_mode & 0o777, st.st_uid) == (0o640, 0)


def test_a_user_logs_in_over_imap_with_a_real_token(installed, live_idp):
    ok, text = imap_starttls_login(installed.port, ALICE, live_idp.token("alice"))
    assert ok, text + installed.log()[-3000:]
    # mail goes where the README's userdb puts it
    assert os.path.isdir(installed.path("/var/mail/vhosts/example.test/alice/Maildir"))
    st = os.stat(installed.path("/var/mail/vhosts/example.test/alice/Maildir"))
    assert (st.st_uid, st.st_gid) == (5000, 5000)


def test_the_readmes_check_with_curl_lists_the_mailboxes(installed, live_idp):
    token = live_idp.token("alice")
    for block in installed.verify:
        p = subprocess.run(["bash", "-c", block], env={"PATH": "/usr/bin:/bin", "TOKEN": token},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr + installed.log()[-2000:]
        assert "INBOX" in p.stdout, p.stdout


def test_a_refused_token_is_logged_with_its_reason_at_debians_default_verbosity(installed, live_idp):
    mark = installed.log_mark()
    ok, text = imap_starttls_login(installed.port, ALICE, live_idp.token("bob"))
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    log = installed.wait_log(mark, "dovecot-oauth2: authentication failed")
    assert re.search(rf"Warning: .*dovecot-oauth2: authentication failed: token belongs to '{BOB}', "
                     rf"not to login user '{ALICE}'", log), log


def test_a_refused_token_is_never_tried_as_a_password_by_debians_pam_passdb(installed_verbose, live_idp):
    mark = installed_verbose.log_mark()
    ok, text = imap_starttls_login(installed_verbose.port, ALICE, live_idp.token("bob"))
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    log = installed_verbose.wait_log(mark, "auth failed")
    assert "Password mismatch" in log and "pam(" not in log, log


def test_a_provider_outage_is_a_temporary_failure_and_never_reaches_pam(installed_verbose, live_idp):
    token = live_idp.token("alice")
    live_idp.stop()
    try:
        mark = installed_verbose.log_mark()
        ok, text = imap_starttls_login(installed_verbose.port, ALICE, token + "-unseen")
        assert not ok and "UNAVAILABLE" in text, text
        log = installed_verbose.wait_log(mark, "temporary failure):")
        assert "dovecot-oauth2: temporary failure: provider unreachable" in log, log
        assert "pam(" not in log, log
    finally:
        live_idp.start()


def test_a_token_of_a_user_without_a_mail_account_gets_no_mailbox(installed, live_idp):
    ok, text = imap_starttls_login(installed.port, "carol@example.test", live_idp.token("carol"))
    # the token is good, the login is not: Dovecot answers NO [UNAVAILABLE] (without TLS) or hangs up
    assert not ok and ("UNAVAILABLE" in text or "EOF" in text), text
    assert "carol@example.test" in installed.wait_log(0, "user not found from any userdbs")


def test_pristine_files_come_from_the_installed_packages_when_the_local_copy_differs():
    # pristine.py reads a package's file in place only when dpkg's checksum says it is unchanged;
    # otherwise (forced here) from the .deb of the installed version, fetched with apt-get download.
    for pkg, path in (("dovecot-core", "/usr/share/dovecot/conf.d/10-auth.conf"),
                      ("postfix", "/etc/postfix/postfix-files")):
        fetched = pristine.package_file(pkg, path, force_download=True)
        assert fetched != path and fetched.endswith(path), fetched
        with open(fetched, "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == pristine._checksums(pkg)[path]
