"""Issue 14, point 2: why a token was refused is in the log at Debian's default verbosity.

Dovecot drops a login's info lines unless `auth_verbose = yes` (Debian ships `no`). A refusal the
module has just decided is therefore logged as a warning; a refusal answered from the module's
negative cache (the same token again) is info only, and so are refusals over 20 a minute per
auth-worker, so a password-guessing run with made-up tokens cannot flood the log. With
`auth_verbose = yes` every refusal is logged once, at one level or the other.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from conftest import userinfo_settings

ALICE = "alice@example.test"
WARNING_BURST = 20   # src/lua.rs: WARNING_BURST
REFILL_SECS = 3      # src/lua.rs: WARNING_REFILL


def fp(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def refusals(log: str, level: str) -> list[str]:
    return [ln for ln in log.splitlines()
            if f": {level}: " in ln and "dovecot-oauth2: authentication failed: " in ln]


def made_up() -> str:
    return "made-up-" + secrets.token_urlsafe(24)


def quiet_stack(make_stack, idp, verbose: bool = False, extra: str = ""):
    # one auth-worker: the module's cache and the warning budget are per process
    return make_stack(userinfo_settings(idp, extra), auth_verbose=verbose, auth_worker_max_count=1, postfix=False,
                      dovecot_submission=False)


def test_refusal_reason_is_a_warning_at_debians_default_verbosity(make_stack, live_idp):
    s = quiet_stack(make_stack, live_idp)
    token = live_idp.token("bob")
    mark = s.log_mark()
    r = s.imap_login(ALICE, token, "XOAUTH2")
    assert not r.ok and not r.tempfail, r.text
    log = s.wait_log(mark, fp(token))
    lines = refusals(log, "Warning")
    assert len(lines) == 1, log
    assert f"token belongs to 'bob@example.test', not to login user '{ALICE}' (token {fp(token)})" in lines[0]
    # Dovecot's own context: the login user, the client's address and the session
    assert re.search(rf"auth-worker\(\d+\): Warning: .*lua\({re.escape(ALICE)},127\.", lines[0]), lines[0]


def test_a_token_refused_again_from_the_cache_is_not_warned_about_twice(make_stack, live_idp):
    s = quiet_stack(make_stack, live_idp, extra="cache_negative_ttl_secs = 3600\n")
    token = made_up()
    mark = s.log_mark()
    for _ in range(3):
        r = s.imap_login(ALICE, token, "XOAUTH2")
        assert not r.ok and not r.tempfail, r.text
    # a later, different refusal marks the end of what the three attempts logged
    other = made_up()
    assert not s.imap_login(ALICE, other, "XOAUTH2").ok
    log = s.wait_log(mark, fp(other))
    assert len([ln for ln in refusals(log, "Warning") if fp(token) in ln]) == 1, log
    assert "provider refused the token (HTTP 401)" in log


def test_made_up_tokens_give_at_most_20_warnings_a_minute_and_a_count_of_the_rest(make_stack, live_idp):
    s = quiet_stack(make_stack, live_idp)
    flood = [made_up() for _ in range(WARNING_BURST + 10)]
    mark = s.log_mark()
    started = time.monotonic()
    for t in flood:
        r = s.imap_login(ALICE, t, "XOAUTH2")
        assert not r.ok and not r.tempfail, r.text
    elapsed = time.monotonic() - started
    # Then, a refill period later, one more: its warning (the worker's lines reach the log in order)
    # shows that everything logged for the flood is in the log.
    sent = list(flood)
    deadline = time.monotonic() + 120
    while True:
        time.sleep(REFILL_SECS)
        marker = made_up()
        sent.append(marker)
        assert not s.imap_login(ALICE, marker, "XOAUTH2").ok
        log = s.wait_log(mark, fp(marker), timeout=REFILL_SECS)
        if fp(marker) in log or time.monotonic() > deadline:
            break
    lines = refusals(log, "Warning")
    assert fp(marker) in lines[-1], log[-3000:]
    warned = [t for t in flood if any(fp(t) in ln for ln in lines)]
    # the budget: a burst of 20, then one every 3 s (a slower run is allowed more)
    assert WARNING_BURST <= len(warned) <= WARNING_BURST + int(elapsed // REFILL_SECS) + 1, (len(warned), elapsed)
    assert not refusals(log, "Info"), "info lines are not shown at auth_verbose = no"
    # Each refusal left at info level is counted once, in the note right before the next warning.
    unwarned = [t for t in sent if not any(fp(t) in ln for ln in lines)]
    notes = [int(m.group(1)) for m in re.finditer(
        rf"dovecot-oauth2: (\d+) refusals before this one were logged at info level only "
        rf"\(more than {WARNING_BURST} a minute; auth_verbose = yes shows them\)", log)]
    assert sum(notes) == len(unwarned) and all(n > 0 for n in notes), (notes, len(unwarned))
    warnings = [ln for ln in log.splitlines() if ": Warning: " in ln]
    for i, ln in enumerate(warnings):
        if "refusals before this one" in ln:
            assert "dovecot-oauth2: authentication failed: " in warnings[i + 1], warnings[i:i + 2]


def test_with_auth_verbose_every_refusal_is_logged_once(make_stack, live_idp):
    s = quiet_stack(make_stack, live_idp, verbose=True, extra="cache_negative_ttl_secs = 3600\n")
    tokens = [made_up() for _ in range(WARNING_BURST + 5)]
    mark = s.log_mark()
    for t in tokens + tokens[:2]:  # the first two again: answered from the module's negative cache
        assert not s.imap_login(ALICE, t, "XOAUTH2").ok
    end = made_up()
    assert not s.imap_login(ALICE, end, "XOAUTH2").ok
    log = s.wait_log(mark, fp(end))
    lines = refusals(log, "Warning") + refusals(log, "Info")
    for t in tokens[2:]:
        assert len([ln for ln in lines if fp(t) in ln]) == 1, (fp(t), log)
    for t in tokens[:2]:
        mine = [ln for ln in lines if fp(t) in ln]
        assert len(mine) == 2 and ", cached verdict)" in mine[1] and ": Info: " in mine[1], mine
