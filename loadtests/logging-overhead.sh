#!/usr/bin/env bash
# Cost of observability on the ingest path: durable ingest req/s with JSON
# logs at info (metrics always on) against text logs at warn, alternating.
#
#   loadtests/logging-overhead.sh [ROUNDS] [DURATION]
exec "$(dirname "$0")/alternate.sh" "${1:-3}" "${2:-10s}" \
  "json/info" "TIDEGATE_LOG_FORMAT=json TIDEGATE_LOG_LEVEL=info" \
  "text/warn" "TIDEGATE_LOG_FORMAT=text TIDEGATE_LOG_LEVEL=warn"
