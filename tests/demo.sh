#!/usr/bin/env bash
# The demo: installs what it needs, builds the module, starts a real OpenID provider, Dovecot and
# Postfix on loopback, logs in over IMAP and SMTP with a token, prints what happened, stops it all.
# It never stops, starts or reconfigures the machine's own Dovecot or Postfix: its instances run from
# a temporary directory, on free ports of 127.0.0.1, beside a system Dovecot that may be running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
echo "demo: building the module (cargo build --release; the first build takes a few minutes)"
cargo build --release
exec python3 tests/e2e/demo.py
