#!/usr/bin/env bash
# Runs every test: the engine's unit tests, then the end-to-end suite (real oidc-provider, real
# Dovecot 2.3 with the built module, real Postfix submission) on loopback. Installs what is missing
# first (tests/setup.sh, quick when everything is there). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
echo "== unit tests (cargo test)"
cargo test --no-default-features
echo "== building the module (cargo build --release)"
cargo build --release
echo "== end-to-end tests (pytest tests/e2e)"
python3 -m pytest tests/e2e -ra "$@"
