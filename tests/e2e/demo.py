"""The demo: a real OpenID provider, a real Dovecot 2.3 with the module, a real Postfix submission
service, all on loopback; a user signs in through the provider and logs in over IMAP and SMTP with the
access token. Then the Dovecot 2.4 path: Debian 13's Dovecot 2.4.1 (in the chroot tests/trixie.sh
makes) whose own oauth2 client asks the daemon dovecot-oauth2d. Prints what happened, then stops
everything. Run through tests/demo.sh."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from idp import IdP  # noqa: E402
from mailstack import MailStack  # noqa: E402


def fp(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


UNEXPECTED: list[str] = []


def show(label: str, r, expect: str = "ok") -> None:
    """One login: what was wanted (expect "ok" or "refused") and what the server answered."""
    if expect == "ok":
        verdict = "logged in" if r.ok else "FAILED"
    elif not r.ok and not r.tempfail:
        verdict = "refused (as expected)"
    else:
        verdict = "UNEXPECTED: " + ("logged in" if r.ok else "temporary failure")
    if verdict == "FAILED" or verdict.startswith("UNEXPECTED"):
        UNEXPECTED.append(label)
    print(f"  {label:<44} {verdict:<22} server: {r.text.strip()[:60]}")


def print_log_line(line: str) -> None:
    """A log line, whole: wrapped at spaces (never inside a token's sha256: prefix), indented."""
    line = re.sub(r"conn unix:auth-worker \(pid=\d+,uid=\d+\): auth-worker<\d+>: ", "", line)
    print(textwrap.fill(line, width=110, initial_indent="   ", subsequent_indent="       ",
                        break_long_words=False, break_on_hyphens=False))


def main() -> int:
    work = tempfile.mkdtemp(prefix="o2demo-", dir="/tmp")
    os.chmod(work, 0o755)
    lib = os.path.join(work, "lib")
    os.makedirs(lib)
    shutil.copy(os.path.join(ROOT, "target/release/libdovecot_oauth2.so"), os.path.join(lib, "dovecot_oauth2.so"))
    idp = IdP(os.path.join(work, "idp"))
    stack = None
    try:
        print("1. Starting the identity provider (oidc-provider) ...")
        idp.start()
        print(f"   issuer {idp.issuer}, userinfo {idp.userinfo_url}")
        settings = os.path.join(work, "dovecot-oauth2.conf.ext")
        with open(settings, "w") as f:
            f.write(f"introspection_url = {idp.userinfo_url}\nintrospection_mode = auth\nusername_attribute = email\n")
        os.chmod(settings, 0o640)
        print("2. Starting Dovecot 2.3 (Lua passdb + dovecot_oauth2.so) and Postfix submission ...")
        # Debian's default log verbosity (auth_verbose = no): what an admin sees out of the box.
        stack = MailStack(os.path.join(work, "stack"), lua_script=os.path.join(ROOT, "lua/dovecot-oauth2.lua"),
                          settings_file=settings, module_dir=lib, auth_verbose=False)
        stack.start()
        print(f"   IMAP 127.0.0.1:{stack.imap_port}, submission (Postfix) 127.0.0.1:{stack.submission_port}")
        print("   settings file:")
        for line in open(settings):
            print("     " + line.rstrip())
        print("3. alice signs in at the provider (authorization-code flow) and gets an access token ...")
        alice = idp.token("alice")
        bob = idp.token("bob")
        print(f"   alice's token: {len(alice)} characters, {fp(alice)} (tokens are never printed or logged)")
        mark = stack.log_mark()
        print("4. Logins:")
        show("IMAP AUTHENTICATE OAUTHBEARER as alice", stack.imap_login("alice@example.test", alice, "OAUTHBEARER"))
        show("IMAP AUTHENTICATE XOAUTH2 as alice", stack.imap_login("alice@example.test", alice, "XOAUTH2"))
        show("SMTP submission AUTH OAUTHBEARER as alice", stack.smtp_login("alice@example.test", alice, "OAUTHBEARER"))
        show("SMTP submission AUTH XOAUTH2 as alice", stack.smtp_login("alice@example.test", alice, "XOAUTH2"))
        made_up = "made-up-token-123"
        show("IMAP as alice with bob's token", stack.imap_login("alice@example.test", bob, "XOAUTH2"), "refused")
        show("IMAP as alice with a made-up token", stack.imap_login("alice@example.test", made_up, "XOAUTH2"), "refused")
        print("5. What Dovecot logged (Debian's default verbosity; a refusal is a warning with its reason):")
        stack.wait_log(mark, fp(made_up))  # Dovecot's log writer is asynchronous
        for line in stack.log_since(mark).splitlines():
            if "Login:" in line or "dovecot-oauth2" in line:
                print_log_line(line)
        stats = idp.stats()
        print(f"6. Provider requests made by the module: userinfo {stats.get('/me', 0)} "
              f"(6 logins, 3 tokens: a token seen before is answered from the module's cache)")
        stack.stop()
        stack = None
        demo_dovecot24(work, idp, alice, bob)
        if UNEXPECTED:
            print(f"Something went wrong: {', '.join(UNEXPECTED)}; files kept in {work}")
            os.environ["KEEP_DEMO_DIR"] = "1"
            return 1
        print("Everything behaved as it should.")
        return 0
    finally:
        if stack:
            stack.stop()
        idp.stop()
        if not os.environ.get("KEEP_DEMO_DIR"):
            shutil.rmtree(work, ignore_errors=True)
        print("Stopped the provider, Dovecot and Postfix.")


def demo_dovecot24(work: str, idp, alice: str, bob: str) -> None:
    """Dovecot 2.4.1's own oauth2 client pointed at dovecot-oauth2d (the DMS edge path)."""
    import dovecot24
    from oauth2d_runner import Daemon, daemon_problem

    problem = dovecot24.chroot_problem() or daemon_problem()
    if problem:
        print(f"7. Dovecot 2.4 path skipped: {problem}")
        return
    print("7. Dovecot 2.4.1 (Debian 13's packages in a chroot): its own oauth2 client asks dovecot-oauth2d ...")
    settings = f"introspection_url = {idp.userinfo_url}\nintrospection_mode = auth\nusername_attribute = email\n"
    daemon = Daemon(os.path.join(work, "daemon"), settings).start()
    stack = None
    try:
        stack = dovecot24.Dovecot24Stack(oauth2=daemon.dovecot24_block())
        stack.start()
        print("   Dovecot 2.4's oauth2 {} block (pointed at the daemon, its credentials in the URL):")
        for k, v in daemon.dovecot24_block().items():
            v = re.sub(r"//([^:]+):[^@]+@", r"//\1:<secret>@", v)
            print(f"     {k} = {v}")
        before = idp.stats().get("/me", 0)
        mark = daemon.log_mark()
        show("2.4 IMAP AUTHENTICATE XOAUTH2 as alice", stack.imap_login("alice@example.test", alice, "XOAUTH2"))
        show("2.4 IMAP AUTHENTICATE OAUTHBEARER as alice", stack.imap_login("alice@example.test", alice, "OAUTHBEARER"))
        show("2.4 SMTP submission OAUTHBEARER as alice", stack.smtp_login("alice@example.test", alice, "OAUTHBEARER"))
        show("2.4 IMAP as alice with bob's token", stack.imap_login("alice@example.test", bob, "XOAUTH2"), "refused")
        made_up = "made-up-token-456"
        show("2.4 IMAP as alice with a made-up token", stack.imap_login("alice@example.test", made_up, "XOAUTH2"),
             "refused")
        daemon.wait_log(mark, fp(made_up))
        print("8. What dovecot-oauth2d logged (one line per refusal, the token only as its hash):")
        for line in daemon.log_since(mark).splitlines():
            if "refused" in line or "authentication failed" in line or "temporary failure" in line:
                print_log_line(line)
        print(f"9. Provider requests made by the daemon: userinfo {idp.stats().get('/me', 0) - before} "
              f"(5 logins, 3 tokens; alice's token was new to the daemon, then cached for every auth process)")
    finally:
        if stack:
            stack.stop()
        daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
