#!/usr/bin/env bash
# A large queue: fill a paused destination with N 1 KiB messages (default
# 1,000,000), then report tidegate's RSS, and the time from process start to
# /readyz 200 after a clean restart and after kill -9.
#
#   loadtests/backlog.sh [N]
#
# Needs wrk (Debian package; installed if missing). 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
. loadtests/lib.sh

{ tidegate_config_head; cat <<CONF
max_disk = "50GiB"
[[destination]]
name = "bench"
url = "http://127.0.0.1:9/"
owner = "bench@example.com"
[destination.queue]
max_messages = $N
max_bytes = "100GiB"
CONF
} > "$work/tidegate.toml"

start() {
  local t0; t0=$(date +%s.%N)
  start_tidegate "$work/tidegate.toml"
  until curl -sf "http://$ADMIN/readyz" >/dev/null; do sleep 0.01; done
  START_SECS=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.3f}')")
}
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/"$TG_PID"/status; }
hwm() { awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/"$TG_PID"/status; }
depth() { curl -s "http://$ADMIN/v1/destinations/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])'; }

start
curl -sf -X POST "http://$ADMIN/v1/destinations/bench/pause" >/dev/null
echo "filling $N messages of 1 KiB..."
while [ "$(depth)" -lt "$N" ]; do
  wrk -t2 -c64 -d10s -s loadtests/post-1k.lua "http://$INGRESS/bench/x" | grep -E 'Requests/sec' || true
done
echo "queue depth: $(depth); disk: $(du -sh "$work/data" | cut -f1)"
echo "RSS with the queue full: $(rss) (peak while filling: $(hwm))"

kill -TERM "$TG_PID"; wait "$TG_PID" || true
start; echo "clean restart to /readyz 200: ${START_SECS}s; RSS after start: $(rss); depth $(depth)"
kill -9 "$TG_PID"; wait "$TG_PID" 2>/dev/null || true
start; echo "restart after kill -9 to /readyz 200: ${START_SECS}s; RSS after start: $(rss); depth $(depth)"
