"""Issue 13: SCIM provisioning on docker-mailserver v15.1.0 (Dovecot 2.3), set up by docker/user-patches.sh.

A scratch tree laid out as the DMS v15 image has it when user-patches.sh runs (dms_root.build_tree:
Debian 12's stock /etc/dovecot and /etc/postfix with DMS v15's files, DMS's ENABLE_OAUTH2 edits, the
config volume with the script, the built module and Lua script), plus the built dovecot-oauth2d in the
config volume (where the script looks for it) and DMS's supervisord.conf. The script runs on this host
(Debian 12: its dovecot, doveconf, getent) with DMS_ROOT pointing at the tree, while a real supervisord
(PyPI `supervisor`, dms_edge.Supervisor: DMS's supervisord.conf and the program file the script wrote,
paths moved into the tree, the tree's /etc/dovecot, /etc/passwd and /etc/group bind-mounted in its mount
namespace) runs, as DMS's supervisord runs user-patches.sh: the script's own `supervisorctl` calls reach
it (a `supervisorctl` on the script's PATH that first copies the tree's program file into supervisord's
configuration, moved as dms_edge.Supervisor does). SCIM requests then go to the daemon supervisord runs.

Test-only: this machine's /tmp is not the container's, so the SCIM token file, DMS's
config folder and the mail root are given as the tree's paths (OAUTH2_SCIM_TOKEN, OAUTH2_SCIM_DMS_CONFIG_DIR,
OAUTH2_SCIM_MAIL_ROOT); the listeners are on free loopback ports (OAUTH2_LISTEN, OAUTH2_SCIM_LISTEN).
DMS v15.1.0's supervisord.conf is not among the v15 fixtures; the edge fixture's (tests/fixtures/
dms-edge-c9b015d/supervisor/supervisord.conf) stands in for it (only its socket, log and include paths
matter here).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

import dms_edge
import scim
from conftest import BUILT_MODULE
from dms_root import build_tree, run_user_patches, snapshot
from scim import ScimDaemon, user

DOMAIN = "example.test"
SETTINGS = "etc/dovecot/dovecot-oauth2.conf.ext"           # the module's
DAEMON_SETTINGS = "etc/dovecot/dovecot-oauth2d.conf.ext"   # the SCIM daemon's
SECRET = "etc/dovecot/dovecot-oauth2d.secret"
CLIENT_ID = "etc/dovecot/dovecot-oauth2d.client-id"
PASSDB_CONF = "etc/dovecot/conf.d/auth-oauth2.conf.ext"
PROGRAM = "etc/supervisor/conf.d/dovecot-oauth2d.conf"
DAEMON = "usr/local/bin/dovecot-oauth2d"
CONFIG = "tmp/docker-mailserver"
# what the module reads and runs: the same with SCIM as without
MODULE_FILES = (SETTINGS, SETTINGS + ".dms-orig", PASSDB_CONF, PASSDB_CONF + ".dms-orig",
                "etc/dovecot/lua/dovecot-oauth2.lua", "usr/local/lib/lua/5.4/dovecot_oauth2.so")


def _need(problem: str | None) -> None:
    """Skip with the reason on a developer's machine; fail in CI, where everything must be there."""
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def _problem() -> str | None:
    if importlib.util.find_spec("supervisor") is None:
        return "PyPI package supervisor is not installed (pip install supervisor)"
    if not os.access(dms_edge.BUILT_DAEMON, os.X_OK):
        return f"{dms_edge.BUILT_DAEMON} missing: run `cargo build --release` first"
    if not os.path.exists(BUILT_MODULE):
        return f"{BUILT_MODULE} missing: run `cargo build --release` first"
    return None


class Tree:
    """A v15 tree in DIR/root, with the attributes dms_edge.Supervisor and stage_pids use."""

    def __init__(self, workroot: str, name: str):
        self.dir = tempfile.mkdtemp(prefix=f"dms15-{name}-", dir=workroot)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, "root")

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def read(self, rel: str) -> str:
        with open(self.path(rel)) as f:
            return f.read()


