"""Issue 11: docker/user-patches.sh against docker-mailserver edge (c9b015d: Debian 13, Dovecot 2.4.1).

A scratch tree inside the trixie chroot holds what the DMS edge image has when user-patches.sh runs
(dms_edge.build_tree: Debian 13's pristine /etc/dovecot with DMS edge's files over it, DMS's own
ENABLE_OAUTH2 edits, passwd-file accounts, DMS's supervisord configuration, the config volume with the
script and the built dovecot-oauth2d). The script runs inside the chroot (its dovecot, doveconf and
getent are Debian 13's) with DMS_ROOT pointing at the tree; then dovecot-oauth2d runs from the settings
the script wrote under a real supervisord with the program file the script wrote, and the real Dovecot
2.4.1 runs from the patched tree against the real oidc-provider.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import stat

import pytest

import dms_edge
from dms_edge import ACCOUNTS, EdgeDovecot, Stage, Supervisor, build_tree, run_user_patches
from dms_root import snapshot
from dovecot24 import chroot_dir, chroot_problem

ALICE, BOB = "alice@example.test", "bob@example.test"
PASSDB_CONF = "etc/dovecot/conf.d/auth-oauth2.conf.ext"
SETTINGS = "etc/dovecot/dovecot-oauth2.conf.ext"
SECRET = "etc/dovecot/dovecot-oauth2d.secret"
PROGRAM = "etc/supervisor/conf.d/dovecot-oauth2d.conf"
DAEMON = "usr/local/bin/dovecot-oauth2d"


def _need(problem: str | None) -> None:
    """Skip with the reason on a developer's machine; fail in CI, where everything must be there."""
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def _supervisor_problem() -> str | None:
    if importlib.util.find_spec("supervisor") is None:
        return "PyPI package supervisor is not installed (pip install supervisor)"
    return None


def _daemon_problem() -> str | None:
    if not os.access(dms_edge.BUILT_DAEMON, os.X_OK):
        return f"{dms_edge.BUILT_DAEMON} missing: run `cargo build --release` first"
    return None


@pytest.fixture(scope="module")
def chroot():
    _need(chroot_problem())
    c = chroot_dir()
    _need(dms_edge.pristine_problem(c))
    return c


@pytest.fixture(scope="module")
def daemon():
    _need(_daemon_problem())
    return dms_edge.BUILT_DAEMON


def _env(idp, listen_port: int | None = None, **extra) -> dict[str, str]:
    env = {"ENABLE_OAUTH2": "1", "OAUTH2_INTROSPECTION_URL": idp.userinfo_url,
           # the test IdP (node) closes idle keep-alive connections after 5 s
           "OAUTH2_MAX_IDLE_TIME_MSECS": "2000"}
    if listen_port:
        env["OAUTH2_LISTEN"] = f"127.0.0.1:{listen_port}"  # test only: a free port instead of 7662
    env.update(extra)
    return env


@pytest.fixture
def new_stage(chroot, idp, request):
    """new_stage(env=..., daemon=path|None, enable_oauth2=True) -> a built Stage, removed afterwards."""
    made: list[Stage] = []

    def make(*, env: dict[str, str] | None = None, daemon: str | None = None, enable_oauth2: bool = True,
             imap_port: int = 143) -> Stage:
        st = Stage(chroot)
        made.append(st)
        build_tree(st, env=env or _env(idp), imap_port=imap_port, daemon=daemon, enable_oauth2=enable_oauth2)
        return st

    yield make
    for st in made:
        assert not dms_edge.stage_pids(st), f"processes left running from {st.dir}"
        if not os.environ.get("KEEP_E2E_DIR"):
            st.remove()


def _doveconf(st: Stage) -> str:
    """doveconf -n -P of the tree, inside the chroot (Dovecot 2.4.1's own view)."""
    p = dms_edge.chroot_run(st, "/usr/bin/doveconf", "-c", "/etc/dovecot/dovecot.conf", "-n", "-P")
    assert p.returncode == 0, p.stderr
    return p.stdout


