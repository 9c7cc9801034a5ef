#!/usr/bin/env bash
# Relay under wrk with `perf record` on tidegate: where the CPU goes when
# tidegate ingests and delivers at once (no rate limit) to nginx `return 200`.
#
#   loadtests/relay-profile.sh [DURATION] [CONNECTIONS]
#
# Load from wrk, or k6 with K6=1; NO_PERF=1 skips the profile. Prints the
# load generator's figures, tidegate's deliveries over the run, and writes
# perf.data to $PERF_OUT (default target/relay.perf.data). 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15s}
CONNS=${2:-32}
PERF_OUT=${PERF_OUT:-target/relay.perf.data}
[ -n "${TIDEGATE_BIN:-}" ] || cargo build --release --quiet  # an A/B brings its own binaries
. loadtests/lib.sh
start_nginx_200
{ tidegate_config_head; printf '[log]\nlevel = "warn"\n'; relay_destination "http://127.0.0.1:$P_OK/relay"; } > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
delivered() { curl -s "http://$ADMIN/v1/destinations/relay" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["delivered"])'; }
fsyncs() { curl -s "http://$ADMIN/metrics" | awk '/^tidegate_journal_fsyncs_total / {print $2}'; }
before=$(delivered)
fsyncs_before=$(fsyncs)
load() {
  if [ -n "${K6:-}" ]; then
    k6 run --quiet --no-color --summary-export "$work/k6.json" -e TARGET="http://$INGRESS/relay/x" -e VUS="$CONNS" -e DURATION="$DURATION" loadtests/k6/ingest.js >/dev/null 2>&1 || true
    python3 -c "import json; m=json.load(open('$work/k6.json'))['metrics']; print('Requests/sec:', round(m['http_reqs']['rate'])); print('     99%', round(m['http_req_duration']['p(99)'],2))"
  else
    wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s loadtests/post-1k.lua "http://$INGRESS/relay/x"
  fi
}
if [ -n "${NO_PERF:-}" ]; then
  load
else
  perf record -F 999 -g -o "$PERF_OUT" -p "$TG_PID" -- sleep "${DURATION%s}" 2>/dev/null &
  perfpid=$!
  load
  wait $perfpid || true
fi
after=$(delivered)
echo "fsyncs during the run: $(( $(fsyncs) - fsyncs_before ))"
echo "delivered during the run: $((after - before)); backlog: $(curl -s "http://$ADMIN/v1/destinations/relay" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])')"
