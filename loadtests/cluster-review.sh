#!/usr/bin/env bash
# What the review station costs in cluster mode, alternating in one run:
# relay (ingest and delivery to nginx `return 200` at once) with the queue
# on a three-node local JetStream cluster (replicas 3), without a review
# station and with `[destination.review] sample = 0.1` (one message in ten
# held: a review record written at ingest, then parked by the dispatcher
# in the held stream). One tidegate instance.
#
#   loadtests/cluster-review.sh [ROUNDS] [DURATION]
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
js() { jetstream_storage "V$1"; }
# Prints "ingest_req_per_s delivered".
relay() {
  NO_PERF=1 loadtests/relay-profile.sh "$DURATION" 32 | awk '
    /^Requests\/sec:/ {r=$2}
    /^delivered during the run/ {gsub(";","",$5); d=$5}
    END {print r, d}'
}
pi=(); ri=(); pd=(); rd=()
for i in $(seq "$ROUNDS"); do
  read -r a b <<<"$(STORAGE_TOML="$(js "p$i")" relay)"; pi+=("$a"); pd+=("$b")
  read -r a b <<<"$(RELAY_EXTRA=$'[destination.review]\nsample = 0.1' STORAGE_TOML="$(js "r$i")" relay)"; ri+=("$a"); rd+=("$b")
  echo "round $i: plain ${pi[-1]} req/s (${pd[-1]} delivered), review ${ri[-1]} req/s (${rd[-1]} delivered)"
done
python3 - "${pi[*]}" "${ri[*]}" "${pd[*]}" "${rd[*]}" <<'PY'
import sys, statistics as st
pi, ri, pd, rd = ([float(x) for x in a.split()] for a in sys.argv[1:])
print(f"ingest while relaying: plain {st.mean(pi):.0f} req/s, with review {st.mean(ri):.0f} req/s, ratio {st.mean(ri)/st.mean(pi):.3f}")
print(f"delivered: plain {st.mean(pd):.0f}, with review {st.mean(rd):.0f} (a tenth held), ratio {st.mean(rd)/st.mean(pd):.3f}")
PY
