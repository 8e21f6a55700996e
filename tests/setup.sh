#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian 12 machine (run as root): Dovecot 2.3 (imapd,
# pop3d, submissiond, auth-lua), Postfix, curl, openssl, systemd-analyze (checks the README's unit),
# Node's oidc-provider (the test identity provider), pytest, supervisor (DMS edge runs the daemon
# under supervisord) and the SCIM tests' scim2-tester and scim2-client for the python3 on PATH, and
# Debian 13's Dovecot 2.4.1 in a chroot (tests/trixie.sh). Quick when everything is there (tests/run.sh calls it every time).
#
# It never stops, starts or reconfigures the machine's Dovecot or Postfix, nor edits /etc/dovecot or
# /etc/postfix: the tests and the demo run private instances from a temporary directory. Packages it
# installs are not started either (Debian would start a freshly installed Dovecot).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "setup: run as root (the tests run private Dovecot and Postfix instances)" >&2; exit 1; }

need_apt=()
for pkg in dovecot-core dovecot-imapd dovecot-pop3d dovecot-submissiond dovecot-auth-lua postfix curl ca-certificates openssl systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
# pytest and supervisor for the python3 the tests run with (pyenv's or Debian's): pip where that
# python3 has it, else Debian's packages (which serve Debian's python3), installed with the others.
# (The SCIM packages have no Debian package: they need pip.)
need_py=()
python3 -c 'import pytest' 2>/dev/null || need_py+=(pytest)
python3 -c 'import supervisor' 2>/dev/null || need_py+=(supervisor)
# The SCIM tests' client and compliance checker (issue 13), pinned: PyPI only, so pip is required.
scim_py=("scim2-tester==0.5.2" "scim2-client[httpx2]==0.13.2" "scim2-models==0.12.3" "httpx2==2.16.2")
python3 -c 'import importlib.metadata as m, sys; sys.exit(0 if [m.version(p) for p in ("scim2-tester", "scim2-client", "scim2-models", "httpx2")] == ["0.5.2", "0.13.2", "0.12.3", "2.16.2"] else 1)' 2>/dev/null || {
  python3 -m pip --version >/dev/null 2>&1 || { echo "setup: pip for $(command -v python3) is required (scim2-tester, scim2-client)" >&2; exit 1; }
  need_py+=("${scim_py[@]}")
}
if ((${#need_py[@]})); then
  if python3 -m pip --version >/dev/null 2>&1; then
    echo "setup: pip install ${need_py[*]}"
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "${need_py[@]}"
  else
    need_apt+=(python3-pytest supervisor)
  fi
fi
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} (apt-get; their services are not started)"
  # Postfix asks questions at install time; answer them up front.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # invoke-rc.d (which a package's postinst uses to start its service) asks policy-rc.d first;
  # 101 = "not allowed". Only for this install, and only if the machine has no policy of its own.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# tests/setup.sh: no service starts while it installs packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ -e "$policy" ] && grep -q "tests/setup.sh" "$policy"; then rm -f "$policy"; trap - EXIT; fi
fi

# Dovecot 2.4.1 (Debian 13's packages) in a chroot, for the Dovecot 2.4 / DMS edge tests.
bash tests/trixie.sh

command -v node >/dev/null && node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' || {
  echo "setup: Node.js 20 or later is required (for oidc-provider, the test identity provider)" >&2; exit 1; }
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  echo "setup: npm ci (oidc-provider)"
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error >/dev/null
fi
command -v cargo >/dev/null || {
  echo "setup: no Rust toolchain (cargo); see README.md, \"Build\": rustup installs one" >&2; exit 1; }
echo "setup: ok"
