#!/usr/bin/env bash
# Cost of observability on the ingest path: durable ingest req/s with JSON
# logs at info (metrics always on) against text logs at warn, alternating
# A B A B ... in the same run so drift hits both alike.
#
#   loadtests/logging-overhead.sh [ROUNDS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${2:-10s}
a=(); b=()
for i in $(seq "$ROUNDS"); do
  a+=("$(TIDEGATE_LOG_FORMAT=json TIDEGATE_LOG_LEVEL=info SKIP_NGINX=1 loadtests/ingest.sh "$DURATION" 32 | awk '/^tidegate durable ingest/ {print $4}')")
  b+=("$(TIDEGATE_LOG_FORMAT=text TIDEGATE_LOG_LEVEL=warn SKIP_NGINX=1 loadtests/ingest.sh "$DURATION" 32 | awk '/^tidegate durable ingest/ {print $4}')")
  echo "round $i: json/info ${a[-1]} req/s, text/warn ${b[-1]} req/s"
done
python3 - "${a[@]}" -- "${b[@]}" <<'PY'
import sys, statistics
args = sys.argv[1:]; cut = args.index("--")
a = [float(x) for x in args[:cut]]; b = [float(x) for x in args[cut+1:]]
print(f"json/info mean {statistics.mean(a):.0f} req/s; text/warn mean {statistics.mean(b):.0f} req/s; ratio {statistics.mean(a)/statistics.mean(b):.3f}")
PY
