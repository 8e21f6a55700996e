#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian 12 machine (run as root):
# Dovecot 2.3 (imapd, pop3d, submissiond, auth-lua), Postfix, curl, openssl, Node's oidc-provider (the test identity provider), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in dovecot-core dovecot-imapd dovecot-pop3d dovecot-submissiond dovecot-auth-lua postfix curl ca-certificates openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}"
  # Postfix asks questions at install time; answer them up front.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The packages' own instances are not used (the tests run private ones on loopback); make sure the
# system ones are not holding ports or the auth socket.
service dovecot stop >/dev/null 2>&1 || true
postfix stop >/dev/null 2>&1 || true

command -v node >/dev/null || { echo "setup: Node.js is required (for oidc-provider)" >&2; exit 1; }
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  echo "setup: npm ci (oidc-provider)"
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error >/dev/null
fi
python3 -c 'import pytest' 2>/dev/null || { echo "setup: pip install pytest"; python3 -m pip install -q pytest; }
echo "setup: ok"