def _oauth2_block(conf: str) -> dict[str, str]:
    m = re.search(r"^oauth2 \{\n(.*?)^\}", conf, re.M | re.S)
    assert m, conf
    return dict(re.findall(r"^  (\w+) = (.*)$", m.group(1), re.M))


def _assert_dms_oauth2_in_place(st: Stage, before: dict, idp) -> None:
    """DMS's own files unchanged, nothing of ours installed, and Dovecot runs DMS's oauth2 block."""
    after = snapshot(st.root)
    for rel in (PASSDB_CONF, "etc/dovecot/conf.d/10-auth.conf"):
        assert after[rel] == before[rel], rel
    ours = [p for p in after if p.endswith(".dms-orig") or p in (SETTINGS, PROGRAM) and p not in before]
    assert not ours, ours
    block = _oauth2_block(_doveconf(st))
    assert block == {"introspection_mode": "auth", "introspection_url": idp.userinfo_url,
                     "username_attribute": "email"}, block


def _mode(st: Stage, rel: str) -> tuple[int, int, int]:
    s = os.stat(st.path(rel))
    return stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid


def _gid(st: Stage, name: str) -> int:
    return dms_edge._id(st.path("etc/group"), name)


# --- a switched DMS edge: the daemon under supervisord, Dovecot 2.4.1, real tokens ------------------

@pytest.fixture(scope="module")
def edge(chroot, daemon, idp):
    """One tree switched by user-patches.sh; dovecot-oauth2d under supervisord; Dovecot 2.4.1 on it."""
    _need(_supervisor_problem())
    st = Stage(chroot)
    imap_port, listen_port = dms_edge.free_ports(2)
    env = _env(idp, listen_port)
    sv = dov = None
    try:
        build_tree(st, env=env, imap_port=imap_port, daemon=daemon)
        p = run_user_patches(st, env)
        assert p.returncode == 0 and "switched Dovecot 2.4.1" in p.stdout, p.stdout + p.stderr
        sv = Supervisor(st)
        sv.start()
        # DMS's supervisord runs user-patches.sh: the script's own start_daemon adds and starts the program
        started = dms_edge.run_supervisor_functions(sv, "start_daemon")
        assert started.returncode == 0, started.stdout + started.stderr + dms_edge.MailStack._tail(sv.log_path)
        assert "dovecot-oauth2d runs under supervisord" in started.stdout, started.stdout
        status = sv.status()
        assert "RUNNING" in status, status + dms_edge.MailStack._tail(sv.log_path)
        dov = EdgeDovecot(st, imap_port)
        dov.start()
        yield {"stage": st, "supervisor": sv, "dovecot": dov, "patches": p, "listen_port": listen_port}
    finally:
        if dov:
            dov.stop()
        if sv:
            sv.stop()
        leftover = dms_edge.stage_pids(st)
        if not os.environ.get("KEEP_E2E_DIR") and not leftover:
            st.remove()
        assert not leftover, f"processes left running from {st.dir}: {leftover}"


def _daemon_pid(sv: Supervisor) -> int:
    m = re.search(r"pid (\d+)", sv.status())
    assert m, sv.status()
    return int(m.group(1))


