#!/usr/bin/env bash
# Cluster mode against the SQLite journal, alternating in one run: durable
# ingest (destination paused: every request is a durable append) and relay
# (ingest and delivery to nginx `return 200` at once), each with the queue
# on SQLite, then on a three-node local JetStream cluster (replicas 3, fsync
# before every acknowledgement), one tidegate instance in both cases.
#
#   loadtests/cluster.sh [ROUNDS] [DURATION]
#
# Needs wrk, nginx (installed if missing) and nats-server
# (scripts/install-test-deps.sh). 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${2:-10s}
. loadtests/lib.sh
[ -n "${TIDEGATE_BIN:-}" ] || cargo build --release --quiet
export TIDEGATE_BIN=${TIDEGATE_BIN:-$PWD/target/release/tidegate}
start_nats_cluster 3
js() { jetstream_storage "B$1"; }
ingest() { SKIP_NGINX=1 loadtests/ingest.sh "$DURATION" 32 | awk '/^tidegate durable ingest/ {print $4}'; }
relay() { NO_PERF=1 loadtests/relay-profile.sh "$DURATION" 32 | awk '/^delivered during the run/ {gsub(";","",$5); print $5}'; }
si=(); ji=(); sr=(); jr=()
for i in $(seq "$ROUNDS"); do
  si+=("$(ingest)")
  ji+=("$(STORAGE_TOML="$(js "i$i")" ingest)")
  echo "round $i ingest: sqlite ${si[-1]} req/s, jetstream ${ji[-1]} req/s"
  sr+=("$(relay)")
  jr+=("$(STORAGE_TOML="$(js "r$i")" relay)")
  echo "round $i relay (delivered in $DURATION): sqlite ${sr[-1]}, jetstream ${jr[-1]}"
done
python3 - "${si[*]}" "${ji[*]}" "${sr[*]}" "${jr[*]}" <<'PY'
import sys, statistics as st
si, ji, sr, jr = ([float(x) for x in a.split()] for a in sys.argv[1:])
print(f"durable ingest: sqlite {st.mean(si):.0f} req/s, jetstream {st.mean(ji):.0f} req/s, jetstream/sqlite {st.mean(ji)/st.mean(si):.3f}")
print(f"relay delivered: sqlite {st.mean(sr):.0f}, jetstream {st.mean(jr):.0f}, jetstream/sqlite {st.mean(jr)/st.mean(sr):.3f}")
PY
