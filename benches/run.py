#!/usr/bin/env python3
"""Benchmark runner (issue 5): every scenario against one private Dovecot 2.3 on this machine, in one run.

    python3 benches/run.py            # full run (about 10-15 minutes on 2 cores), writes BENCHMARKS.md
    python3 benches/run.py --quick    # a smoke run with small counts (about 3 minutes), writes nothing
                                      # unless --write is given

Must run as root (Dovecot drops privileges itself), with Dovecot 2.3 and dovecot-auth-lua installed
(tests/setup.sh). Builds the module (cargo build --release in the repository) and the benchmark tools
(benches/: authbench, idp-stub). Everything listens on 127.0.0.1 only and stops by itself: each load
run is a fixed number of logins with a time limit, the stub exits after --max-seconds, Dovecot is
stopped after each scenario.

What it measures (see BENCHMARKS.md for the figures):
  ceiling                   Lua passdb whose auth_password_verify returns OK at once (same passdb
                            settings as the module: blocking=yes, auth-workers)
  dovecot-oauth2 builtin    passdb { driver = oauth2 }, userinfo and RFC 7662 introspection modes,
                            Dovecot's auth cache off and on
  module cold / warm        dovecot-oauth2 with every token new / 1,000 users logging in again
  module local JWT          introspection_mode = local, RS256, every token new
  provider latency          0 ms and 20 ms (the stub's fixed latency)
  provider requests         per 1,000 logins, from the stub's counters
  RSS                       one auth-worker holding 100,000 cached tokens
  IMAP                      real AUTHENTICATE over TCP for a smaller count
  real IdP                  the test suite's oidc-provider, userinfo and introspection, cold
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from mailstack import MailStack, _cmdline  # noqa: E402

BIN = os.path.join(HERE, "target", "release")
MODULE_SO = os.path.join(ROOT, "target", "release", "libdovecot_oauth2.so")
DAEMON = os.path.join(ROOT, "target", "release", "dovecot-oauth2d")
DAEMON_ID = "bench"
DAEMON_SECRET = "bench-secret-" + "0123456789abcdef"
LUA_SCRIPT = os.path.join(ROOT, "lua", "dovecot-oauth2.lua")
ISSUER = "https://idp.bench.test"
AUDIENCE = "urn:dovecot"
N_USERS = 1000
# issue 11's scenarios (--only daemon runs these, and the 2.3 scenarios their ratios are taken against)
DAEMON_GROUPS = ("d24-0", "d24-20", "d23-daemon", "rss-daemon")
DAEMON_COMPARED = ("ceiling", "builtin-in", "module-in-cold", "module-in-warm", "builtin-in-20", "builtin-in-par-20",
                   "module-in-cold-20")

CEILING_LUA = """-- benchmark ceiling: accept every login at once (the cost of Dovecot itself)
function script_init() return 0 end
function script_deinit() end
function auth_password_verify(req, token)
  return dovecot.auth.PASSDB_RESULT_OK, ""
