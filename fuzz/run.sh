#!/usr/bin/env bash
# Fuzzes every target for SECONDS each (default 30: the bounded run CI does; for a long run use e.g.
# `bash fuzz/run.sh 3600`). Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain the
# sanitizer flags are enabled with RUSTC_BOOTSTRAP=1. Seeds are in fuzz/seeds/<target>; new inputs go
# to fuzz/corpus/<target> (not committed); a crash leaves its input in fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -O
for target in settings token provider_reply jwk scim_request; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=1024 -print_final_stats=1 2>&1 |
    grep -E 'Done [0-9]+ runs|stat::number_of_executed_units|ERROR|panicked|SUMMARY' || true
  if compgen -G "artifacts/$target/*" >/dev/null; then
    echo "fuzz: $target found a failing input: fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: no failures"
