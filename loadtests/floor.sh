#!/usr/bin/env bash
# Durable ingest against the disk's floor: wrk -t2, 1 KiB JSON bodies, at
# 32 and 256 connections, alternating rounds of the durable floor
# (loadtests/durable-floor: HTTP + append + fdatasync before the 202, nothing
# else), tidegate (destination paused, so every request is a durable append)
# and nginx `return 202` (the HTTP ceiling, storing nothing). The floor and
# tidegate start from empty files each round, so neither measures a longer
# history than the other. Prints each round, the means, tidegate / floor
# and floor / nginx.
#
#   loadtests/floor.sh [ROUNDS] [DURATION]
#
# Needs wrk and nginx (Debian packages; installed if missing). 127.0.0.1
# only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
DURATION=${2:-10s}

. loadtests/lib.sh
need wrk wrk
need nginx nginx-light
[ -n "${TIDEGATE_BIN:-}" ] || cargo build --release --quiet  # an A/B brings its own binaries
CARGO_TARGET_DIR=target/durable-floor cargo build --release --quiet --manifest-path loadtests/durable-floor/Cargo.toml

start_nginx_202
{ tidegate_config_head; cat <<CONF
[[destination]]
name = "bench"
url = "http://127.0.0.1:9/"
owner = "bench@example.com"
CONF
} > "$work/tidegate.toml"

floor_up() {
  rm -f "$work/floor.log"
  FLOOR_PORT=$(free_port)
  target/durable-floor/release/durable-floor "127.0.0.1:$FLOOR_PORT" "$work/floor.log" & FLOOR_PID=$!
  pids+=("$FLOOR_PID")
  for _ in $(seq 200); do curl -sf -o /dev/null -X POST "http://127.0.0.1:$FLOOR_PORT/" -d '{}' && break; sleep 0.02; done
}
tidegate_up() {
  rm -rf "$work/data"
  start_tidegate "$work/tidegate.toml"
  curl -sf -X POST "http://$ADMIN/v1/destinations/bench/pause" >/dev/null
}
down() { kill "$1"; wait "$1" 2>/dev/null || true; }

rps() { # URL CONNECTIONS
  local out; out=$(wrk -t2 -c"$2" -d"$DURATION" -s loadtests/post-1k.lua "$1" 2>&1)
  if echo "$out" | grep -q Non-2xx; then echo "non-2xx answers from $1" >&2; exit 1; fi
  echo "$out" | awk '/Requests\/sec/ {print $2}'
}
for conns in 32 256; do
  f=(); t=(); n=()
  for i in $(seq "$ROUNDS"); do
    floor_up; f+=("$(rps "http://127.0.0.1:$FLOOR_PORT/bench/x" "$conns")"); down "$FLOOR_PID"
    tidegate_up; t+=("$(rps "http://$INGRESS/bench/x" "$conns")"); down "$TG_PID"
    n+=("$(rps "http://127.0.0.1:$NGINX_PORT/bench/x" "$conns")")
    echo "c=$conns round $i: floor ${f[-1]}, tidegate ${t[-1]}, nginx ${n[-1]} req/s"
  done
  python3 - "$conns" "${f[@]}" -- "${t[@]}" -- "${n[@]}" <<'PY'
import sys, statistics
conns, *rest = sys.argv[1:]
i = rest.index("--"); j = rest.index("--", i + 1)
f, t, n = ([float(x) for x in part] for part in (rest[:i], rest[i+1:j], rest[j+1:]))
ratios = [a / b for a, b in zip(t, f)]
print(f"c={conns}: floor {statistics.mean(f):.0f}, tidegate {statistics.mean(t):.0f}, nginx {statistics.mean(n):.0f} req/s; "
      f"tidegate/floor {statistics.mean(t)/statistics.mean(f):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f}); "
      f"floor/nginx {statistics.mean(f)/statistics.mean(n):.3f}")
PY
done
