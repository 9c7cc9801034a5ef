#!/usr/bin/env bash
# Durable ingest req/s of two setups, alternating A B B A A B ... in the
# same run so that drift on a noisy machine hits both alike, and so does
# going first: on this machine's disk the run right after another is
# faster (two identical setups measured A B A B gave 0.92, 2026-12-07), so
# each setup goes first in half the rounds. Prints each round, the means
# and the ratio A/B. A setup is environment assignments for
# loadtests/ingest.sh (e.g. "PRODUCERS=8").
#
#   loadtests/alternate.sh ROUNDS DURATION "LABEL_A" "ENV_A" "LABEL_B" "ENV_B"
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1 DURATION=$2 label_a=$3 env_a=$4 label_b=$5 env_b=$6
rate() {
  # shellcheck disable=SC2086 # the setup is a list of words on purpose
  env $1 SKIP_NGINX=1 loadtests/ingest.sh "$DURATION" 32 | awk '/^tidegate durable ingest/ {print $4}'
}
a=(); b=()
for i in $(seq "$ROUNDS"); do
  if [ $((i % 2)) = 1 ]; then
    a+=("$(rate "$env_a")"); b+=("$(rate "$env_b")")
  else
    b+=("$(rate "$env_b")"); a+=("$(rate "$env_a")")
  fi
  echo "round $i: $label_a ${a[-1]} req/s, $label_b ${b[-1]} req/s"
done
python3 - "$label_a" "$label_b" "${a[@]}" -- "${b[@]}" <<'PY'
import sys, statistics
la, lb, *args = sys.argv[1:]; cut = args.index("--")
a = [float(x) for x in args[:cut]]; b = [float(x) for x in args[cut+1:]]
print(f"{la} mean {statistics.mean(a):.0f} req/s; {lb} mean {statistics.mean(b):.0f} req/s; ratio {statistics.mean(a)/statistics.mean(b):.3f}")
PY
