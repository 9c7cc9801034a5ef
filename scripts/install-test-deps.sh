#!/usr/bin/env bash
# Installs the system packages the test suite uses, if missing:
# promtool (Debian's prometheus package) checks the /metrics exposition.
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
