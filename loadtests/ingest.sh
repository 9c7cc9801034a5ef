#!/usr/bin/env bash
# Durable ingest throughput: tidegate (destination paused, so every request
# is a durable append and nothing else) against nginx `return 202` on the
# same machine in the same run: the HTTP ceiling of the box.
#
#   loadtests/ingest.sh [DURATION] [CONNECTIONS]
#
# Needs wrk and nginx (Debian packages; installed if missing). Targets
# 127.0.0.1 only and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
CONNS=${2:-32}
THREADS=${THREADS:-2}

. loadtests/lib.sh
need wrk wrk
need nginx nginx-light


[ -n "${TIDEGATE_BIN:-}" ] || cargo build --release --quiet  # an A/B brings its own binaries
start_nginx_202

# PRODUCERS=N (producer-tokens.sh): N producer identities, the requests
# carrying the last one's token (every token is compared on each request).
producers() {
  [ -n "${PRODUCERS:-}" ] || return 0
  for i in $(seq "$PRODUCERS"); do
    printf '[[ingress.producer]]\nname = "p%s"\ntoken_env = "TIDEGATE_BENCH_TOKEN_%s"\n' "$i" "$i"
    export "TIDEGATE_BENCH_TOKEN_$i=bench-token-$i-0123456789abcdef"
  done
  export TIDEGATE_BENCH_TOKEN="bench-token-$PRODUCERS-0123456789abcdef"
}
# HANDOFF=1 (handoff.sh): the destination validates against a schema of 10
# properties and maps 10 fields, as benches/handoff.rs does (a mapping: it
# runs natively). HANDOFF=general: the README's fourth example (map,
# select, string interpolation: compiled), with its category.
# HANDOFF=sandbox: the same output from a program the compiled subset does
# not take (a variable, `.[]`), run in the sandbox's workers.
handoff() {
  case "${HANDOFF:-}" in
    "") ;;
    general) printf '[destination.handoff]\ntransform_file = "%s"\ncategory = ".account"\n' \
      "$PWD/examples/handoff/activity.jq" ;;
    sandbox) printf '[destination.handoff]\ntransform_file = "%s"\ncategory = ".account"\n' \
      "$PWD/loadtests/handoff/activity-sandboxed.jq" ;;
    *) printf '[destination.handoff]\nschema = "%s"\ntransform_file = "%s"\ncategory = ".document_type"\n' \
      "$PWD/loadtests/handoff/schema.json" "$PWD/loadtests/handoff/mapping.jq" ;;
  esac
}
# REVIEW=1 (review.sh): the destination has a review station whose
# predicate and sampling hold none of the load's messages (the body's
# confidence is 0.93, its category is not sampled). REVIEW=sample: only
# sampling (1%) and audits (1%), no predicate: the body is not parsed.
review() {
  case "${REVIEW:-}" in
    "") ;;
    sample) printf '[destination.review]\nsample = 0.01\naudit_sample = 0.01\n' ;;
    *) printf '[destination.review]\nhold_when = ".confidence < 0.5"\nsample = 0.0\nsample_by_category = { nda = 0.5 }\n' ;;
  esac
}
# The producer tables belong to [ingress]: written before the next table.
{ tidegate_config_head | sed '/^\[admin\]/,$d'; producers; tidegate_config_head | sed -n '/^\[admin\]/,$p'; cat <<CONF
[log]
level = "${TIDEGATE_LOG_LEVEL:-info}"
format = "${TIDEGATE_LOG_FORMAT:-text}"
[[destination]]
name = "bench"
url = "http://127.0.0.1:9/"
owner = "bench@example.com"
CONF
handoff
review
} > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
curl -sf -X POST "http://$ADMIN/v1/destinations/bench/pause" >/dev/null

run() { wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s loadtests/post-1k.lua "$1" 2>&1; }
if [ -z "${SKIP_NGINX:-}" ]; then
  echo "== nginx return 202 =="; nginx_out=$(run "http://127.0.0.1:$NGINX_PORT/bench/x"); echo "$nginx_out"
fi
echo "== tidegate durable ingest =="; tg_out=$(run "http://$INGRESS/bench/x"); echo "$tg_out"
if [ -n "${SKIP_NGINX:-}" ]; then
  # A refused request (a body the schema rejects, say) is fast and stores
  # nothing: a run with any is not a measurement of durable ingest.
  refused=$(echo "$tg_out" | awk '/Non-2xx/ {print $5}')
  [ -z "$refused" ] || { echo "tidegate refused $refused requests: not a durable-ingest figure" >&2; exit 1; }
  printf '%-28s %12s %10s\n' "tidegate durable ingest" "$(echo "$tg_out" | awk '/Requests\/sec/ {print $2}')" "$(echo "$tg_out" | awk '/ 99%/ {print $2}')"
  exit 0
fi

rps() { echo "$1" | awk '/Requests\/sec/ {print $2}'; }
p99() { echo "$1" | awk '/ 99%/ {print $2}'; }
non2xx() { echo "$1" | awk '/Non-2xx/ {print $5}'; }
depth=$(curl -s "http://$ADMIN/v1/destinations/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])')
n=$(rps "$nginx_out"); t=$(rps "$tg_out")
printf '\n%-28s %12s %10s\n' "target" "req/s" "p99"
printf '%-28s %12s %10s\n' "nginx return 202" "$n" "$(p99 "$nginx_out")"
printf '%-28s %12s %10s\n' "tidegate durable ingest" "$t" "$(p99 "$tg_out")"
python3 -c "print(f'ratio tidegate/nginx: {$t/$n:.3f}')"
echo "tidegate non-2xx: ${non2xx:-0}$(non2xx "$tg_out"); messages stored (queue depth): $depth"
