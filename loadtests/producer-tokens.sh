#!/usr/bin/env bash
# Cost of producer identities on the ingest path: durable ingest req/s with
# 8 [[ingress.producer]] entries (requests carry the last one's token, so
# every token is compared) against no tokens at all, alternating A B A B ...
# in the same run so drift hits both alike.
#
#   loadtests/producer-tokens.sh [ROUNDS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
DURATION=${2:-10s}
a=(); b=()
for i in $(seq "$ROUNDS"); do
  a+=("$(PRODUCERS=8 SKIP_NGINX=1 loadtests/ingest.sh "$DURATION" 32 | awk '/^tidegate durable ingest/ {print $4}')")
  b+=("$(SKIP_NGINX=1 loadtests/ingest.sh "$DURATION" 32 | awk '/^tidegate durable ingest/ {print $4}')")
  echo "round $i: with producer tokens ${a[-1]} req/s, without ${b[-1]} req/s"
done
python3 - "${a[@]}" -- "${b[@]}" <<'PY'
import sys, statistics
args = sys.argv[1:]; cut = args.index("--")
a = [float(x) for x in args[:cut]]; b = [float(x) for x in args[cut+1:]]
print(f"with tokens mean {statistics.mean(a):.0f} req/s; without mean {statistics.mean(b):.0f} req/s; ratio {statistics.mean(a)/statistics.mean(b):.3f}")
PY
