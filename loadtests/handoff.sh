#!/usr/bin/env bash
# Cost of the handoff layer on the ingest path: durable ingest req/s of a
# 1 KiB LLM extraction to a destination with a schema (10 properties), a
# category and a 10-field jq mapping, run in the sandbox's worker processes,
# against the same body to the same destination without them, alternating.
#
#   loadtests/handoff.sh [ROUNDS] [DURATION]
body="$(cd "$(dirname "$0")" && pwd)/handoff/extraction-1k.json"
exec "$(dirname "$0")/alternate.sh" "${1:-5}" "${2:-10s}" \
  "with handoff" "HANDOFF=1 BENCH_BODY=$body" "without" "BENCH_BODY=$body"
