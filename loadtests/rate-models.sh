#!/usr/bin/env bash
# Adaptive rate against downstream rate limiters (loadtests/limited-downstream.py):
# for each model, N messages queued on a paused destination configured far
# above the allowance (rate 500/s unless the model says, burst 50, 8 in
# flight, adaptive, buffer),
# then resumed; when all are delivered, the downstream's figures give the
# goodput as a share of what the model allowed over the same span, and the
# share of attempts answered 429, and the descent (SPEC §14): from the
# first refusal until the effective rate is first within 90-100% of the
# allowance, with the share of the time it was in that band from 3 s after
# the first refusal on (how well it stays there).
#
#   loadtests/rate-models.sh [N] [MODEL_GLOB]   (e.g. "fixed window*")
#
# 127.0.0.1 only; every run stops by itself (a model that has not drained
# in 5 minutes is reported as such).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-600}
FILTER=${2:-}
cargo build --release --quiet
. loadtests/lib.sh

# label | downstream arguments | messages (0 = N) | configured rate (10x the
# allowance for the slow ones, as SPEC §14's convergence is stated)
models=(
  "token bucket 50/s, burst 5|token_bucket --rate 50 --burst 5|0"
  "token bucket 50/s, burst 5, Retry-After|token_bucket --rate 50 --burst 5 --retry-after|0"
  "token bucket 50/s, burst 50|token_bucket --rate 50 --burst 50|0"
  "token bucket 50/s, burst 50, Retry-After|token_bucket --rate 50 --burst 50 --retry-after|0"
  "fixed window 50/s|fixed_window --limit 50 --window 1|0"
  "fixed window 50/s, Retry-After|fixed_window --limit 50 --window 1 --retry-after|0"
  "fixed window 50/s, X-RateLimit|fixed_window --limit 50 --window 1 --headers x|0"
  "fixed window 50/s, IETF RateLimit|fixed_window --limit 50 --window 1 --headers ietf|0"
  "fixed window 1500/min, X-RateLimit|fixed_window --limit 1500 --window 60 --headers x|3000"
  "fixed window 1500/min, Retry-After|fixed_window --limit 1500 --window 60 --retry-after|3000"
  "fixed window 1500/min, IETF RateLimit|fixed_window --limit 1500 --window 60 --headers ietf|3000"
  "sliding window 50/s|sliding_window --limit 50 --window 1|0"
  "sliding window 50/s, Retry-After|sliding_window --limit 50 --window 1 --retry-after|0"
  "sliding window 50/s, IETF RateLimit|sliding_window --limit 50 --window 1 --headers ietf|0"
  "fixed window 20 per 5 s, bare 429|fixed_window --limit 20 --window 5|600|40/s"
  "concurrency 4 x 80 ms|concurrency --limit 4 --service-ms 80|0"
  "concurrency 4 x 80 ms, Retry-After|concurrency --limit 4 --service-ms 80 --retry-after|0"
)

enqueue() { # COUNT: messages posted over one keep-alive connection
  python3 - "$INGRESS" "$1" <<'PY'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
for i in range(int(sys.argv[2])):
    c.request("POST", "/limited/x", body=b'{"n": %d}' % i, headers={"content-type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 202, r.status
PY
}

printf '%-44s %8s %10s %10s %9s %8s  %s\n' "model" "goodput" "allowance" "of allowed" "429s" "of tries" "descent"
for m in "${models[@]}"; do
  IFS='|' read -r label args count rate <<<"$m"
  rate=${rate:-500/s}
  # shellcheck disable=SC2053 # FILTER is a glob on purpose
  [ -z "$FILTER" ] || [[ "$label" == $FILTER ]] || continue
  [ "$count" != 0 ] || count=$N
  port=$(free_port)
  # shellcheck disable=SC2086 # the arguments are a list of words on purpose
  python3 loadtests/limited-downstream.py "$port" $args & pids+=("$!")
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null && break; sleep 0.02; done
  rm -rf "$work/data"
  { tidegate_config_head; cat <<CONF
[[destination]]
name = "limited"
url = "http://127.0.0.1:$port/in"
owner = "bench@example.com"
on_failure = "buffer"
[destination.rate_limit]
rate = "$rate"
burst = 50
max_in_flight = 8
adaptive = true
[destination.retry]
max_attempts = 1000
initial_backoff = "100ms"
max_backoff = "2s"
CONF
  } > "$work/tidegate.toml"
  start_tidegate "$work/tidegate.toml"
  curl -sf -X POST "http://$ADMIN/v1/destinations/limited/pause" >/dev/null
  enqueue "$count"
  curl -sf -X POST "http://$ADMIN/v1/destinations/limited/resume" >/dev/null
  # Every 100 ms until drained (5 minutes at most): the downstream's count
  # and tidegate's effective rate, for the goodput, the refusals and the
  # descent: from the first refusal until the effective rate is within
  # 90-100% of the allowance (SPEC §14), and how well it stays there.
  python3 - "$label" "127.0.0.1:$port" "$ADMIN" "$count" <<'PY'
import json, os, sys, time, urllib.request
label, down, admin, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
get = lambda url: json.load(urllib.request.urlopen(url, timeout=5))
trace, done, end = [], False, time.time() + 300
while time.time() < end:
    s = get(f"http://{down}/stats")
    e = get(f"http://{admin}/v1/destinations/limited")["rate_limit"]["effective_per_second"]
    trace.append((time.time(), e, s["ok"] + s["refused"]))
    if s["ok"] >= count:
        done = True
        break
    time.sleep(0.1)
a, t0 = s["allowed_per_second"], s["first_refused"]
inside = lambda e: e is not None and 0.9 * a <= e <= a
descent, share = "never", ""
if t0 is None:
    descent = "no 429"
else:
    after = [(t, e) for t, e, _ in trace if t >= t0]
    entered = next((t for t, e in after if inside(e)), None)
    if entered is not None:
        descent = f"{entered - t0:.1f} s"
    late = [e for t, e in after if t >= t0 + 3]
    if late:
        share = f" ({sum(map(inside, late)) / len(late):.0%} in band after 3 s)"
if os.environ.get("TRACE") and t0 is not None:
    # TRACE=1: the effective rate over time, every half second.
    # TRACE=1: every second, the effective rate and the attempts the
    # downstream saw per second.
    points = trace[::10]
    print("  " + " ".join(f"{t - t0:.0f}s:{e:.0f}/{(n - m) / (t - u):.0f}"
                          for (u, _, m), (t, e, n) in zip(points, points[1:])), file=sys.stderr)
span = max(s["span_s"], 1e-9)
tries = s["ok"] + s["refused"]
print(f'{label:<44} {s["ok"]/span:7.1f}/s {s["allowance"]:10.0f} {s["ok"]/max(s["allowance"],1):10.1%} '
      f'{s["refused"]:9d} {s["refused"]/max(tries,1):8.1%}  {descent}{share}' + ("" if done else "  (not drained in 5 min)"))
PY
  kill "$TG_PID" "${pids[-2]}" 2>/dev/null || true; wait "$TG_PID" 2>/dev/null || true
done
