#!/usr/bin/env bash
# Two builds of tidegate through the same load-test script, alternating
# A B A B ... in one run, so that drift on a noisy machine hits both alike.
# Each run of the script measures its own baseline (the durable floor, the
# same destination without a handoff...), so what is compared is that
# script's ratio, build against build. Prints the lines with the figures.
#
#   loadtests/ab.sh ROUNDS BIN_A BIN_B SCRIPT [ARGS...]
#   e.g. loadtests/ab.sh 3 /tmp/before/tidegate target/release/tidegate loadtests/floor.sh 1 10s
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1 A=$2 B=$3; shift 3
for i in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    TIDEGATE_BIN=$bin "$@" 2>&1 | grep -E 'tidegate/floor|ratio|mean' | sed "s|^|round $i $side: |"
  done
done
