#!/usr/bin/env bash
# Batch delivery (SPEC §16), two measurements:
#
# 1. items/s against a downstream that allows 10 requests/s and takes
#    batches of 100 (loadtests/limited-downstream.py, token bucket, burst
#    $BURST (5), $ITEM_FAILURE (1%) of items refused at random with
#    per-item results; tidegate configured at 10/s, burst 1): N messages
#    queued on a paused destination, then resumed; the figure is the items
#    the downstream created per second from its first request to its last
#    success, against 0.9 × 10 × 100 = 900.
# 2. relay: ingest and delivery at once (wrk, 1 KiB JSON, 32 connections)
#    into an unlimited destination delivering to nginx `return 200`, with
#    batches of 100 and without, alternating ROUNDS times in one run; the
#    figure is messages delivered per second while ingesting, beside
#    ingest alone (the destination paused) in the same rounds: the most
#    a relay can deliver, since it cannot deliver more than it takes in.
#
#   loadtests/batch.sh [N] [DURATION] [ROUNDS]
#   SKIP_RELAY=1 / SKIP_LIMITED=1: one part only
#
# 127.0.0.1 only; every part stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
DURATION=${2:-10s}
ROUNDS=${3:-3}
. loadtests/lib.sh
need wrk wrk
need nginx nginx-light
cargo build --release --quiet

enqueue() { # COUNT: messages posted over four keep-alive connections
  python3 - "$INGRESS" "$1" <<'PY'
import http.client, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
count = int(sys.argv[2])
def post(lo, hi):
    c = http.client.HTTPConnection(host, int(port))
    for i in range(lo, hi):
        c.request("POST", "/limited/x", body=b'{"n": %d, "email": "a%d@example.com"}' % (i, i),
                  headers={"content-type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 202, r.status
step = (count + 3) // 4
ts = [threading.Thread(target=post, args=(k * step, min(count, (k + 1) * step))) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
PY
}

if [ -z "${SKIP_LIMITED:-}" ]; then
echo "== 1. a downstream allowing 10 requests/s (burst ${BURST:-5}), batches of 100 =="
port=$(free_port)
python3 loadtests/limited-downstream.py "$port" token_bucket --rate 10 --burst "${BURST:-5}" --batch 100 --item-failure "${ITEM_FAILURE:-0.01}" &
pids+=("$!")
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null && break; sleep 0.02; done
{ tidegate_config_head; cat <<CONF
[[destination]]
name = "limited"
url = "http://127.0.0.1:$port/"
owner = "bench@example.com"
[destination.rate_limit]
rate = "10/s"
burst = 1
max_in_flight = 4
[destination.batch]
max_messages = 100
max_wait = "200ms"
envelope = '{inputs: .}'
path = "/crm/v3/objects/contacts/batch/create"
results = '.results'
CONF
} > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
curl -sf -X POST "http://$ADMIN/v1/destinations/limited/pause" >/dev/null
enqueue "$N"
curl -sf -X POST "http://$ADMIN/v1/destinations/limited/resume" >/dev/null
python3 - "127.0.0.1:$port" "$ADMIN" "$N" <<'PY'
import json, sys, time, urllib.request
down, admin, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
get = lambda url: json.load(urllib.request.urlopen(url, timeout=5))
end = time.time() + 300
while time.time() < end:
    s = get(f"http://{down}/stats")
    if s["items_ok"] + s["items_failed"] >= n:
        break
    time.sleep(0.2)
d = get(f"http://{admin}/v1/destinations/limited")
span = max(s["span_s"], 1e-9)
rate = s["items_ok"] / span
requests = s["ok"] + s["refused"]
print(f"items created {s['items_ok']} (refused per item {s['items_failed']}) in {span:.1f} s: "
      f"{rate:.0f} items/s = {rate / 900:.2f} x the 900 goal; {requests} requests, {s['refused']} answered 429; "
      f"batches by flush {d['batch']['flushes']}; tidegate dead letters {d['queue']['dead_letters']}")
PY
kill "$TG_PID" 2>/dev/null || true; wait "$TG_PID" 2>/dev/null || true
fi
[ -z "${SKIP_RELAY:-}" ] || exit 0

echo "== 2. relay, batches of 100 against none, alternating =="
start_nginx_200
relay() { # BATCH(0|1): delivered/s while wrk ingests for DURATION
  rm -rf "$work/data"
  { tidegate_config_head; RELAY_EXTRA=$([ "$1" = 1 ] && printf '[destination.batch]\nmax_messages = 100\nmax_wait = "20ms"\n' || true) \
      relay_destination "http://127.0.0.1:$P_OK/relay"; } > "$work/relay.toml"
  start_tidegate "$work/relay.toml"
  # paused: ingest alone, the ceiling delivery can follow at best.
  [ "$1" != paused ] || curl -sf -X POST "http://$ADMIN/v1/destinations/relay/pause" >/dev/null
  local before after secs
  before=$(curl -s "http://$ADMIN/v1/destinations/relay" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["delivered"])')
  wrk -t2 -c32 -d"$DURATION" -s loadtests/post-1k.lua "http://$INGRESS/relay/x" > "$work/wrk.out" 2>&1
  after=$(curl -s "http://$ADMIN/v1/destinations/relay" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["delivered"])')
  secs=${DURATION%s}
  if [ "$1" = paused ]; then
    awk '/Requests\/sec/ {printf "%.0f (ingest alone)\n", $2}' "$work/wrk.out"
    kill "$TG_PID" 2>/dev/null || true; wait "$TG_PID" 2>/dev/null || true
    return
  fi
  python3 -c "print(f'{($after - $before) / $secs:.0f}', end=' ')"
  awk '/Requests\/sec/ {printf "(ingested %s/s)\n", $2}' "$work/wrk.out"
  kill "$TG_PID" 2>/dev/null || true; wait "$TG_PID" 2>/dev/null || true
}
single=() batched=() alone=()
for r in $(seq "$ROUNDS"); do
  s=$(relay 0); b=$(relay 1); p=$(relay paused)
  echo "round $r: one per request $s; batches of 100 $b; ingest alone $p"
  single+=("${s%% *}"); batched+=("${b%% *}"); alone+=("${p%% *}")
done
python3 - "${single[*]}" "${batched[*]}" "${alone[*]}" <<'PY'
import statistics, sys
s, b, p = ([float(x) for x in a.split()] for a in sys.argv[1:4])
ms, mb, mp = statistics.median(s), statistics.median(b), statistics.median(p)
print(f"relay delivered/s, median: one per request {ms:.0f}, batches of 100 {mb:.0f}: {mb / ms:.2f}x "
      f"(rounds: {', '.join(f'{y / x:.2f}' for x, y in zip(s, b))}); ingest alone {mp:.0f}/s: "
      f"one per request delivers {ms / mp:.2f} of it, batches {mb / mp:.2f}")
PY