class V15Supervisor(dms_edge.Supervisor):
    """dms_edge.Supervisor started before the script has written its program (as in the container:
    supervisord runs user-patches.sh), with a `supervisorctl` for the script's PATH."""

    def write_config(self) -> None:
        if os.path.exists(self.stage.path(self.PROGRAM)):
            return super().write_config()
        conf = self._moved(open(self.stage.path("etc/supervisor/supervisord.conf")).read())
        conf, n = re.subn(r"(?m)^files = .*$", f"files = {self.program}", conf)
        assert n == 1, conf
        with open(self.conf, "w") as f:
            f.write(conf)

    def ctl_dir(self) -> str:
        """A directory with a `supervisorctl` that copies the tree's program file into this supervisord's
        configuration (write_config), then is supervisorctl with it."""
        bindir = os.path.join(self.stage.dir, "bin")
        os.makedirs(bindir, exist_ok=True)
        wrapper = os.path.join(bindir, "supervisorctl")
        here = os.path.dirname(os.path.abspath(__file__))
        with open(wrapper, "w") as f:
            f.write(f"""#!{sys.executable}
import os, sys
sys.path.insert(0, {here!r})
import dms_edge
from test_scim_dms_v15 import Tree, V15Supervisor
tree = Tree.__new__(Tree)
tree.dir, tree.root = {self.stage.dir!r}, {self.stage.root!r}
V15Supervisor(tree).write_config()
os.execv(sys.executable, [sys.executable, "-m", "supervisor.supervisorctl", "-c", {self.conf!r}, *sys.argv[1:]])
""")
        os.chmod(wrapper, 0o755)
        return bindir


class ScimClient:
    """SCIM requests to a daemon that something else started: ScimDaemon's client methods."""

    scim = ScimDaemon.scim
    connection = ScimDaemon.connection
    create = ScimDaemon.create
    find = ScimDaemon.find
    tls = None

    def __init__(self, port: int, token: str):
        self.scim_port = port
        self.token = token

    def up(self) -> bool:
        try:
            return self.scim("GET", "/ServiceProviderConfig", timeout=2).status == 200
        except OSError:
            return False


def _make_tree(workroot: str, name: str, idp) -> Tree:
    """A new v15 tree (DMS's ENABLE_OAUTH2 edits made with the provider's URL), the daemon in the
    config volume and DMS's supervisord.conf."""
    t = Tree(workroot, name)
    build_tree(t.root, module=BUILT_MODULE, env={"ENABLE_OAUTH2": "1", "OAUTH2_INTROSPECTION_URL": idp.userinfo_url})
    shutil.copy(dms_edge.BUILT_DAEMON, t.path(CONFIG + "/dovecot-oauth2d"))
    os.makedirs(t.path("etc/supervisor/conf.d"), exist_ok=True)
    shutil.copyfile(os.path.join(dms_edge.EDGE_FILES, "supervisor/supervisord.conf"),
                    t.path("etc/supervisor/supervisord.conf"))
    return t


def _env(idp, tree: Tree, listen_port: int, scim_port: int, **extra: str) -> dict[str, str]:
    return {"ENABLE_OAUTH2": "1", "OAUTH2_INTROSPECTION_URL": idp.userinfo_url,
            "OAUTH2_LISTEN": f"127.0.0.1:{listen_port}", "OAUTH2_SCIM_LISTEN": f"127.0.0.1:{scim_port}",
            "OAUTH2_SCIM_TOKEN": "<" + tree.path(CONFIG + "/scim.token"), "OAUTH2_SCIM_DOMAINS": DOMAIN,
            "OAUTH2_SCIM_DMS_CONFIG_DIR": tree.path(CONFIG), "OAUTH2_SCIM_MAIL_ROOT": tree.path("var/mail"),
            **extra}


def _keys(text: str) -> dict[str, str]:
    out = {}
    for ln in text.splitlines():
        if "=" in ln and not ln.lstrip().startswith("#"):
            k, v = ln.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _installed(tree: Tree) -> dict[str, tuple]:
    """dms_root.snapshot of what the script installs: everything under /etc and /usr (the rest holds
    sockets, logs and the SCIM service's own data)."""
    return {f"{top}/{rel}": v for top in ("etc", "usr") for rel, v in snapshot(tree.path(top)).items()}


def _files(tree: Tree, rels) -> dict:
    snap = _installed(tree)
    return {rel: snap.get(rel) for rel in rels}


