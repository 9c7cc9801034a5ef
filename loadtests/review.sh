#!/usr/bin/env bash
# Cost of the review station on the ingest of messages it does not hold:
# durable ingest req/s of the 1 KiB LLM extraction to a destination with a
# review station (a hold predicate and category sampling that hold none of
# them) against the same destination without one, alternating, three
# times: on a destination with a handoff (schema, category, mapping: the
# body is parsed anyway); on a bare one (the predicate alone makes tidegate
# parse it, in the handoff sandbox); and on a bare one whose review only
# samples (1% held, 1% audited: decided on the id, the body is not read).
#
#   loadtests/review.sh [ROUNDS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
body="$PWD/loadtests/handoff/extraction-1k.json"
echo "== with a handoff =="
loadtests/alternate.sh "${1:-5}" "${2:-10s}" \
  "with review" "HANDOFF=1 REVIEW=1 BENCH_BODY=$body" "without" "HANDOFF=1 BENCH_BODY=$body"
echo "== bare destination =="
loadtests/alternate.sh "${1:-5}" "${2:-10s}" \
  "with review" "REVIEW=1 BENCH_BODY=$body" "without" "BENCH_BODY=$body"
echo "== bare destination, sampling only =="
loadtests/alternate.sh "${1:-5}" "${2:-10s}" \
  "with review" "REVIEW=sample BENCH_BODY=$body" "without" "BENCH_BODY=$body"
