#!/usr/bin/env bash
# Cost of the handoff layer on the ingest path: durable ingest req/s of a
# 1 KiB LLM extraction to a destination with a handoff, against the same
# body to the same destination without one, alternating.
#
#   loadtests/handoff.sh [ROUNDS] [DURATION] [WHAT]
#
# WHAT is one of
#   mapping    (default) a schema of 10 properties, a category and a
#              10-field mapping: all native, no sandbox;
#   general    the README's fourth example (map, select, string
#              interpolation) on a 1 KiB meeting summary: compiled;
#   sandbox    the same output from a program outside the compiled subset
#              (a variable, `.[]`): run in the sandbox's workers;
#   hold_when  no handoff, a review predicate on the bare destination.
body="$(cd "$(dirname "$0")" && pwd)/handoff/extraction-1k.json"
case "${3:-mapping}" in
  mapping) with="HANDOFF=1" ;;
  general) with="HANDOFF=general"; body="${body%/*}/meeting-1k.json" ;;
  sandbox) with="HANDOFF=sandbox"; body="${body%/*}/meeting-1k.json" ;;
  hold_when) with="REVIEW=1" ;;
  *) echo "unknown WHAT: $3 (mapping, general, sandbox or hold_when)" >&2; exit 2 ;;
esac
exec "$(dirname "$0")/alternate.sh" "${1:-5}" "${2:-10s}" \
  "with ${3:-mapping}" "$with BENCH_BODY=$body" "without" "BENCH_BODY=$body"