def _doveconf(tree: Tree) -> str:
    p = subprocess.run(["doveconf", "-c", tree.path("etc/dovecot/dovecot.conf"), "-n"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _daemon_pid(sv: V15Supervisor) -> int:
    m = re.search(r"RUNNING +pid (\d+)", sv.status())
    assert m, sv.status()
    return int(m.group(1))


# --- one v15 container with SCIM: supervisord running while the script runs ----------------------------

@pytest.fixture(scope="module")
def v15(workroot, idp):
    _need(_problem())
    listen_port, scim_port = dms_edge.free_ports(2)
    t = _make_tree(workroot, "scim", idp)
    env = _env(idp, t, listen_port, scim_port)
    sv = None
    try:
        token = secrets.token_hex(32)
        with open(t.path(CONFIG + "/scim.token"), "w") as f:
            f.write(token + "\n")
        os.chmod(t.path(CONFIG + "/scim.token"), 0o600)
        sv = V15Supervisor(t)
        sv.start()
        p = run_user_patches(t.root, env, path_prefix=sv.ctl_dir())
        assert p.returncode == 0, p.stdout + p.stderr
        client = ScimClient(scim_port, token)
        scim.wait_for(client.up, what="the SCIM listener")
        yield {"tree": t, "env": env, "patches": p, "supervisor": sv, "client": client,
               "listen_port": listen_port, "scim_port": scim_port}
    finally:
        if sv:
            sv.stop()
        leftover = dms_edge.stage_pids(t)
        if not os.environ.get("KEEP_E2E_DIR") and not leftover:
            shutil.rmtree(t.dir, ignore_errors=True)
        assert not leftover, f"processes left running from {t.dir}: {leftover}"


class TestScimOnV15:
    def test_script_switches_the_passdb_and_starts_scim_under_supervisord(self, v15):
        out = v15["patches"].stdout
        assert "switched the oauth2 passdb to dovecot-oauth2" in out, out
        assert "dovecot-oauth2d runs under supervisord" in out, out
        assert f"SCIM provisioning: dovecot-oauth2d on 127.0.0.1:{v15['scim_port']} (root," in out, out
        assert v15["patches"].stderr == ""

    def test_daemon_settings_are_the_modules_plus_a_loopback_listener_and_the_scim_keys(self, v15, idp):
        t = v15["tree"]
        daemon, module = _keys(t.read(DAEMON_SETTINGS)), _keys(t.read(SETTINGS))
        listener = {"listen", "listen_client_id", "listen_client_secret"}
        scim_keys = {k: v for k, v in daemon.items() if k.startswith("scim_")}
        # (OAUTH2_LISTEN lands in the module's file too, as every OAUTH2_<KEY> does; the module ignores it)
        assert {k: v for k, v in daemon.items() if k not in listener and k not in scim_keys} == \
            {k: v for k, v in module.items() if k not in listener}
        assert module["introspection_url"] == idp.userinfo_url
        assert daemon["listen"] == f"127.0.0.1:{v15['listen_port']}"
        assert re.fullmatch(r"[0-9a-f]{24}", daemon["listen_client_id"])
        assert daemon["listen_client_id"] == t.read(CLIENT_ID).strip()
        assert daemon["listen_client_secret"] == "</etc/dovecot/dovecot-oauth2d.secret"
        assert re.fullmatch(r"[0-9a-f]{48}\n", t.read(SECRET))
        assert scim_keys == {"scim_listen": f"127.0.0.1:{v15['scim_port']}",
                             "scim_token": v15["env"]["OAUTH2_SCIM_TOKEN"], "scim_domains": DOMAIN,
                             "scim_dms_config_dir": t.path(CONFIG), "scim_mail_root": t.path("var/mail")}

    def test_module_settings_hold_no_scim_key(self, v15):
        assert "scim_" not in v15["tree"].read(SETTINGS)

    def test_daemon_files_are_roots_alone(self, v15):
        t = v15["tree"]
        for rel in (DAEMON_SETTINGS, SECRET, CLIENT_ID):
            s = os.stat(t.path(rel))
            assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o600, 0, 0), rel

    def test_supervisord_program_runs_the_daemon_as_root_from_its_own_settings(self, v15):
        t, sv = v15["tree"], v15["supervisor"]
        program = t.read(PROGRAM)
        assert re.search(r"^user=root$", program, re.M), program
        assert re.search(r"^command=/usr/local/bin/dovecot-oauth2d -c /etc/dovecot/dovecot-oauth2d\.conf\.ext$",
                         program, re.M), program
        assert re.search(r"^autostart=true$", program, re.M), program
        pid = _daemon_pid(sv)
        assert os.stat(f"/proc/{pid}").st_uid == 0
        assert os.readlink(f"/proc/{pid}/exe") == t.path(DAEMON)
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        assert argv[1:] == [b"-c", b"/etc/dovecot/dovecot-oauth2d.conf.ext"]
        assert open(t.path(DAEMON), "rb").read() == open(dms_edge.BUILT_DAEMON, "rb").read()

    def test_scim_post_users_creates_the_account_line_in_postfix_accounts_cf(self, v15):
        t, c = v15["tree"], v15["client"]
        assert "uma@example.test" not in scim.accounts(t.path(CONFIG))
        r = c.scim("POST", "/Users", user("uma@example.test", "uma@example.test", "uma.alias@example.test"))
        assert r.status == 201, r.text
        held = scim.accounts(t.path(CONFIG))
        assert held["uma@example.test"].startswith("{SSHA512}"), held
        assert scim.aliases(t.path(CONFIG))["uma.alias@example.test"] == ["uma@example.test"]
        # DMS's own accounts file format: one `address|{SCHEME}hash` line, which _create_accounts reads
        line = [ln for ln in t.read(CONFIG + "/postfix-accounts.cf").splitlines() if ln.startswith("uma@")]
        assert len(line) == 1 and re.fullmatch(r"uma@example\.test\|\{SSHA512\}\S+", line[0]), line

    def test_a_wrong_token_is_refused(self, v15):
        r = v15["client"].scim("GET", "/Users", token="x" * 64)
        assert r.status == 401, r.text

    def test_rerun_gives_identical_files_and_restarts_the_daemon(self, v15):
        t, sv = v15["tree"], v15["supervisor"]
        before, pid = _installed(t), _daemon_pid(sv)
        p = run_user_patches(t.root, v15["env"], path_prefix=sv.ctl_dir())
        assert p.returncode == 0 and "dovecot-oauth2d runs under supervisord" in p.stdout, p.stdout + p.stderr
        assert _installed(t) == before
        assert _daemon_pid(sv) != pid
        scim.wait_for(v15["client"].up, what="the SCIM listener after the restart")

    def test_container_restart_gets_the_scim_daemon_from_supervisord_alone(self, v15):
        sv, c = v15["supervisor"], v15["client"]
        c.create(user("vic@example.test"))
        sv.stop()
        assert not c.up()
        sv.start()
        assert "RUNNING" in sv.wait_state("RUNNING"), sv.status() + dms_edge.MailStack._tail(sv.log_path)
        scim.wait_for(c.up, what="the SCIM listener after supervisord's start")
        found = c.find('userName eq "vic@example.test"').json["Resources"]
        assert [u["userName"] for u in found] == ["vic@example.test"]


# --- SCIM that cannot run: the module's switch stays ------------------------------------------------------

def test_a_short_scim_token_turns_scim_off_and_says_why_and_the_module_switch_stays(workroot, idp):
    _need(_problem())
    listen_port, scim_port = dms_edge.free_ports(2)
    t = _make_tree(workroot, "bad", idp)
    env = _env(idp, t, listen_port, scim_port, OAUTH2_SCIM_TOKEN="too-short")
    try:
        p = run_user_patches(t.root, env)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "switched the oauth2 passdb to dovecot-oauth2" in p.stdout, p.stdout
        assert re.search(r"^\[dovecot-oauth2\] ERROR: SCIM: dovecot-oauth2d -t: .*scim_token.*at least 32 characters",
                         p.stderr, re.M), p.stderr
        assert "[dovecot-oauth2] ERROR: SCIM provisioning is off on this container" in p.stderr, p.stderr
        assert "not switched" not in p.stderr
        for rel in (PROGRAM, DAEMON_SETTINGS):
            assert not os.path.exists(t.path(rel)), rel
        conf = _doveconf(t)
        assert re.search(r"^\s*driver = lua$", conf, re.M) and not re.search(r"^\s*driver = oauth2$", conf, re.M)
        with_bad_scim = _files(t, MODULE_FILES)
        # the module's files are what a run without any OAUTH2_SCIM_* variable writes
        plain = run_user_patches(t.root, {k: v for k, v in env.items() if not k.startswith("OAUTH2_SCIM_")})
        assert plain.returncode == 0 and plain.stderr == "", plain.stdout + plain.stderr
        assert _files(t, MODULE_FILES) == with_bad_scim
        # DOVECOT_OAUTH2_STRICT=1: the script fails, the switch stays
        strict = run_user_patches(t.root, {**env, "DOVECOT_OAUTH2_STRICT": "1"})
        assert strict.returncode == 1 and "SCIM provisioning is off" in strict.stderr, strict.stderr
        assert _files(t, MODULE_FILES) == with_bad_scim
    finally:
        shutil.rmtree(t.dir, ignore_errors=True)


def test_scim_off_on_a_rerun_takes_out_the_daemon_an_earlier_run_set_up(workroot, idp):
    _need(_problem())
    listen_port, scim_port = dms_edge.free_ports(2)
    t = _make_tree(workroot, "off", idp)
    with open(t.path(CONFIG + "/scim.token"), "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    env = _env(idp, t, listen_port, scim_port)
    try:
        first = run_user_patches(t.root, env)
        assert first.returncode == 0 and "SCIM provisioning: dovecot-oauth2d" in first.stdout, first.stdout + first.stderr
        assert os.path.exists(t.path(PROGRAM)) and os.path.exists(t.path(DAEMON_SETTINGS))
        # the token file is gone now: the daemon's check cannot read it
        os.remove(t.path(CONFIG + "/scim.token"))
        p = run_user_patches(t.root, env)
        assert p.returncode == 0, p.stdout + p.stderr
        assert re.search(r"^\[dovecot-oauth2\] ERROR: SCIM: dovecot-oauth2d -t: .*scim_token.*cannot read", p.stderr,
                         re.M), p.stderr
        for rel in (PROGRAM, DAEMON_SETTINGS):
            assert not os.path.exists(t.path(rel)), rel
        assert re.search(r"^\s*driver = lua$", _doveconf(t), re.M)
    finally:
        shutil.rmtree(t.dir, ignore_errors=True)