class TestSwitchedEdge:
    def test_script_says_it_switched_and_that_supervisord_starts_the_daemon(self, edge):
        out = edge["patches"].stdout
        assert "switched Dovecot 2.4.1" in out and "to dovecot-oauth2d on 127.0.0.1:" in out, out
        # no supervisord inside the chroot: the script says how to start the daemon by hand
        assert "start the daemon with '/usr/local/bin/dovecot-oauth2d -c /etc/dovecot/dovecot-oauth2.conf.ext'" in out
        assert edge["patches"].stderr == ""

    @pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
    def test_imap_login_with_a_real_token_succeeds(self, edge, live_idp, mech):
        dov = edge["dovecot"]
        mark = dov.log_mark()
        r = dov.imap_login(ALICE, live_idp.token("alice"), mech)
        assert r.ok, r.text + dov.log_since(mark)
        # Dovecot 2.4 logs "imap-login: Logged in: user=<...>, method=..." (2.3: "Login: user=")
        assert re.search(rf"imap-login: (Info: )?Logged in: user=<{ALICE}>, method={mech},",
                         dov.wait_log(mark, "Logged in: user=", 30))

    def test_the_daemon_asks_the_provider_once_per_token(self, edge, live_idp):
        dov = edge["dovecot"]
        token = live_idp.token("bob")
        live_idp.reset_stats()
        for mech in ("XOAUTH2", "OAUTHBEARER", "XOAUTH2"):
            assert dov.imap_login(BOB, token, mech).ok
        assert live_idp.stats().get("/me", 0) == 1, live_idp.stats()

    def test_another_users_token_is_refused(self, edge, live_idp):
        dov = edge["dovecot"]
        mark = dov.log_mark()
        r = dov.imap_login(BOB, live_idp.token("alice"), "XOAUTH2")
        assert not r.ok and "AUTHENTICATIONFAILED" in r.text, r.text
        log = dov.wait_log(mark, "(auth_failed)", 30)
        assert "(auth_failed)" in log and "Logged in: user=" not in log, log

    def test_dms_passwd_file_account_still_logs_in_with_its_password(self, edge):
        r = edge["dovecot"].imap_plain_login(BOB, ACCOUNTS[BOB])
        assert r.ok, r.text

    def test_daemon_runs_as_dovecot_from_the_settings_the_script_wrote(self, edge):
        st, sv = edge["stage"], edge["supervisor"]
        pid = _daemon_pid(sv)
        uid = os.stat(f"/proc/{pid}").st_uid
        assert uid == dms_edge._id(st.path("etc/passwd"), "dovecot")
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        assert argv[0].endswith(b"/usr/local/bin/dovecot-oauth2d")
        assert argv[1:] == [b"-c", b"/etc/dovecot/dovecot-oauth2.conf.ext"]
        assert os.readlink(f"/proc/{pid}/exe") == st.path(DAEMON)
        assert open(st.path(DAEMON), "rb").read() == open(dms_edge.BUILT_DAEMON, "rb").read()

    def test_dovecot_asks_the_daemon_with_the_secret_of_the_secret_file(self, edge):
        st = edge["stage"]
        secret = st.read(SECRET).strip()
        assert re.fullmatch(r"[0-9a-f]{48}", secret)
        block = _oauth2_block(_doveconf(st))
        assert block == {
            "active_attribute": "active", "active_value": "true", "introspection_mode": "post",
            "introspection_url": f"http://dovecot:{secret}@127.0.0.1:{edge['listen_port']}/introspect",
            "username_attribute": "username", "username_validation_format": "%{user | lower}",
        }, block
        settings = st.read(SETTINGS)
        assert "listen_client_id = dovecot\n" in settings
        assert "listen_client_secret = </etc/dovecot/dovecot-oauth2d.secret\n" in settings

    def test_secret_and_files_holding_it_are_not_world_readable(self, edge):
        st = edge["stage"]
        dovecot = _gid(st, "dovecot")
        assert _mode(st, SECRET) == (0o640, 0, dovecot)
        assert _mode(st, SETTINGS) == (0o640, 0, dovecot)
        mode, uid, gid = _mode(st, PASSDB_CONF)  # holds the secret in its introspection_url
        assert (mode & 0o007, uid, gid) == (0, 0, dovecot), oct(mode)

    def test_settings_carry_the_oauth2_variables(self, edge, live_idp):
        settings = edge["stage"].read(SETTINGS)
        assert re.search(rf"^introspection_url = {re.escape(live_idp.userinfo_url)}$", settings, re.M)
        assert re.search(r"^max_idle_time_msecs = 2000$", settings, re.M), settings
        # DMS edge's own defaults for the provider side (introspection_mode auth, email)
        assert re.search(r"^introspection_mode = auth$", settings, re.M)
        assert re.search(r"^username_attribute = email$", settings, re.M)

    def test_no_token_or_secret_in_the_logs(self, edge, live_idp):
        st = edge["stage"]
        dov = edge["dovecot"]
        token = live_idp.token("alice")
        assert dov.imap_login(ALICE, token, "XOAUTH2").ok
        secret = st.read(SECRET).strip()
        for rel in ("var/log/mail/mail.log", "var/log/mail/dovecot-oauth2d.log"):
            text = open(st.path(rel), errors="replace").read()
            assert token not in text and secret not in text, rel
        assert secret not in edge["patches"].stdout + edge["patches"].stderr


    def test_second_start_restarts_the_daemon_under_supervisord(self, edge):
        # a container restart runs user-patches.sh again with supervisord already running the daemon
        sv, dov = edge["supervisor"], edge["dovecot"]
        before = _daemon_pid(sv)
        started = dms_edge.run_supervisor_functions(sv, "start_daemon")
        assert started.returncode == 0 and "runs under supervisord" in started.stdout, started.stdout + started.stderr
        assert _daemon_pid(sv) != before
        assert dov.imap_plain_login(BOB, ACCOUNTS[BOB]).ok


    def test_restarted_container_gets_the_daemon_from_supervisord_alone(self, edge, live_idp):
        # a restart keeps the switched files; supervisord starts the program by itself (autostart)
        sv, dov = edge["supervisor"], edge["dovecot"]
        sv.stop()
        assert not sv.status().strip() or "RUNNING" not in sv.status()
        sv.start()
        status = sv.wait_state("RUNNING")
        assert "RUNNING" in status, status + dms_edge.MailStack._tail(sv.log_path)
        r = dov.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
        assert r.ok, r.text


