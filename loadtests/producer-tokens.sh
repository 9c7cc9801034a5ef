#!/usr/bin/env bash
# Cost of producer identities on the ingest path: durable ingest req/s with
# 8 [[ingress.producer]] entries (requests carry the last one's token, so
# every token is compared) against no tokens at all, alternating.
#
#   loadtests/producer-tokens.sh [ROUNDS] [DURATION]
exec "$(dirname "$0")/alternate.sh" "${1:-5}" "${2:-10s}" \
  "with producer tokens" "PRODUCERS=8" "without" ""
