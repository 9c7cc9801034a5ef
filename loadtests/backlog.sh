#!/usr/bin/env bash
# A large queue: fill a paused destination with N 1 KiB messages (default
# 1,000,000), then report tidegate's RSS, and the time from process start to
# /readyz 200 after a clean restart and after kill -9; then, after another
# kill -9, the root page of the messages table overwritten (one damaged
# interior page above every row): the time to salvage the whole queue from
# the leaf pages, and the depth after it.
#
#   loadtests/backlog.sh [N]
#
# Needs wrk (Debian package; installed if missing). 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -n "${TIDEGATE_BIN:-}" ] || cargo build --release --quiet  # an A/B brings its own binaries
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
  for _ in $(seq 30000); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.01; done
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
kill -9 "$TG_PID"; wait "$TG_PID" 2>/dev/null || true
python3 - "$work/data/journal.db" <<'PY'
import sqlite3, sys
db = sys.argv[1]
c = sqlite3.connect(db)  # closing it folds the WAL into the file
root, = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()
size, = c.execute("PRAGMA page_size").fetchone()
c.close()
with open(db, "r+b") as f:
    f.seek((root - 1) * size)
    assert f.read(1) == b"\x05", "the root is an interior page"
    f.seek((root - 1) * size)
    f.write(b"\xa5" * size)
PY
START_TRIES=60000 start; echo "restart with the table's root page destroyed, to /readyz 200: ${START_SECS}s; depth $(depth); $(grep -o 'salvaged=[0-9]* lost=[0-9]*' "$work/tg.err" | tail -1); peak RSS $(hwm)"