def test_start_daemon_reports_a_daemon_that_cannot_start_and_stop_daemon_removes_it(chroot, daemon, idp):
    _need(_supervisor_problem())
    st = Stage(chroot)
    sv = None
    try:
        busy, = dms_edge.free_ports(1)
        env = _env(idp, busy)
        build_tree(st, env=env, imap_port=143, daemon=daemon)
        p = run_user_patches(st, env)
        assert p.returncode == 0, p.stdout + p.stderr
        with socket.socket() as holder:  # the daemon's port is taken: it exits at once, again and again
            holder.bind(("127.0.0.1", busy))
            holder.listen()
            sv = Supervisor(st)
            sv.start()
            r = dms_edge.run_supervisor_functions(sv, "start_daemon")
            assert r.returncode == 1, r.stdout + r.stderr
            assert "dovecot-oauth2d did not start under supervisord: see /var/log/mail/dovecot-oauth2d.log" in r.stdout
            assert re.search(r"cannot start: .*127\.0\.0\.1:%d" % busy, open(sv.log_path).read()), \
                open(sv.log_path).read()
        r = dms_edge.run_supervisor_functions(sv, "stop_daemon")
        assert r.returncode == 0, r.stderr
        assert "no such process" in sv.status().lower(), sv.status()
    finally:
        if sv:
            sv.stop()
        leftover = dms_edge.stage_pids(st)
        if not leftover:
            st.remove()
        assert not leftover, leftover


# --- the script on its own ------------------------------------------------------------------------

def test_running_the_script_twice_gives_identical_files(new_stage, daemon, idp):
    env = _env(idp, OAUTH2_CACHE_TTL_SECS="120")
    st = new_stage(env=env, daemon=daemon)
    first = run_user_patches(st, env)
    assert first.returncode == 0 and "switched Dovecot 2.4.1" in first.stdout, first.stdout + first.stderr
    once = snapshot(st.root)
    second = run_user_patches(st, env)
    assert second.returncode == 0 and "switched Dovecot 2.4.1" in second.stdout, second.stdout + second.stderr
    assert snapshot(st.root) == once  # the secret too: Dovecot and the daemon keep agreeing
    assert "introspection_mode = post" in st.read(PASSDB_CONF)


