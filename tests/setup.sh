#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian 12 machine (run as root): Dovecot 2.3 (imapd,
# pop3d, submissiond, auth-lua), Postfix, curl, openssl, Node's oidc-provider (the test identity
# provider), pytest. Quick when everything is there (tests/run.sh calls it every time).
#
# It never stops, starts or reconfigures the machine's Dovecot or Postfix, nor edits /etc/dovecot or
# /etc/postfix: the tests and the demo run private instances from a temporary directory. Packages it
# installs are not started either (Debian would start a freshly installed Dovecot).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "setup: run as root (the tests run private Dovecot and Postfix instances)" >&2; exit 1; }

need_apt=()
for pkg in dovecot-core dovecot-imapd dovecot-pop3d dovecot-submissiond dovecot-auth-lua postfix curl ca-certificates openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
python3 -c 'import pytest' 2>/dev/null || need_apt+=(python3-pytest)
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

command -v node >/dev/null && node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' || {
  echo "setup: Node.js 20 or later is required (for oidc-provider, the test identity provider)" >&2; exit 1; }
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  echo "setup: npm ci (oidc-provider)"
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error >/dev/null
fi
command -v cargo >/dev/null || {
  echo "setup: no Rust toolchain (cargo); see README.md, \"Build\": rustup installs one" >&2; exit 1; }
echo "setup: ok"
