#!/usr/bin/env bash
# The demo: installs what it needs, builds the module, starts a real OpenID provider, Dovecot and
# Postfix on loopback, logs in over IMAP and SMTP with a token, prints what happened, stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --release --quiet
exec python3 tests/e2e/demo.py