def test_default_listener_is_127_0_0_1_port_7662(new_stage, daemon, idp):
    env = _env(idp)
    st = new_stage(env=env, daemon=daemon)
    p = run_user_patches(st, env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^listen = 127\.0\.0\.1:7662$", st.read(SETTINGS), re.M)
    assert _oauth2_block(_doveconf(st))["introspection_url"].endswith("@127.0.0.1:7662/introspect")


def test_enable_oauth2_unset_changes_nothing(new_stage, daemon, idp):
    st = new_stage(daemon=daemon)
    before = snapshot(st.root)
    for env in ({"OAUTH2_INTROSPECTION_URL": idp.userinfo_url}, {"ENABLE_OAUTH2": "0"}):
        p = run_user_patches(st, env)
        assert p.returncode == 0 and "nothing to do" in p.stdout, p.stdout + p.stderr
        assert snapshot(st.root) == before


def test_unknown_oauth2_key_is_refused_and_dms_config_left_in_place(new_stage, daemon, idp):
    env = _env(idp, OAUTH2_CACHE_TTL="60")
    st = new_stage(env=env, daemon=daemon)
    before = snapshot(st.root)
    p = run_user_patches(st, env)
    assert p.returncode == 0
    assert "OAUTH2_CACHE_TTL: 'cache_ttl' is not a dovecot-oauth2 setting" in p.stderr, p.stderr
    assert "[dovecot-oauth2] ERROR: not switched" in p.stderr
    assert snapshot(st.root) == before
    _assert_dms_oauth2_in_place(st, before, idp)
    # DOVECOT_OAUTH2_STRICT=1: the same, but the script fails (DMS then stops the container)
    p = run_user_patches(st, {**env, "DOVECOT_OAUTH2_STRICT": "1"})
    assert p.returncode == 1 and snapshot(st.root) == before


def test_unknown_key_on_a_rerun_puts_dms_original_back(new_stage, daemon, idp):
    st = new_stage(daemon=daemon)
    before = snapshot(st.root)
    assert run_user_patches(st, _env(idp)).returncode == 0
    assert "introspection_mode = post" in st.read(PASSDB_CONF)
    p = run_user_patches(st, _env(idp, OAUTH2_NO_SUCH_KEY="x"))
    assert "OAUTH2_NO_SUCH_KEY: 'no_such_key' is not a dovecot-oauth2 setting" in p.stderr, p.stderr
    assert "restored docker-mailserver's original" in p.stdout, p.stdout
    _assert_dms_oauth2_in_place(st, before, idp)
    after = snapshot(st.root)
    assert SETTINGS not in after and PROGRAM not in after


def test_settings_the_daemon_would_refuse_are_not_installed(new_stage, daemon, idp):
    # introspection_mode = local without a key source: the script's own check refuses it
    env = _env(idp, OAUTH2_INTROSPECTION_MODE="local")
    st = new_stage(env=env, daemon=daemon)
    before = snapshot(st.root)
    p = run_user_patches(st, env)
    assert "introspection_mode = local needs OAUTH2_OPENID_CONFIGURATION_URL or OAUTH2_JWKS_URL" in p.stderr, \
        p.stderr
    assert snapshot(st.root) == before


def test_settings_the_daemon_itself_refuses_are_not_installed(new_stage, daemon, idp):
    # max_token_bytes must be at least 64: only the daemon's own check (-t) knows
    env = _env(idp, OAUTH2_MAX_TOKEN_BYTES="5")
    st = new_stage(env=env, daemon=daemon)
    before = snapshot(st.root)
    p = run_user_patches(st, env)
    assert p.returncode == 0
    assert re.search(r"ERROR: dovecot-oauth2d -t: .*/etc/dovecot/dovecot-oauth2\.conf\.ext line \d+: .*max_token_bytes"
                     r".*must be between 64 and 1048576", p.stderr), p.stderr
    assert "not switched" in p.stderr
    assert snapshot(st.root) == before


def test_daemons_warnings_about_the_settings_are_passed_on(new_stage, daemon, idp):
    env = _env(idp, OAUTH2_INTROSPECTION_MODE="local", OAUTH2_OPENID_CONFIGURATION_URL=idp.discovery_url)
    st = new_stage(env=env, daemon=daemon)
    p = run_user_patches(st, env)
    assert p.returncode == 0 and "switched Dovecot 2.4.1" in p.stdout, p.stdout + p.stderr
    assert "[dovecot-oauth2] dovecot-oauth2d -t: warning: /etc/dovecot/dovecot-oauth2.conf.ext: introspection_mode = " \
           "local without audience" in p.stdout, p.stdout


def test_daemons_own_keys_cannot_be_set_from_variables(new_stage, daemon, idp):
    env = _env(idp, OAUTH2_LISTEN_CLIENT_SECRET="guessable")
    st = new_stage(env=env, daemon=daemon)
    before = snapshot(st.root)
    p = run_user_patches(st, env)
    assert "OAUTH2_LISTEN_CLIENT_SECRET: 'listen_client_secret' is set by this script" in p.stderr, p.stderr
    assert snapshot(st.root) == before


def test_listener_off_loopback_is_refused(new_stage, daemon, idp):
    env = _env(idp, OAUTH2_LISTEN="0.0.0.0:7662")
    st = new_stage(env=env, daemon=daemon)
    before = snapshot(st.root)
    p = run_user_patches(st, env)
    assert "OAUTH2_LISTEN='0.0.0.0:7662': Dovecot reaches the daemon on loopback" in p.stderr, p.stderr
    assert snapshot(st.root) == before


def test_failed_doveconf_check_restores_dms_original(new_stage, daemon, idp):
    # DMS did not enable the include (ENABLE_OAUTH2 handling skipped): the daemon's block is not in
    # Dovecot's configuration after the switch, so the script must undo it.
    st = new_stage(daemon=daemon, enable_oauth2=False)
    before = snapshot(st.root)
    p = run_user_patches(st, _env(idp))
    assert "the daemon's oauth2 block is not in Dovecot's configuration" in p.stderr, p.stderr
    assert "restored docker-mailserver's original" in p.stdout, p.stdout
    after = snapshot(st.root)
    assert after[PASSDB_CONF] == before[PASSDB_CONF]
    assert not [k for k in after if k.endswith(".dms-orig") or k in (SETTINGS, PROGRAM)]


# --- a broken install: DMS's own oauth2 configuration keeps working -------------------------------

def test_missing_daemon_binary_leaves_dms_original_working(new_stage, live_idp):
    imap_port, = dms_edge.free_ports(1)
    env = _env(live_idp)
    st = new_stage(env=env, daemon=None, imap_port=imap_port)
    before = snapshot(st.root)
    p = run_user_patches(st, env)
    assert p.returncode == 0
    assert "Dovecot 2.4.1-4: no dovecot-oauth2d; put it (built on Debian 12 or 13)" in p.stderr, p.stderr
    assert "not switched: docker-mailserver's own oauth2 {} settings" in p.stderr
    assert snapshot(st.root) == before
    _assert_dms_oauth2_in_place(st, before, live_idp)
    # and DMS's configuration runs: Dovecot 2.4.1's own oauth2 client asks userinfo, passwords work
    dov = EdgeDovecot(st, imap_port)
    dov.start()
    try:
        live_idp.reset_stats()
        r = dov.imap_login(ALICE, live_idp.token("alice"), "XOAUTH2")
        assert r.ok, r.text + dov.log_since(0)[-3000:]
        assert live_idp.stats().get("/me", 0) == 1
        assert dov.imap_plain_login(BOB, ACCOUNTS[BOB]).ok
    finally:
        dov.stop()
