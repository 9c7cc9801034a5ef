#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each). Not part of
# CI. Needs cargo-fuzz (`cargo install cargo-fuzz`); the machine's stable
# toolchain is used with RUSTC_BOOTSTRAP=1 for the sanitizer flags.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in config_parse record_decode rate_headers leaf_pages; do
  echo "== $target for ${SECS}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$SECS" -rss_limit_mb=2048 2>&1 | tail -4
done
