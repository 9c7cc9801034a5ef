#!/usr/bin/env bash
# The console under load, on the release binary:
#  1. server time of the overview page (`/ui/`) and its live fragment with
#     DESTS destinations holding QUEUED messages between them (paused, so
#     they stay), SAMPLES sequential requests each: p50/p99/max;
#  2. what a browser left open on the overview costs tidegate: its CPU time
#     over OPEN seconds with headless Chromium showing `/ui/` (refreshing
#     every 2 s), against the same time with no browser, as a share of one
#     core.
#
#   loadtests/console.sh [DESTS] [QUEUED] [SAMPLES] [OPEN]
#
# Needs wrk and chromium (Debian packages; installed if missing).
# 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTS=${1:-50}
QUEUED=${2:-1000000}
SAMPLES=${3:-500}
OPEN=${4:-600}

. loadtests/lib.sh
need wrk wrk
need chromium chromium
cargo build --release --quiet

{ tidegate_config_head; echo '[log]'; echo 'level = "warn"'
  for i in $(seq "$DESTS"); do cat <<CONF
[[destination]]
name = "d$i"
url = "http://127.0.0.1:9/"
owner = "bench@example.com"
latency_objective = "15m"
[destination.queue]
max_messages = 10000000
max_bytes = "20GiB"
CONF
  done
} > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
for i in $(seq "$DESTS"); do curl -sf -X POST "http://$ADMIN/v1/destinations/d$i/pause" >/dev/null; done
# Spread the messages over the destinations: one wrk per destination in turn.
per=$((QUEUED / DESTS))
depth() { curl -s "http://$ADMIN/v1/destinations/d$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])'; }
cat > "$work/round-robin.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event":"lead.scored","pad":"' .. string.rep("x", 200) .. '"}'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/d" .. (n % $DESTS + 1) .. "/x")
end
LUA
total() { curl -s "http://$ADMIN/v1/destinations" | python3 -c 'import json,sys; print(sum(d["queue"]["depth"] for d in json.load(sys.stdin)["destinations"]))'; }
while [ "$(total)" -lt "$QUEUED" ]; do
  wrk -t2 -c32 -d10s -s "$work/round-robin.lua" "http://$INGRESS" >/dev/null 2>&1
done
echo "queued: $(total) messages over $DESTS destinations (about $per each)"
python3 - "$ADMIN" "$SAMPLES" <<'PY'
import http.client, statistics, sys, time
admin, samples = sys.argv[1], int(sys.argv[2])
host, port = admin.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=30)
def run(path):
    ms = []
    for i in range(samples + samples // 10):
        t = time.perf_counter()
        c.request("GET", path); r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        if i >= samples // 10:
            ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    print(f"GET {path:<24} n={len(ms)} p50 {ms[len(ms)//2]:.2f} ms  p99 {ms[int(len(ms)*0.99)-1]:.2f} ms  max {ms[-1]:.2f} ms")
run("/ui/")
run("/ui/fragment/overview")
PY
cpu() { awk '{print $14 + $15}' "/proc/$TG_PID/stat"; }
hz=$(getconf CLK_TCK)
c0=$(cpu); sleep "$OPEN"; c1=$(cpu)
idle=$(python3 -c "print(f'{($c1 - $c0) / $hz / $OPEN * 100:.3f}')")
profile=$(mktemp -d -p "$work")
chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" "http://$ADMIN/ui/" >/dev/null 2>&1 &
pids+=($!)
sleep 5
c0=$(cpu); sleep "$OPEN"; c1=$(cpu)
open=$(python3 -c "print(f'{($c1 - $c0) / $hz / $OPEN * 100:.3f}')")
echo "tidegate CPU over ${OPEN}s: ${idle}% of one core with no browser; ${open}% with the overview open in Chromium"
