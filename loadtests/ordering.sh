#!/usr/bin/env bash
# Ordering per key against unordered: how fast one destination drains the
# same backlog to the same downstream (nginx `return 200`, no rate limit,
# 32 in flight), alternating rounds of `ordering = "key"` (KEYS keys, from
# X-Ordering-Key) and `ordering = "unordered"`. Each round starts a fresh
# tidegate, fills the paused destination for FILL with wrk (1 KiB bodies,
# keys cycling), resumes it and times the drain. Prints each round, the
# means and key / unordered.
#
#   loadtests/ordering.sh [ROUNDS] [KEYS] [FILL]
#
# Needs wrk and nginx (Debian packages; installed if missing). 127.0.0.1
# only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
KEYS=${2:-100}
FILL=${3:-5s}

. loadtests/lib.sh
need wrk wrk
need nginx nginx-light
cargo build --release --quiet

start_nginx_200

config() { # ORDERING
  tidegate_config_head
  printf '[log]\nlevel = "warn"\n'
  cat <<CONF
[[destination]]
name = "bench"
url = "http://127.0.0.1:$P_OK/bench"
owner = "bench@example.com"
[destination.rate_limit]
rate = "unlimited"
max_in_flight = 32
[destination.queue]
max_messages = 10000000
max_bytes = "20GiB"
CONF
  if [ "$1" = key ]; then printf 'ordering = "key"\nkey_header = "X-Ordering-Key"\n'; fi
}
depth() { curl -s "http://$ADMIN/v1/destinations/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])'; }

drain_rate() { # ORDERING: prints messages/s
  rm -rf "$work/data"
  config "$1" > "$work/tidegate.toml"
  start_tidegate "$work/tidegate.toml"
  curl -sf -X POST "http://$ADMIN/v1/destinations/bench/pause" >/dev/null
  local out; out=$(BENCH_KEYS=$KEYS wrk -t2 -c32 -d"$FILL" -s loadtests/post-1k.lua "http://$INGRESS/bench/x" 2>&1)
  if echo "$out" | grep -q Non-2xx; then echo "non-2xx answers while filling" >&2; exit 1; fi
  local n; n=$(depth)
  local t0; t0=$(date +%s.%N)
  curl -sf -X POST "http://$ADMIN/v1/destinations/bench/resume" >/dev/null
  while [ "$(depth)" != 0 ]; do sleep 0.05; done
  local t1; t1=$(date +%s.%N)
  kill "$TG_PID"; wait "$TG_PID" 2>/dev/null || true
  python3 -c "print(round($n / ($t1 - $t0)))"
}

k=(); u=()
for i in $(seq "$ROUNDS"); do
  k+=("$(drain_rate key)")
  u+=("$(drain_rate unordered)")
  echo "round $i: key ($KEYS keys) ${k[-1]} msg/s, unordered ${u[-1]} msg/s"
done
python3 - "${k[@]}" -- "${u[@]}" <<'PY'
import sys, statistics
args = sys.argv[1:]; cut = args.index("--")
k = [float(x) for x in args[:cut]]; u = [float(x) for x in args[cut+1:]]
print(f"key mean {statistics.mean(k):.0f} msg/s; unordered mean {statistics.mean(u):.0f} msg/s; key / unordered {statistics.mean(k)/statistics.mean(u):.3f}")
PY
