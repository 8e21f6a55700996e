"""Issue 13: the plain Dovecot/Postfix recipe (no DMS): dovecot-oauth2d's SCIM service with
`scim_backend = passwd-file` writes a Dovecot passwd-file userdb and two Postfix maps, and runs
`scim_after_change` (postmap of both maps) after each change. A real Dovecot 2.3 (mailstack.MailStack)
has the passwd-file as a userdb, and a real Postfix has the maps as virtual_mailbox_maps and
virtual_alias_maps (hash:). The RCPT checks poll for the expected answer (the service runs
scim_after_change after it answered).
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import tempfile

import pytest

import scim
from mailstack import HOST, MAIL_GID, MAIL_UID, MailStack
from scim import ScimDaemon, patch, user
from test_scim_protocol import NO_PROVIDER, need, scim_problem

LUA_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "lua", "dovecot-oauth2.lua")
DOMAIN = "example.com"


@pytest.fixture(scope="module")
def plain(workroot):
    need(scim_problem())
    root = tempfile.mkdtemp(prefix="scim-plain-", dir=workroot)
    os.chmod(root, 0o755)
    files = os.path.join(root, "maps")
    os.makedirs(files)
    os.chmod(files, 0o755)
    passwd = os.path.join(files, "scim-users")
    mailbox_map, alias_map = os.path.join(files, "vmailbox"), os.path.join(files, "virtual")
    stack = MailStack(os.path.join(root, "stack"), lua_script=LUA_SCRIPT, settings_file=None, module_dir=None,
                      passdb_conf="passdb {{\n  driver = passwd-file\n  args = {passwd_file}\n}}\n",
                      extra_dovecot_conf=f"userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n")
    # Postfix: the maps the service writes, as the README's recipe puts them
    after = os.path.join(files, "after-change.sh")
    with open(after, "w") as f:
        f.write(f"#!/bin/sh\nset -e\npostmap -c {stack.pf_config_dir} hash:{mailbox_map}\n"
                f"postmap -c {stack.pf_config_dir} hash:{alias_map}\n")
    os.chmod(after, 0o755)
    open(passwd, "a").close()
    for m in (mailbox_map, alias_map):  # Postfix must find the tables before the first change
        open(m, "a").close()
        subprocess.run(["postmap", "-c", stack.pf_config_dir, "hash:" + m], check=True, capture_output=True)
    subprocess.run(["postconf", "-c", stack.pf_config_dir, "-e", f"virtual_mailbox_domains = {DOMAIN}",
                    f"virtual_mailbox_maps = hash:{mailbox_map}", f"virtual_alias_maps = hash:{alias_map}",
                    "virtual_transport = discard", "smtpd_relay_restrictions = reject_unauth_destination",
                    # a fresh smtpd per client: a process notices a changed hash: map by its mtime
                    # (seconds), so one that opened the map in the second of a change would keep it
                    "max_use = 1"],
                   check=True, capture_output=True)
    stack.start()
    d = None
    try:
        d = ScimDaemon(os.path.join(root, "daemon"), NO_PROVIDER, {
            "scim_domains": DOMAIN, "scim_backend": "passwd-file", "scim_passwd_file": passwd,
            "scim_mailbox_map": mailbox_map, "scim_alias_map": alias_map, "scim_uid": str(MAIL_UID),
            "scim_gid": str(MAIL_GID), "scim_mail_root": stack.mail_root, "scim_after_change": after,
            "scim_aliases": "yes", "scim_state_file": os.path.join(root, "scim-state.json")}).start()
        yield {"stack": stack, "daemon": d, "passwd": passwd, "mailbox_map": mailbox_map, "alias_map": alias_map}
    finally:
        if d:
            d.stop()
        stack.stop()


def rcpt(stack: MailStack, address: str) -> int:
    """The SMTP reply code of RCPT TO:<address> (from an outside sender, unauthenticated)."""
    with smtplib.SMTP(HOST, stack.submission_port, timeout=30) as s:
        s.ehlo("client.example.net")
        code, _ = s.mail("someone@example.net")
        assert code == 250
        code, _ = s.rcpt(address)
        s.rset()
        return code


def wait_rcpt(stack: MailStack, address: str, accepted: bool) -> None:
    scim.wait_for(lambda: (rcpt(stack, address) == 250) == accepted, 30,
                  f"RCPT TO {address} {'accepted' if accepted else 'refused'}")


def doveadm_user(stack: MailStack, address: str) -> subprocess.CompletedProcess:
    return subprocess.run(["doveadm", "-c", stack.conf_path, "user", address], capture_output=True, text=True,
                          timeout=30)


def test_unknown_address_is_refused_before_provisioning(plain):
    assert rcpt(plain["stack"], "zed@example.com") == 550


def test_provisioned_address_is_accepted_by_postfix(plain):
    plain["daemon"].create(user("pam@example.com"))
    wait_rcpt(plain["stack"], "pam@example.com", True)


def test_provisioned_alias_is_accepted_by_postfix(plain):
    plain["daemon"].create(user("quin@example.com", "quin@example.com", "q@example.com"))
    wait_rcpt(plain["stack"], "q@example.com", True)


def test_provisioned_user_is_found_by_dovecots_userdb_with_the_configured_uid(plain):
    plain["daemon"].create(user("rex@example.com"))
    p = doveadm_user(plain["stack"], "rex@example.com")
    assert p.returncode == 0, p.stdout + p.stderr
    fields = dict(ln.split(None, 1) for ln in p.stdout.splitlines()[1:] if "\t" in ln or " " in ln)
    assert fields.get("uid", "").strip() == str(MAIL_UID) and fields.get("gid", "").strip() == str(MAIL_GID), p.stdout


def test_deleted_address_is_refused_by_postfix_and_unknown_to_dovecot(plain):
    u = plain["daemon"].create(user("sue@example.com", "sue@example.com", "sue.alias@example.com"))
    wait_rcpt(plain["stack"], "sue@example.com", True)
    assert plain["daemon"].scim("DELETE", f"/Users/{u['id']}").status == 204
    wait_rcpt(plain["stack"], "sue@example.com", False)
    wait_rcpt(plain["stack"], "sue.alias@example.com", False)
    assert doveadm_user(plain["stack"], "sue@example.com").returncode != 0


def test_deactivated_address_is_refused_by_postfix(plain):
    u = plain["daemon"].create(user("tom@example.com"))
    wait_rcpt(plain["stack"], "tom@example.com", True)
    r = plain["daemon"].scim("PATCH", f"/Users/{u['id']}", patch({"op": "replace", "path": "active", "value": False}))
    assert r.status in (200, 204), r.text
    wait_rcpt(plain["stack"], "tom@example.com", False)


def test_the_passwd_file_lines_are_what_dovecot_reads(plain):
    plain["daemon"].create(user("uma@example.com"))
    lines = [ln for ln in open(plain["passwd"]).read().splitlines() if ln and not ln.startswith("#")]
    mine = [ln.split(":") for ln in lines if ln.startswith("uma@example.com:")]
    assert len(mine) == 1 and len(mine[0]) >= 7, lines
    assert mine[0][2:4] == [str(MAIL_UID), str(MAIL_GID)], mine