end
function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "verify only"
end
"""


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------- Dovecot

class BenchStack(MailStack):
    """MailStack with the benchmark's users, no Postfix, quiet logs, and optionally Dovecot's own
    oauth2 passdb in place of the Lua one (the generated Lua passdb block is replaced)."""

    def __init__(self, workdir, *, builtin_conf: str | None = None, **kw):
        self._builtin_conf = builtin_conf
        kw.setdefault("users", [f"u{i:05}@bench.test" for i in range(N_USERS)])
        kw.setdefault("postfix", False)
        kw.setdefault("dovecot_submission", False)
        kw.setdefault("auth_verbose", False)
        super().__init__(workdir, **kw)

    def _write_dovecot_files(self) -> None:
        super()._write_dovecot_files()
        if not self._builtin_conf:
            return
        text = open(self.conf_path).read()
        block = ("passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                 f"  args = {self._builtin_conf}\n}}\n")
        new, n = re.subn(r"passdb \{\n  driver = lua\n.*?\n\}\n", lambda _m: block, text, count=1, flags=re.S)
        if n != 1:
            raise RuntimeError("could not replace the lua passdb block")
        with open(self.conf_path, "w") as f:
            f.write(new)


class Daemon:
    """dovecot-oauth2d (target/release, built from this tree) on 127.0.0.1, a free port it picks itself
    (`listen = 127.0.0.1:0`, read back from its startup line), with `provider` (the module's settings
    keys) plus the listener keys in its own settings file. Its stderr goes to daemon.log."""

    def __init__(self, workdir: str, name: str, provider: str):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "dovecot-oauth2d.conf")
        with open(self.conf, "w") as f:
            f.write(provider + f"listen = 127.0.0.1:0\nlisten_client_id = {DAEMON_ID}\n"
                    f"listen_client_secret = {DAEMON_SECRET}\n")
        os.chmod(self.conf, 0o600)
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.err = open(self.log_path, "w")
        self.proc = subprocess.Popen([DAEMON, "-c", self.conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err)
        deadline = time.time() + 30
        self.port = None
        while self.port is None:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", open(self.log_path).read())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("dovecot-oauth2d did not start: " + open(self.log_path).read()[-2000:])
            else:
                time.sleep(0.05)
        self.rss_started_kb = vm_rss_kb(self.proc.pid)

    def introspection_url(self) -> str:
        return f"http://{DAEMON_ID}:{DAEMON_SECRET}@127.0.0.1:{self.port}/introspect"

    def rss_kb(self) -> int | None:
        return vm_rss_kb(self.proc.pid)

    def threads(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/task"))
        except OSError:
            return 0

    def metrics(self) -> dict[str, float]:
        """GET /metrics (with the listener's credentials), as {"name{labels}": value}."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics")
        cred = base64.b64encode(f"{DAEMON_ID}:{DAEMON_SECRET}".encode()).decode()
        req.add_header("Authorization", "Basic " + cred)
        out = {}
        with urllib.request.urlopen(req, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
        return out

    def log_problems(self) -> list[str]:
        """Warning and error lines of its log (temporary failures, refusals the run did not expect)."""
        return [line for line in open(self.log_path).read().splitlines() if ": warning: " in line or ": error: " in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def bench24_stack(oauth2: dict, oauth2_extra: str = ""):
    """Dovecot 2.4.1 from the Debian 13 chroot (tests/e2e/dovecot24.py) with the benchmark's users, no Postfix,
    quiet logs, and `oauth2` as its oauth2 {} block (the mechanisms check tokens in the main auth process;
    no passdb takes part)."""
    from dovecot24 import Dovecot24Stack
    return Dovecot24Stack(oauth2=oauth2, oauth2_extra=oauth2_extra, users=[f"u{i:05}@bench.test" for i in range(N_USERS)],
                          users_without_mailbox=(), postfix=False, dovecot_submission=False, auth_verbose=False)


def auth_pids(st) -> list[int]:
    """Dovecot's auth processes of a stack (the main auth process; auth-workers too if any)."""
    return [pid for pid in st.stack_pids()["dovecot"] if re.search(r"/auth\b", _cmdline(pid))]


def cpu_secs(pids) -> float:
    """User + system CPU time of processes so far (their threads included), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all threads of a process so far."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def vm_status_kb(pid: int, field: str) -> int | None:
    """A kB figure of /proc/PID/status (VmRSS, VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_rss_kb(pid: int) -> int | None:
    return vm_status_kb(pid, "VmRSS")


# --------------------------------------------------------------------------- stub and load generator

class Stub:
    def __init__(self, workdir: str, token_files: list[str], jwks: str | None, max_seconds: int):
        self.port_file = os.path.join(workdir, "stub.port")
        args = [os.path.join(BIN, "idp-stub"), "serve", "--tokens", ",".join(token_files),
                "--port-file", self.port_file, "--max-seconds", str(max_seconds), "--issuer", ISSUER]
        if jwks:
            args += ["--jwks", jwks]
        self.out = open(os.path.join(workdir, "stub.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("idp-stub did not start: " + open(self.out.name).read())
            time.sleep(0.05)
        self.port = int(open(self.port_file).read())
        self.base = f"http://127.0.0.1:{self.port}"

    def _post(self, path: str, body: str = "") -> dict:
        req = urllib.request.Request(self.base + path, data=body.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base + "/__stats", timeout=10) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        self._post("/__reset")

    def revoke(self, token: str) -> None:
        self._post("/__revoke", "token=" + urllib.request.quote(token, safe=""))

    def latency(self, ms: int) -> None:
        self._post("/__latency", f"ms={ms}")

    def stop(self) -> None:
        try:
            self._post("/__quit")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def authbench(mode: str, target: dict, tokens: str, logins: int, concurrency: int, *, offset: int = 0,
              distinct: int = 0, label: str = "", timeout: int = 240) -> dict:
    args = [os.path.join(BIN, "authbench"), mode, "--tokens", tokens, "--logins", str(logins),
            "--concurrency", str(concurrency), "--offset", str(offset), "--distinct", str(distinct),
            "--label", label or mode, "--timeout-secs", str(timeout)]
    for k, v in target.items():
        args += [f"--{k}", str(v)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 30)
    if p.returncode != 0:
        raise RuntimeError(f"authbench failed: {p.stderr}{p.stdout}")
    for line in p.stdout.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise RuntimeError("authbench printed no JSON line: " + p.stdout)


# --------------------------------------------------------------------------- the run

class Runner:
    def __init__(self, args):
        self.a = args
        self.work = tempfile.mkdtemp(prefix="o2bench-", dir="/tmp")
        os.chmod(self.work, 0o755)
        self.results: list[dict] = []
        self.notes: list[str] = []
        self.cold_cursor = 0  # next unused line of the opaque token file
        self.jwt_cursor = 0
        self.max_workers_seen = 0
        self.loads: list[tuple[str, float]] = []  # (scenario, 1-minute load average when it started)

    # ---- preparation
    def build(self):
        if not self.a.no_build:
            log("building the module and the benchmark tools ...")
            subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
            subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=HERE, check=True)
        self.module_dir = os.path.join(self.work, "lib")
        os.makedirs(self.module_dir, exist_ok=True)
        shutil.copy(MODULE_SO, os.path.join(self.module_dir, "dovecot_oauth2.so"))
        self.ceiling_lua = os.path.join(self.work, "ceiling.lua")
        with open(self.ceiling_lua, "w") as f:
            f.write(CEILING_LUA)

    def make_tokens(self):
        a = self.a
        self.opaque = os.path.join(self.work, "opaque.tsv")
        self.warm = os.path.join(self.work, "warm.tsv")
        self.jwt = os.path.join(self.work, "jwt.tsv")
        self.jwks = os.path.join(self.work, "jwks.json")
        stub = os.path.join(BIN, "idp-stub")
        n_opaque = a.rss_tokens + 16 * a.cold + 20 * a.cold20 + 20 * a.builtin20 + 5000
        # issue 11: 2.4 and the daemon (cold runs, priming, the daemon's RSS set)
        n_opaque += a.reps * (5 * a.cold + 3 * a.cold24_20 + 4 * a.cold20 + a.builtin20) + 14 * a.prime + a.rss_tokens
        t0 = time.time()
        subprocess.run([stub, "gen", "--count", str(n_opaque), "--users", str(N_USERS), "--out", self.opaque,
                        "--prefix", "bt"], check=True)
        subprocess.run([stub, "gen", "--count", str(N_USERS), "--users", str(N_USERS), "--out", self.warm,
                        "--prefix", "warm"], check=True)
        n_jwt = a.reps * (a.jwt + a.jwt + a.imap) + 3 * a.prime + 1000
        subprocess.run([stub, "mint", "--count", str(n_jwt), "--users", str(N_USERS), "--out", self.jwt,
                        "--jwks-out", self.jwks, "--alg", "RS256", "--issuer", ISSUER, "--audience", AUDIENCE,
                        "--ttl-secs", "7200"], check=True)
        log(f"tokens: {n_opaque} opaque, {N_USERS} warm, {n_jwt} RS256 JWTs in {time.time() - t0:.1f} s")

    def settings(self, name: str, text: str) -> str:
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)  # the builtin driver reads it as the dovecot user
        return path

    def write_settings(self):
        s = self.stub.base
        common = "username_attribute = email\n"
        self.conf = {
            "userinfo": self.settings("userinfo.conf", f"introspection_url = {s}/userinfo\nintrospection_mode = auth\n{common}"),
            "introspect": self.settings("introspect.conf", f"introspection_url = {s}/introspect\nintrospection_mode = post\n{common}"),
            "local": self.settings("local.conf", f"introspection_mode = local\njwks_url = {s}/jwks={ISSUER}\nissuers = {ISSUER}\n"
                                                 f"audience = {AUDIENCE}\n{common}"),
            # Dovecot's defaults allow one connection to the provider at a time; a tuned variant:
            "userinfo-par": self.settings("userinfo-par.conf", f"introspection_url = {s}/userinfo\nintrospection_mode = auth\n"
                                                               f"max_parallel_connections = 32\n{common}"),
            "introspect-par": self.settings("introspect-par.conf", f"introspection_url = {s}/introspect\nintrospection_mode = post\n"
                                                                   f"max_parallel_connections = 32\n{common}"),
            "userinfo-nocache": self.settings("userinfo-nocache.conf", f"introspection_url = {s}/userinfo\nintrospection_mode = auth\n"
                                                                       f"cache_ttl_secs = 0\n{common}"),
        }

    # ---- stacks
    def stack(self, name: str, kind: str, conf: str | None = None, *, auth_cache=False, workers=None) -> BenchStack:
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        workers = workers if workers is not None else self.a.workers
        kw = dict(auth_cache=auth_cache, auth_worker_max_count=workers)
        if kind == "ceiling":
            st = BenchStack(d, lua_script=self.ceiling_lua, settings_file=None, module_dir=None, **kw)
        elif kind == "module":
            st = BenchStack(d, lua_script=LUA_SCRIPT, settings_file=self.conf[conf], module_dir=self.module_dir,
                            passdb_args_extra="cache_key=%u%{sha256:password}" if auth_cache else "", **kw)
        elif kind == "builtin":
            st = BenchStack(d, lua_script=self.ceiling_lua, settings_file=None, module_dir=None,
                            builtin_conf=self.conf[conf], **kw)
        else:
            raise ValueError(kind)
        st.start()
        return st

    def socket(self, st) -> dict:
        return {"socket": st.auth_client_socket}

    # ---- one scenario: a fresh Dovecot, optional warm-up, `reps` measured runs
    def scenario(self, key: str, title: str, kind: str, conf: str | None, pattern: str, logins: int, *,
                 latency: int = 0, auth_cache: bool = False, mode: str = "socket", group: str = "",
                 tokens: str | None = None, concurrency: int | None = None, warmup: int = 0):
        a = self.a
        if not self.selected(key, group):
            return None
        self.loads.append((key, os.getloadavg()[0]))
        self.stub.latency(latency)
        st = self.stack(key, kind, conf, auth_cache=auth_cache)
        runs = []
        warm_requests = 0
        try:
            target = self.socket(st) if mode == "socket" else {"port": st.imap_port}
            conc = concurrency or (a.concurrency if mode == "socket" else a.imap_concurrency)
            if not warmup and a.prime and kind != "builtin":
                # start the auth-workers and load the module in each before measuring (tokens of the
                # warm set; not counted)
                n = a.prime if mode == "socket" else a.prime // 10
                if pattern == "jwt":  # opaque tokens would only be refused in local mode
                    authbench(mode, target, self.jwt, n, conc, offset=self.jwt_cursor, label=key + "-prime")
                    self.jwt_cursor += n
                else:
                    authbench(mode, target, self.warm, n, conc, distinct=N_USERS, label=key + "-prime")
            if pattern == "warm":
                tok = tokens or self.warm
                if warmup:
                    self.stub.reset()
                    authbench(mode, target, tok, warmup, conc, distinct=N_USERS, label=key + "-warmup")
                    warm_requests = self.stub.stats()["provider_requests"]
            for rep in range(a.reps):
                self.stub.reset()
                if pattern == "warm":
                    r = authbench(mode, target, tokens or self.warm, logins, conc, distinct=N_USERS,
                                  label=f"{key}#{rep + 1}")
                elif pattern == "jwt":
                    r = authbench(mode, target, self.jwt, logins, conc, offset=self.jwt_cursor, label=f"{key}#{rep + 1}")
                    self.jwt_cursor += logins
                else:
                    r = authbench(mode, target, self.opaque, logins, conc, offset=self.cold_cursor, label=f"{key}#{rep + 1}")
                    self.cold_cursor += logins
                s = self.stub.stats()
                r["provider_requests"] = s["provider_requests"]
                r["provider_connections"] = s["connections"]
                r["provider_per_1000"] = 1000.0 * s["provider_requests"] / max(1, r["logins"])
                runs.append(r)
                log(f"  {key} #{rep + 1}: {r['logins_per_sec']:.0f}/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} "
                    f"max {r['max_ms']:.1f} ms ok {r['ok']} fail {r['fail']} temp {r['tempfail']} err {r['error']} "
                    f"provider/1000 {r['provider_per_1000']:.0f} conns {s['connections']}")
            workers = len(st.auth_worker_pids())
            self.max_workers_seen = max(self.max_workers_seen, workers)
        finally:
            st.stop()
            st.cleanup()
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        res = {
            "key": key, "title": title, "group": group, "mode": mode, "kind": kind, "pattern": pattern,
            "latency_ms": latency, "auth_cache": auth_cache, "logins": logins, "reps": len(runs),
            "concurrency": conc, "workers_alive": workers, "warmup_logins": warmup,
            "warmup_provider_requests": warm_requests,
            "logins_per_sec": med("logins_per_sec"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "max_ms": med("max_ms"), "provider_per_1000": med("provider_per_1000"),
            "ok": sum(r["ok"] for r in runs), "fail": sum(r["fail"] for r in runs),
            "tempfail": sum(r["tempfail"] for r in runs), "error": sum(r["error"] for r in runs),
            "runs": runs,
        }
        self.results.append(res)
        return res

    def selected(self, key: str, group: str) -> bool:
        only = self.a.only
        if not only or key in only or group in only:
            return True
        return "daemon" in only and (group in DAEMON_GROUPS or key in DAEMON_COMPARED)

    # ---- Dovecot 2.4.1 and dovecot-oauth2d (issue 11)
    def oauth2_block(self, to: str, daemon: "Daemon | None") -> dict:
        """The oauth2 {} block of Dovecot 2.4 for a target: the instant stub (the ceiling), the provider stub
        (introspection or userinfo), or the daemon (the block the issue gives, with the case folding)."""
        s = self.stub.base
        post = {"introspection_mode": "post", "username_attribute": "username", "active_attribute": "active",
                "active_value": "true", "username_validation_format": "%{user | lower}"}
        if to == "instant":
            return dict(post, introspection_url=s + "/instant")
        if to == "introspect":
            return dict(post, introspection_url=s + "/introspect")
        if to == "userinfo":
            return {"introspection_mode": "auth", "introspection_url": s + "/userinfo", "username_attribute": "email"}
        if to == "daemon":
            return dict(post, introspection_url=daemon.introspection_url())
        raise ValueError(to)

    def daemon_provider(self, extra: str = "") -> str:
        """The daemon's provider side: RFC 7662 at the stub, as `module-in-*` use it on 2.3."""
        return (f"introspection_url = {self.stub.base}/introspect\nintrospection_mode = post\n"
                f"username_attribute = email\n{extra}")

    def dscenario(self, key: str, title: str, group: str, dovecot: str, to: str, pattern: str, logins: int, *,
                  latency: int = 0, concurrency: int | None = None, warmup: int = 0, oauth2_extra: str = "",
                  builtin_extra: str = "", daemon_extra: str = "", prime: int | None = None):
        """One scenario of Dovecot 2.4 (`dovecot="2.4"`: its oauth2 {} client) or 2.3.19's `driver = oauth2`
        (`"2.3"`) pointed at `to` (instant | introspect | userinfo | daemon), fresh processes throughout.
        The stub's counters are zeroed after priming and then kept for the whole scenario (warm-up and the
        measured runs), so that provider requests per distinct token count every request a token cost."""
        a = self.a
        if not self.selected(key, group):
            return None
        self.loads.append((key, os.getloadavg()[0]))
        self.stub.latency(latency)
        conc = concurrency or a.concurrency
        daemon = Daemon(self.work, key + "-daemon", self.daemon_provider(daemon_extra)) if to == "daemon" else None
        st = None
        runs = []
        try:
            if dovecot == "2.4":
                st = bench24_stack(self.oauth2_block(to, daemon), oauth2_extra)
            else:
                if to != "daemon":
                    raise ValueError("2.3 scenarios here are the built-in driver pointed at the daemon")
                conf = self.settings(key + ".conf", f"introspection_mode = post\nintrospection_url = {daemon.introspection_url()}\n"
                                                    "username_attribute = username\nactive_attribute = active\n"
                                                    f"active_value = true\n{builtin_extra}")
                d = os.path.join(self.work, key)
                os.makedirs(d, exist_ok=True)
                st = BenchStack(d, lua_script=self.ceiling_lua, settings_file=None, module_dir=None, builtin_conf=conf,
                                auth_cache=False, auth_worker_max_count=a.workers)
            st.start()
            target = self.socket(st)
            n = (a.prime if latency == 0 else min(a.prime, 200)) if prime is None else prime
            if n and not warmup:
                # Dovecot's first connections to its target, the daemon's first provider connections (tokens
                # never used again; not counted)
                authbench("socket", target, self.opaque, n, conc, offset=self.cold_cursor, label=key + "-prime")
                self.cold_cursor += n
            self.stub.reset()
            warm_requests = 0
            used = 0  # distinct tokens of the load since the counters were zeroed
            if warmup:
                w = authbench("socket", target, self.warm, warmup, conc, distinct=N_USERS, label=key + "-warmup")
                warm_requests = self.stub.stats()["provider_requests"]
                used = w["tokens_used"]
            prev = self.stub.stats()
            pids = {"auth": auth_pids(st), "stub": [self.stub.proc.pid]}
            if daemon:
                pids["daemon"] = [daemon.proc.pid]
            for rep in range(a.reps):
                cpu0 = {k: cpu_secs(v) for k, v in pids.items()}
                cs0 = context_switches(daemon.proc.pid) if daemon else 0
                if pattern == "warm":
                    r = authbench("socket", target, self.warm, logins, conc, distinct=N_USERS, label=f"{key}#{rep + 1}")
                else:
                    r = authbench("socket", target, self.opaque, logins, conc, offset=self.cold_cursor,
                                  label=f"{key}#{rep + 1}")
                    self.cold_cursor += logins
                cpu1 = {k: cpu_secs(v) for k, v in pids.items()}
                if daemon:
                    r["daemon_context_switches_per_login"] = (context_switches(daemon.proc.pid) - cs0) / max(1, r["logins"])
                # warm: every run draws a prefix of one sequence of the same 1,000 tokens; cold: new tokens
                used = max(used, r["tokens_used"]) if pattern == "warm" else used + r["tokens_used"]
                s = self.stub.stats()
                r["provider_requests"] = s["provider_requests"] - prev["provider_requests"]
                r["provider_connections"] = s["connections"] - prev["connections"]
                r["provider_per_1000"] = 1000.0 * r["provider_requests"] / max(1, r["logins"])
                r["cpu_us_per_login"] = {k: 1e6 * (cpu1[k] - cpu0[k]) / max(1, r["logins"]) for k in pids}
                prev = s
                runs.append(r)
                cpu = " ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_login"].items())
                if daemon:
                    cpu += f"; daemon context switches/login {r['daemon_context_switches_per_login']:.2f}"
                log(f"  {key} #{rep + 1}: {r['logins_per_sec']:.0f}/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} "
                    f"max {r['max_ms']:.1f} ms ok {r['ok']} fail {r['fail']} temp {r['tempfail']} err {r['error']} "
                    f"provider/1000 {r['provider_per_1000']:.0f} conns {r['provider_connections']} CPU us/login: {cpu}"
                    + (f" first error: {r['first_error']}" if r.get("first_error") else ""))
            final = self.stub.stats()
            distinct = used
            extra = {}
            if daemon:
                extra["daemon_context_switches_per_login"] = statistics.median(
                    r["daemon_context_switches_per_login"] for r in runs)
                m = daemon.metrics()
                extra = {"daemon_rss_kb": daemon.rss_kb(), "daemon_threads": daemon.threads(),
                         "daemon_cache_entries": m.get("dovecot_oauth2_cache_entries"),
                         "daemon_cache_hits": m.get("dovecot_oauth2_cache_hits_total"),
                         "daemon_cache_misses": m.get("dovecot_oauth2_cache_misses_total"),
                         "daemon_provider_requests": m.get("dovecot_oauth2_provider_requests_total"),
                         "daemon_log_problems": daemon.log_problems()[:5]}
                if extra["daemon_log_problems"]:
                    log(f"  {key}: daemon log: " + " | ".join(extra["daemon_log_problems"][:3]))
        finally:
            if st is not None:
                st.stop()
                st.cleanup()
            if daemon is not None:
                daemon.stop()
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        res = {
            "key": key, "title": title, "group": group, "mode": "socket", "kind": f"{dovecot}->{to}",
            "pattern": pattern, "latency_ms": latency, "auth_cache": False, "logins": logins, "reps": len(runs),
            "concurrency": conc, "warmup_logins": warmup, "warmup_provider_requests": warm_requests,
            "logins_per_sec": med("logins_per_sec"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "max_ms": med("max_ms"), "provider_per_1000": med("provider_per_1000"),
            "provider_connections": sum(r["provider_connections"] for r in runs),
            "ok": sum(r["ok"] for r in runs), "fail": sum(r["fail"] for r in runs),
            "tempfail": sum(r["tempfail"] for r in runs), "error": sum(r["error"] for r in runs),
            "distinct_tokens": distinct, "provider_requests_total": final["provider_requests"],
            "provider_per_distinct": final["provider_requests"] / max(1, distinct),
            "provider_distinct_asked": final["distinct_tokens"],
            "provider_most_for_one_token": final["most_requests_for_one_token"],
            "cpu_us_per_login": {k: statistics.median(r["cpu_us_per_login"][k] for r in runs) for k in runs[0]["cpu_us_per_login"]},
            "runs": runs, **extra,
        }
        log(f"  {key}: median {res['logins_per_sec']:.0f}/s; provider requests per distinct token "
            f"{res['provider_per_distinct']:.3f} ({final['provider_requests']} for {distinct} tokens, "
            f"{final['distinct_tokens']} asked about, at most {final['most_requests_for_one_token']} for one)")
        self.results.append(res)
        return res

    def daemon_scenarios(self):
        a = self.a
        C, W = a.cold, a.warm
        D = self.dscenario
        log("== Dovecot 2.4.1, provider latency 0 ms")
        D("d24-ceiling", "ceiling: Dovecot's oauth2 client, instant stub", "d24-0", "2.4", "instant", "warm", W)
        D("d24-direct-in", "Dovecot's oauth2 client, provider stub, introspection (post)", "d24-0", "2.4",
          "introspect", "cold", C)
        D("d24-direct-ui", "Dovecot's oauth2 client, provider stub, userinfo (auth)", "d24-0", "2.4", "userinfo",
          "cold", C)
        D("d24-daemon-cold", "dovecot-oauth2d, cold (every token new)", "d24-0", "2.4", "daemon", "cold", C)
        D("d24-daemon-warm", "dovecot-oauth2d, warm (1,000 users again)", "d24-0", "2.4", "daemon", "warm", W,
          warmup=a.warmup)
        pool = "max_parallel_connections = 32\n"
        D("d24-daemon-cold-pool", "dovecot-oauth2d, cold, its max_parallel_connections = 32 (idle provider connections "
          "kept)", "d24-0", "2.4", "daemon", "cold", C, daemon_extra=pool)
        log("== Dovecot 2.4.1, provider latency 20 ms")
        L, C20 = 20, a.concurrency20
        par = f"http_client_max_parallel_connections = {C20}"
        D("d24-direct-in-20", "Dovecot's oauth2 client, provider stub, introspection (post)", "d24-20", "2.4",
          "introspect", "cold", a.cold24_20, latency=L, concurrency=C20)
        D("d24-direct-ui-20", "Dovecot's oauth2 client, provider stub, userinfo (auth)", "d24-20", "2.4", "userinfo",
          "cold", a.cold24_20, latency=L, concurrency=C20)
        D("d24-daemon-cold-20", "dovecot-oauth2d, cold (every token new)", "d24-20", "2.4", "daemon", "cold",
          a.cold24_20, latency=L, concurrency=C20)
        D("d24-daemon-warm-20", "dovecot-oauth2d, warm (1,000 users again)", "d24-20", "2.4", "daemon", "warm", W,
          latency=L, concurrency=C20, warmup=a.warmup)
        D("d24-direct-in-par-20", f"Dovecot's oauth2 client, provider stub, introspection, {par}", "d24-20", "2.4",
          "introspect", "cold", a.cold20, latency=L, concurrency=C20, oauth2_extra="  " + par)
        D("d24-daemon-cold-par-20", f"dovecot-oauth2d, cold, {par}", "d24-20", "2.4", "daemon", "cold", a.cold20,
          latency=L, concurrency=C20, oauth2_extra="  " + par)
        D("d24-daemon-cold-par-pool-20", f"dovecot-oauth2d, cold, {par}; daemon max_parallel_connections = 64",
          "d24-20", "2.4", "daemon", "cold", a.cold20, latency=L, concurrency=C20, oauth2_extra="  " + par,
          daemon_extra="max_parallel_connections = 64\n")
        log("== Dovecot 2.3.19, driver = oauth2 pointed at dovecot-oauth2d")
        D("d23-daemon-cold", "Dovecot oauth2 -> dovecot-oauth2d, cold", "d23-daemon", "2.3", "daemon", "cold", C)
        D("d23-daemon-warm", "Dovecot oauth2 -> dovecot-oauth2d, warm (1,000 users again)", "d23-daemon", "2.3",
          "daemon", "warm", W, warmup=a.warmup)
        D("d23-daemon-cold-20", "Dovecot oauth2 -> dovecot-oauth2d, cold, 20 ms, defaults", "d23-daemon", "2.3",
          "daemon", "cold", a.builtin20, latency=L, concurrency=C20)
        D("d23-daemon-cold-par-20", "Dovecot oauth2 -> dovecot-oauth2d, cold, 20 ms, max_parallel_connections = 32",
          "d23-daemon", "2.3", "daemon", "cold", a.cold20, latency=L, concurrency=C20,
          builtin_extra="max_parallel_connections = 32\n")

    def rss_daemon(self):
        """VmRSS of dovecot-oauth2d (default settings) before and after N distinct tokens through Dovecot 2.4."""
        n = self.a.rss_tokens
        self.loads.append(("rss-daemon", os.getloadavg()[0]))
        log(f"daemon RSS: {n} distinct tokens through Dovecot 2.4.1 to one dovecot-oauth2d")
        self.stub.latency(0)
        daemon = Daemon(self.work, "rss-daemon", self.daemon_provider())
        st = None
        try:
            st = bench24_stack(self.oauth2_block("daemon", daemon))
            st.start()
            target = self.socket(st)
            started = daemon.rss_started_kb
            first = authbench("socket", target, self.opaque, 1, 1, offset=self.cold_cursor)
            self.cold_cursor += 1
            base = daemon.rss_kb()
            self.stub.reset()
            t0 = time.time()
            r = authbench("socket", target, self.opaque, n, self.a.concurrency, offset=self.cold_cursor, label="rss-daemon",
                          timeout=600)
            start_of_set = self.cold_cursor
            self.cold_cursor += n
            took = time.time() - t0
            after = daemon.rss_kb()
            m = daemon.metrics()
            asked = self.stub.stats()
            # the same tokens again (the most recent 20,000): all must come from the cache
            again_n = min(n, 20000)
            self.stub.reset()
            again = authbench("socket", target, self.opaque, again_n, self.a.concurrency,
                              offset=start_of_set + n - again_n, label="rss-daemon-again")
            asked_again = self.stub.stats()["provider_requests"]
            after2 = daemon.rss_kb()
            hwm = vm_status_kb(daemon.proc.pid, "VmHWM")
            self.rss_daemon_result = {
                "tokens": n, "ok": r["ok"], "not_ok": r["fail"] + r["tempfail"] + r["error"], "seconds": took,
                "logins_per_sec": r["logins_per_sec"], "rss_started_kb": started, "rss_after_first_login_kb": base,
                "rss_after_kb": after, "rss_after_cached_pass_kb": after2, "hwm_kb": hwm,
                "cache_entries": m.get("dovecot_oauth2_cache_entries"), "threads": daemon.threads(),
                "provider_requests": asked["provider_requests"], "distinct_asked": asked["distinct_tokens"],
                "most_for_one_token": asked["most_requests_for_one_token"], "cached_pass_logins": again["logins"],
                "cached_pass_ok": again["ok"], "cached_pass_provider_requests": asked_again, "first_ok": first["ok"],
            }
            log(f"  daemon pid {daemon.proc.pid}: RSS {started} kB at start, {base} kB after 1 login, {after} kB after "
                f"{r['ok']} ok logins ({took:.0f} s, {r['logins_per_sec']:.0f}/s; cache entries "
                f"{m.get('dovecot_oauth2_cache_entries')}; provider asked {asked['provider_requests']}x), {after2} kB after "
                f"a cached pass of {again['logins']} (provider asked {asked_again}x); peak {hwm} kB")
        finally:
            if st is not None:
                st.stop()
                st.cleanup()
            daemon.stop()

    # ---- revocation with caches on
    def revocation(self):
        log("revocation: a token accepted once, revoked at the provider, used again")
        self.stub.latency(0)
        out = []
        cases = [
            ("builtin, auth cache off", "builtin", "userinfo", False),
            ("builtin, auth cache on", "builtin", "userinfo", True),
            ("module (its cache, cache_ttl_secs = 300)", "module", "userinfo", False),
            ("module, cache_ttl_secs = 0", "module", "userinfo-nocache", False),
        ]
        for title, kind, conf, cache in cases:
            st = self.stack("revoke-" + re.sub(r"\W+", "-", title), kind, conf, auth_cache=cache)
            try:
                line = self.cold_cursor
                self.cold_cursor += 1
                user, token = open(self.opaque).read().split("\n", line + 1)[line].split("\t")
                one = os.path.join(self.work, "one.tsv")
                with open(one, "w") as f:
                    f.write(f"{user}\t{token}\n")
                first = authbench("socket", self.socket(st), one, 1, 1)
                self.stub.revoke(token)
                self.stub.reset()
                second = authbench("socket", self.socket(st), one, 1, 1)
                asked = self.stub.stats()["provider_requests"]
                verdict = lambda r: "accepted" if r["ok"] else ("temporary failure" if r["tempfail"] else "refused")  # noqa: E731
                out.append({"title": title, "before": verdict(first), "after": verdict(second), "provider_asked": asked})
                log(f"  {title}: before {verdict(first)}, after revocation {verdict(second)} (provider asked {asked}x)")
            finally:
                st.stop()
                st.cleanup()
        self.revocations = out

    # ---- RSS of one worker with N cached tokens
    def rss(self):
        n = self.a.rss_tokens
        log(f"RSS: {n} distinct tokens through one auth-worker")
        self.stub.latency(0)
        st = self.stack("rss", "module", "userinfo", workers=1)
        try:
            target = self.socket(st)
            first = authbench("socket", target, self.opaque, 1, 1, offset=self.cold_cursor)
            self.cold_cursor += 1
            pids = st.auth_worker_pids()
            base = vm_rss_kb(pids[0]) if pids else None
            self.stub.reset()
            t0 = time.time()
            r = authbench("socket", target, self.opaque, n, 4, offset=self.cold_cursor, label="rss", timeout=600)
            self.cold_cursor += n
            took = time.time() - t0
            pids2 = st.auth_worker_pids()
            after = vm_rss_kb(pids2[0]) if pids2 else None
            # a second pass over the same tokens: all must come from the cache
            self.stub.reset()
            again = authbench("socket", target, self.opaque, min(n, 20000), 4, offset=self.cold_cursor - n, label="rss-again")
            asked_again = self.stub.stats()["provider_requests"]
            after2 = vm_rss_kb(pids2[0]) if pids2 else None
            ceiling = self.ceiling_rss()
            self.rss_result = {
                "tokens": n, "worker_pids": pids2, "same_worker": pids == pids2, "rss_after_first_login_kb": base,
                "rss_after_kb": after, "rss_after_cached_pass_kb": after2, "ok": r["ok"], "seconds": took,
                "logins_per_sec": r["logins_per_sec"], "cached_pass_logins": again["logins"],
                "cached_pass_provider_requests": asked_again, "ceiling_worker_rss_kb": ceiling, "first_ok": first["ok"],
            }
            log(f"  worker {pids2}: RSS {base} kB after 1 login, {after} kB after {r['ok']} ok logins "
                f"({took:.0f} s), {after2} kB after a cached pass of {again['logins']} (provider asked {asked_again}x); "
                f"ceiling worker {ceiling} kB")
        finally:
            st.stop()
            st.cleanup()

    def ceiling_rss(self) -> int | None:
        st = self.stack("rss-ceiling", "ceiling", workers=1)
        try:
            authbench("socket", self.socket(st), self.warm, 2000, 4, distinct=N_USERS)
            pids = st.auth_worker_pids()
            return vm_rss_kb(pids[0]) if pids else None
        finally:
            st.stop()
            st.cleanup()

    # ---- the real OpenID provider of the tests
    def real_idp(self):
        from idp import IdP
        n = self.a.real_tokens
        log(f"real IdP: {n} tokens from the test suite's oidc-provider")
        p = IdP(os.path.join(self.work, "idp"))
        p.start()
        out = []
        try:
            users = ["alice", "bob", "carol"]
            t0 = time.time()
            lines = []
            for i in range(n):
                u = users[i % len(users)]
                lines.append(f"{u}@example.test\t{p.token(u)}")
            took = time.time() - t0
            path = os.path.join(self.work, "real.tsv")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            cid, csec = IdP.introspection_client
            intro_url = p.introspection_url.replace("http://", f"http://{cid}:{csec}@")
            self.conf["real-userinfo"] = self.settings("real-userinfo.conf", f"introspection_url = {p.userinfo_url}\n"
                                                                             "introspection_mode = auth\nusername_attribute = email\n")
            self.conf["real-introspect"] = self.settings("real-introspect.conf", f"introspection_url = {intro_url}\n"
                                                                                 "introspection_mode = post\nusername_attribute = email\n")
            for kind, conf, title in [("builtin", "real-userinfo", "Dovecot oauth2, userinfo"),
                                      ("module", "real-userinfo", "module, userinfo"),
                                      ("builtin", "real-introspect", "Dovecot oauth2, introspection"),
                                      ("module", "real-introspect", "module, introspection")]:
                st = self.stack("real-" + kind + "-" + conf, kind, conf)
                try:
                    r = authbench("socket", self.socket(st), path, n, 8, label=title)
                finally:
                    st.stop()
                    st.cleanup()
                r["title"] = title
                out.append(r)
                log(f"  {title}: {r['logins_per_sec']:.0f}/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms "
                    f"ok {r['ok']} fail {r['fail']} temp {r['tempfail']}")
        finally:
            p.stop()
        self.real = {"tokens": n, "token_seconds": took, "runs": out}

    # ---- everything
    def run(self):
        a = self.a
        t_start = time.time()
        self.build()
        self.make_tokens()
        self.stub = Stub(self.work, [self.opaque, self.warm, self.jwt], self.jwks, max_seconds=3600)
        self.write_settings()
        try:
            C, W, J = a.cold, a.warm, a.jwt
            S = self.scenario
            log("== provider latency 0 ms")
            S("ceiling", "ceiling: Lua passdb returning OK", "ceiling", None, "warm", W, group="0")
            S("builtin-ui", "Dovecot oauth2, userinfo, auth cache off", "builtin", "userinfo", "cold", C, group="0")
            S("builtin-in", "Dovecot oauth2, introspection, auth cache off", "builtin", "introspect", "cold", C, group="0")
            S("builtin-ui-warm", "Dovecot oauth2, userinfo, auth cache off, 1,000 users again", "builtin", "userinfo",
              "warm", C, group="0")
            S("builtin-ui-cache", "Dovecot oauth2, userinfo, auth cache on, 1,000 users again", "builtin", "userinfo",
              "warm", W, auth_cache=True, warmup=a.warmup, group="0")
            S("builtin-in-cache", "Dovecot oauth2, introspection, auth cache on, 1,000 users again", "builtin",
              "introspect", "warm", W, auth_cache=True, warmup=a.warmup, group="0")
            S("module-ui-cold", "module, userinfo, cold", "module", "userinfo", "cold", C, group="0")
            S("module-in-cold", "module, introspection, cold", "module", "introspect", "cold", C, group="0")
            S("module-ui-warm", "module, userinfo, warm (1,000 users again)", "module", "userinfo", "warm", W,
              warmup=a.warmup, group="0")
            S("module-in-warm", "module, introspection, warm (1,000 users again)", "module", "introspect", "warm", W,
              warmup=a.warmup, group="0")
            S("module-ui-warm-dcache", "module, userinfo, warm, plus Dovecot's auth cache (cache_key=%u%{sha256:password})",
              "module", "userinfo", "warm", W, auth_cache=True, warmup=a.warmup, group="0")
            S("module-jwt-cold", "module, local JWT (RS256), cold", "module", "local", "jwt", J, group="0")
            log("== provider latency 20 ms")
            L = 20
            S = lambda *x, **k: self.scenario(*x, concurrency=a.concurrency20, **k)  # noqa: E731
            S("builtin-ui-20", "Dovecot oauth2, userinfo, defaults", "builtin", "userinfo", "cold", a.builtin20,
              latency=L, group="20")
            S("builtin-in-20", "Dovecot oauth2, introspection, defaults", "builtin", "introspect", "cold", a.builtin20,
              latency=L, group="20")
            S("builtin-ui-par-20", "Dovecot oauth2, userinfo, max_parallel_connections = 32", "builtin", "userinfo-par",
              "cold", a.cold20, latency=L, group="20")
            S("builtin-in-par-20", "Dovecot oauth2, introspection, max_parallel_connections = 32", "builtin",
              "introspect-par", "cold", a.cold20, latency=L, group="20")
            S("builtin-ui-cache-20", "Dovecot oauth2, userinfo, auth cache on, 1,000 users again", "builtin",
              "userinfo-par", "warm", W, latency=L, auth_cache=True, warmup=a.warmup, group="20")
            S("module-ui-cold-20", "module, userinfo, cold", "module", "userinfo", "cold", a.cold20, latency=L, group="20")
            S("module-in-cold-20", "module, introspection, cold", "module", "introspect", "cold", a.cold20, latency=L, group="20")
            S("module-ui-warm-20", "module, userinfo, warm (1,000 users again)", "module", "userinfo", "warm", W,
              latency=L, warmup=a.warmup, group="20")
            S("module-jwt-cold-20", "module, local JWT (RS256), cold", "module", "local", "jwt", J, latency=L, group="20")
            S("module-ui-warm-dcache-20", "module, userinfo, warm, plus Dovecot's auth cache", "module", "userinfo",
              "warm", W, latency=L, auth_cache=True, warmup=a.warmup, group="20")
            S = self.scenario
            log("== IMAP AUTHENTICATE over TCP")
            S("imap-ceiling", "ceiling: Lua passdb returning OK", "ceiling", None, "warm", a.imap, mode="imap", group="imap")
            S("imap-builtin-ui", "Dovecot oauth2, userinfo, auth cache off", "builtin", "userinfo", "cold", a.imap,
              mode="imap", group="imap")
            S("imap-module-ui-cold", "module, userinfo, cold", "module", "userinfo", "cold", a.imap, mode="imap", group="imap")
            S("imap-module-ui-warm", "module, userinfo, warm", "module", "userinfo", "warm", a.imap, mode="imap",
              warmup=a.warmup, group="imap")
            S("imap-module-jwt", "module, local JWT (RS256), cold", "module", "local", "jwt", a.imap, mode="imap", group="imap")
            self.daemon_scenarios()
            if not a.only or "revocation" in a.only:
                self.revocation()
            if a.rss_tokens and (not a.only or "rss" in a.only):
                self.rss()
            if a.rss_tokens and self.selected("rss-daemon", "rss-daemon"):
                self.rss_daemon()
        finally:
            self.stub.stop()
        if a.real_tokens and (not a.only or "real" in a.only):
            try:
                self.real_idp()
            except Exception as e:  # e.g. tests/idp without its npm packages: the other figures still count
                log(f"real IdP scenario skipped: {e}".splitlines()[0])
                self.notes.append(f"real IdP scenario not run: {str(e).splitlines()[0]}")
        self.elapsed = time.time() - t_start
        log(f"total {self.elapsed:.0f} s")

    # ---- output
    def machine(self) -> dict:
        cpu = ""
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        dv = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
        try:
            from dovecot24 import chroot_dir
            dv24 = subprocess.run(["chroot", chroot_dir(), "/usr/sbin/dovecot", "--version"], capture_output=True,
                                  text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError, ImportError):
            dv24 = ""
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        loads = [x[1] for x in self.loads]
        return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "dovecot": dv, "dovecot24": dv24,
                "rustc": rustc, "load_min": min(loads, default=None), "load_max": max(loads, default=None),
                "load_median": statistics.median(loads) if loads else None,
                "commit": rev + (" (src modified)" if dirty else ""), "workers_max": self.a.workers,
                "workers_seen": self.max_workers_seen, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def render(r: Runner) -> str:
    m = r.machine()
    by = {x["key"]: x for x in r.results}
    ceil = by.get("ceiling", {}).get("logins_per_sec") or 1
    iceil = by.get("imap-ceiling", {}).get("logins_per_sec") or 1

    def row(x, base):
        warm = ""
        if x["warmup_logins"]:
            warm = f" (warm-up: {x['warmup_logins']} logins, {x['warmup_provider_requests']} provider requests)"
        bad = x["fail"] + x["tempfail"] + x["error"]
        return (f"| {x['title']}{warm} | {x['logins_per_sec']:.0f} | {x['logins_per_sec'] / base:.2f} | "
                f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['max_ms']:.1f} | {x['provider_per_1000']:.0f} | "
                f"{x['ok']}/{bad} |")

    head = ("| scenario | logins/s | × ceiling | p50 ms | p99 ms | max ms | provider requests / 1,000 logins | ok / not ok |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    out = []
    out.append(f"Run of {m['date']} on {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}; Dovecot {m['dovecot']}; "
               f"{m['rustc']}; commit {m['commit']}. `auth_worker_max_count = {m['workers_max']}` "
               f"(at most {m['workers_seen']} auth-workers alive at the end of a scenario); `auth_failure_delay = 0`; "
               f"load generator: {r.a.concurrency} auth-socket connections ({r.a.concurrency20} for the 20 ms scenarios; IMAP: {r.a.imap_concurrency} clients), one "
               f"login in flight each. Every figure is the median of {r.a.reps} runs against a fresh Dovecot per "
               f"scenario; the run took {r.elapsed / 60:.1f} minutes"
               + (f"; 1-minute load average at the start of each scenario: median {m['load_median']:.1f}, "
                  f"{m['load_min']:.1f}-{m['load_max']:.1f}" if m["load_median"] is not None else "") + ".\n")
    for g, title in [("0", "Auth socket, provider latency 0 ms"), ("20", "Auth socket, provider latency 20 ms"),
                     ("imap", "IMAP AUTHENTICATE over TCP (provider latency 0 ms)")]:
        rows = [x for x in r.results if x["group"] == g]
        if not rows:
            continue
        base = iceil if g == "imap" else ceil
        out.append(f"### {title}\n")
        out.append(head)
        out.extend(row(x, base) for x in rows)
        out.append("")
    if getattr(r, "revocations", None):
        out.append("### A revoked token (userinfo mode; the stub answers 401 for it after revocation)\n")
        out.append("| passdb | first login | same token after revocation | provider asked on the second login |")
        out.append("|---|---|---|---:|")
        for x in r.revocations:
            out.append(f"| {x['title']} | {x['before']} | {x['after']} | {x['provider_asked']} |")
        out.append("")
    if getattr(r, "rss_result", None):
        x = r.rss_result
        mb = lambda kb: f"{kb / 1024:.1f} MB" if kb else "n/a"  # noqa: E731
        out.append("### Memory of one auth-worker with 100,000 cached tokens\n")
        out.append(f"`auth_worker_max_count = 1`, {x['tokens']} distinct tokens (userinfo mode), {x['ok']} accepted in "
                   f"{x['seconds']:.0f} s ({x['logins_per_sec']:.0f}/s). VmRSS of the worker (pid {x['worker_pids']}, "
                   f"same process throughout: {x['same_worker']}): {mb(x['rss_after_first_login_kb'])} after its first "
                   f"login, **{mb(x['rss_after_kb'])}** with {x['tokens']} tokens cached, {mb(x['rss_after_cached_pass_kb'])} "
                   f"after {x['cached_pass_logins']} more logins with tokens of the set (provider asked "
                   f"{x['cached_pass_provider_requests']} times). A ceiling worker (Lua script only) after 2,000 logins: "
                   f"{mb(x['ceiling_worker_rss_kb'])}.\n")
    if getattr(r, "real", None):
        x = r.real
        out.append(f"### The test suite's real OpenID provider (oidc-provider on Node), {x['tokens']} tokens, each used once\n")
        out.append("| passdb | logins/s | p50 ms | p99 ms | ok / not ok |")
        out.append("|---|---:|---:|---:|---:|")
        for y in x["runs"]:
            out.append(f"| {y['title']} | {y['logins_per_sec']:.0f} | {y['p50_ms']:.1f} | {y['p99_ms']:.1f} | "
                       f"{y['ok']}/{y['fail'] + y['tempfail'] + y['error']} |")
        out.append("")
    return "\n".join(out)


def per_distinct(x: dict) -> float | None:
    """Provider requests per distinct token over a whole scenario (warm-up included)."""
    if "provider_per_distinct" in x:
        return x["provider_per_distinct"]
    if x.get("kind") == "ceiling" or x.get("pattern") == "jwt":
        return None
    total = sum(r["provider_requests"] for r in x["runs"])
    if x["pattern"] == "warm":
        return (x["warmup_provider_requests"] + total) / N_USERS
    return total / max(1, sum(r["logins"] for r in x["runs"]))


def render_daemon(r: Runner) -> str:
    m = r.machine()
    by = {x["key"]: x for x in r.results}
    c24 = by.get("d24-ceiling", {}).get("logins_per_sec")
    c23 = by.get("ceiling", {}).get("logins_per_sec")
    f2 = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731

    def row(x, base):
        warm = f" (warm-up: {x['warmup_logins']} logins)" if x.get("warmup_logins") else ""
        pd = per_distinct(x)
        most = x.get("provider_most_for_one_token")
        pdt = "-" if pd is None else (f"{pd:.3f}" + (f" ({most})" if most is not None else ""))
        cpu = x.get("cpu_us_per_login")
        cpu_t = "-" if not cpu else " / ".join(f"{cpu[k]:.0f}" if k in cpu else "-" for k in ("auth", "daemon", "stub"))
        conns = x.get("provider_connections")
        if conns is None:
            conns = sum(y.get("provider_connections", 0) for y in x["runs"])
        bad = x["fail"] + x["tempfail"] + x["error"]
        ratio = f"{x['logins_per_sec'] / base:.2f}" if base else "-"
        return (f"| {x['title']}{warm} | {x['logins_per_sec']:.0f} | {ratio} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                f"{pdt} | {conns} | {cpu_t} | {x['ok']}/{bad} |")

    head = ("| scenario | logins/s | × {base} | p50 ms | p99 ms | provider requests per distinct token (most for one) | "
            "provider connections opened | CPU µs per login: Dovecot auth / daemon / stub | ok / not ok |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    load = (f"1-minute load average at the start of each scenario: median {m['load_median']:.1f}, "
            f"{m['load_min']:.1f}-{m['load_max']:.1f}" if m["load_median"] is not None else "")
    out = [f"Run of {m['date']} on {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}; Dovecot {m['dovecot24']} (Debian 13 "
           f"chroot) and {m['dovecot']}; {m['rustc']}; commit {m['commit']}. {load}. Load generator: {r.a.concurrency} "
           f"auth-socket connections ({r.a.concurrency20} at 20 ms), one login in flight each; medians of {r.a.reps} runs, "
           f"fresh Dovecot, daemon and counters per scenario; the run took {r.elapsed / 60:.1f} minutes.\n"]
    for g, title, base, bname in [("d24-0", "Dovecot 2.4.1, auth socket, provider latency 0 ms", c24, "2.4 ceiling"),
                                  ("d24-20", "Dovecot 2.4.1, auth socket, provider latency 20 ms", c24, "2.4 ceiling")]:
        rows = [x for x in r.results if x["group"] == g]
        if rows:
            out += [f"### {title}\n", head.format(base=bname)] + [row(x, base) for x in rows] + [""]
    rows = [by[k] for k in ("ceiling", "builtin-in", "module-in-cold", "module-in-warm", "d23-daemon-cold", "d23-daemon-warm",
                            "builtin-in-20", "builtin-in-par-20", "module-in-cold-20", "d23-daemon-cold-20",
                            "d23-daemon-cold-par-20") if k in by]
    if any(x["group"] == "d23-daemon" for x in rows):
        out += ["### Dovecot 2.3.19, auth socket: `driver = oauth2` pointed at the daemon, and the 2.3 rows of this run it "
                "compares with (20 ms rows: latency 20 ms)\n", head.format(base="2.3 ceiling")]
        out += [row(dict(x, title=x["title"] + (", 20 ms" if x["latency_ms"] == 20 and "20 ms" not in x["title"] else "")), c23)
                for x in rows] + [""]
    x = getattr(r, "rss_daemon_result", None)
    if x:
        mb = lambda kb: f"{kb / 1024:.1f} MB" if kb else "n/a"  # noqa: E731
        out += ["### Memory of dovecot-oauth2d with 100,000 cached tokens\n",
                f"Default settings (`cache_max_entries = 100000`), {x['tokens']} distinct tokens through Dovecot 2.4.1, "
                f"{x['ok']} accepted ({x['not_ok']} not) in {x['seconds']:.0f} s ({x['logins_per_sec']:.0f}/s), provider "
                f"asked {x['provider_requests']} times about {x['distinct_asked']} tokens (at most {x['most_for_one_token']} "
                f"for one). VmRSS of the daemon: {mb(x['rss_started_kb'])} at start, {mb(x['rss_after_first_login_kb'])} "
                f"after its first login, **{mb(x['rss_after_kb'])}** with {x['cache_entries']:.0f} verdicts cached "
                f"(`dovecot_oauth2_cache_entries`), {mb(x['rss_after_cached_pass_kb'])} after {x['cached_pass_logins']} "
                f"more logins with the most recent tokens of the set ({x['cached_pass_ok']} accepted, provider asked "
                f"{x['cached_pass_provider_requests']} times); peak (VmHWM) {mb(x['hwm_kb'])}; {x['threads']} threads.\n"]
    out += render_targets(r, by)
    return "\n".join(out)


def render_targets(r: Runner, by: dict) -> list[str]:
    """Issue 11's targets, computed from this run."""
    def lps(k):
        return by[k]["logins_per_sec"] if k in by else None

    out = ["### Targets (computed from this run)\n", "| target | measured | met? |", "|---|---|---|"]
    c24 = lps("d24-ceiling")
    for k, what in [("d24-daemon-warm", "0 ms"), ("d24-daemon-warm-20", "20 ms")]:
        if c24 and lps(k):
            v = lps(k) / c24
            out.append(f"| daemon warm ≥ 90% of the 2.4 ceiling ({what}) | {lps(k):,.0f} vs {c24:,.0f} logins/s = "
                       f"{100 * v:.0f}% | {'yes' if v >= 0.9 else '**no**'} |")
    daemon_rows = [x for x in r.results if x.get("kind", "").endswith("->daemon")]
    if daemon_rows:
        vals = [(x["key"], x["provider_per_distinct"], x["provider_most_for_one_token"]) for x in daemon_rows]
        rd = getattr(r, "rss_daemon_result", None)
        if rd:
            vals.append(("rss-daemon", rd["provider_requests"] / max(1, rd["tokens"]), rd["most_for_one_token"]))
        ok = all(abs(v - 1.0) < 1e-9 and most == 1 for _, v, most in vals)
        shown = ", ".join(f"{k} {v:.3f}" for k, v, _ in vals)
        out.append(f"| provider requests per distinct token = 1 in every daemon scenario | {shown}; most for one token: "
                   f"{max(most for _, _, most in vals)} | {'yes' if ok else '**no**'} |")
    for d, c, what in [("d24-daemon-cold-20", "d24-direct-in-20", "Dovecot 2.4's defaults (10 connections) on both"),
                       ("d24-daemon-cold-par-20", "d24-direct-in-par-20", "both with 64 connections"),
                       ("d24-daemon-cold-par-20", "d24-direct-in-20", "daemon with 64 connections vs. direct at defaults")]:
        if lps(d) and lps(c):
            v = lps(d) / lps(c)
            out.append(f"| cold at 20 ms ≥ 2× Dovecot's direct client ({what}) | {lps(d):,.0f} vs {lps(c):,.0f} logins/s = "
                       f"{v:.2f}× | {'yes' if v >= 2 else '**no**'} |")
    rd = getattr(r, "rss_daemon_result", None)
    if rd and rd["rss_after_kb"]:
        mbv = rd["rss_after_kb"] / 1024
        full = rd["cache_entries"] is not None and rd["cache_entries"] >= rd["tokens"]
        held = "" if full else f" (the cache held {rd['cache_entries']:.0f} of the {rd['tokens']} tokens)"
        out.append(f"| daemon RSS < 64 MB with 100,000 cached tokens | {mbv:.1f} MB with {rd['cache_entries']:.0f} entries "
                   f"cached | {'yes' if mbv < 64 else '**no**'}{held} |")
    out.append("")
    return out


def write_benchmarks(text: str, data: dict, section: str = "results", json_name: str = "latest.json"):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    begin, end = f"<!-- {section}:begin (written by benches/run.py) -->", f"<!-- {section}:end -->"
    if os.path.exists(path):
        doc = open(path).read()
    else:
        doc = "# Benchmarks\n\n" + begin + "\n" + end + "\n"
    if begin not in doc:
        doc += "\n" + begin + "\n" + end + "\n"
    pre, rest = doc.split(begin, 1)
    _, post = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(pre + begin + "\n" + text + "\n" + end + post)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", json_name), "w") as f:
        json.dump(data, f, indent=1)
    log(f"wrote the {section} section of {path} and benches/results/{json_name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, for trying the runner")
    ap.add_argument("--write", action="store_true", help="with --quick: write BENCHMARKS.md anyway")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=30, help="auth_worker_max_count (Dovecot's default: 30)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--concurrency20", type=int, default=64, help="connections for the 20 ms scenarios")
    ap.add_argument("--imap-concurrency", type=int, default=16)
    ap.add_argument("--cold", type=int, default=10000, help="logins per cold run, provider latency 0 ms")
    ap.add_argument("--warm", type=int, default=30000, help="logins per warm / ceiling run")
    ap.add_argument("--warmup", type=int, default=40000, help="warm-up logins before warm runs")
    ap.add_argument("--prime", type=int, default=3000, help="logins before measuring, to start the auth-workers")
    ap.add_argument("--jwt", type=int, default=8000, help="logins per local-JWT run")
    ap.add_argument("--cold20", type=int, default=4000, help="logins per cold run at 20 ms")
    ap.add_argument("--builtin20", type=int, default=300, help="logins per run of Dovecot's driver at 20 ms, defaults")
    ap.add_argument("--cold24-20", type=int, default=2000,
                    help="logins per cold run through Dovecot 2.4's client at 20 ms, its defaults")
    ap.add_argument("--imap", type=int, default=1500, help="logins per IMAP run")
    ap.add_argument("--rss-tokens", type=int, default=100000)
    ap.add_argument("--real-tokens", type=int, default=45)
    ap.add_argument("--only", type=lambda v: set(v.split(",")), default=set(),
                    help="comma-separated scenario keys or groups (0, 20, imap, d24-0, d24-20, d23-daemon, rss-daemon; "
                         "revocation, rss, real), or `daemon`: issue 11's scenarios and the 2.3 ones their ratios use; "
                         "writes nothing unless --write (then only the daemon section)")
    a = ap.parse_args()
    if a.quick:
        a.cold, a.warm, a.warmup, a.jwt, a.cold20, a.builtin20, a.imap = 500, 1000, 1000, 500, 300, 50, 100
        a.cold24_20 = 200
        a.rss_tokens, a.real_tokens, a.reps = min(a.rss_tokens, 5000), min(a.real_tokens, 6), min(a.reps, 2)
    if os.geteuid() != 0:
        sys.exit("run as root (Dovecot)")
    r = Runner(a)
    try:
        r.run()
        text = render(r)
        print("\n" + text)
        daemon_ran = any(x["group"] in DAEMON_GROUPS for x in r.results) or hasattr(r, "rss_daemon_result")
        dtext = render_daemon(r) if daemon_ran else ""
        print("\n" + dtext)
        full = not a.quick and not a.only
        if (full or (a.write and not a.only)) and any(x["group"] not in DAEMON_GROUPS for x in r.results):
            write_benchmarks(text, {"machine": r.machine(), "results": [x for x in r.results if x["group"] not in DAEMON_GROUPS],
                                    "revocation": getattr(r, "revocations", None),
                                    "rss": getattr(r, "rss_result", None), "real_idp": getattr(r, "real", None)})
        if (full or a.write) and daemon_ran:
            write_benchmarks(dtext, {"machine": r.machine(), "results": r.results, "loads": r.loads,
                                     "rss_daemon": getattr(r, "rss_daemon_result", None)},
                             section="daemon-results", json_name="latest-daemon.json")
    finally:
        if os.environ.get("KEEP_BENCH_DIR"):
            log(f"files kept in {r.work}")
        else:
            shutil.rmtree(r.work, ignore_errors=True)


if __name__ == "__main__":
    main()
