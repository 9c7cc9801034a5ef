#!/usr/bin/env bash
# The review station with a large backlog: fills one destination (a
# handoff with schema and mapping, every message held) with N pending
# reviews, then measures, on the release binary:
#   - GET /v1/reviews?destination=&limit=100 (each item with its preview,
#     rendered in the sandbox) at the head and deep into the list (after=),
#   - decisions (approve, and edit with a correction checked against the
#     schema), one at a time, each durable before its 200,
#   - the process's RSS before filling, full, and after the measurements.
# Prints p50/p99/max per call kind.
#
#   loadtests/review-scale.sh [N] [SAMPLES]
#
# Needs wrk (a Debian package; installed if missing). 127.0.0.1 only; stops
# by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
SAMPLES=${2:-500}

. loadtests/lib.sh
need wrk wrk
cargo build --release --quiet

{ tidegate_config_head; cat <<CONF
[log]
level = "warn"
[[destination]]
name = "bench"
url = "http://127.0.0.1:9/"
owner = "bench@example.com"
[destination.handoff]
schema = "$PWD/loadtests/handoff/schema.json"
transform_file = "$PWD/loadtests/handoff/mapping.jq"
category = ".document_type"
[destination.review]
hold_when = "true"
[destination.queue]
max_messages = 10000000
max_bytes = "20GiB"
CONF
} > "$work/tidegate.toml"
start_tidegate "$work/tidegate.toml"
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$TG_PID/status"; }
echo "RSS at start: $(rss)"
depth() { curl -s "http://$ADMIN/v1/destinations/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["depth"])'; }
while [ "$(depth)" -lt "$N" ]; do
  BENCH_BODY="$PWD/loadtests/handoff/extraction-1k.json" \
    wrk -t2 -c32 -d5s -s loadtests/post-1k.lua "http://$INGRESS/bench/x" >/dev/null 2>&1
done
echo "held: $(depth) messages; RSS full: $(rss)"
python3 - "$ADMIN" "$SAMPLES" <<'PY'
import http.client, json, statistics, sys, time
admin, samples = sys.argv[1], int(sys.argv[2])
host, port = admin.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=30)
def call(method, path, body=None):
    t = time.perf_counter()
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json"})
    r = c.getresponse(); data = r.read()
    return (time.perf_counter() - t) * 1000, r.status, data
def report(name, ms):
    ms.sort()
    print(f"{name:<34} n={len(ms):<5} p50 {ms[len(ms)//2]:7.2f} ms  p99 {ms[int(len(ms)*0.99)-1]:7.2f} ms  max {ms[-1]:7.2f} ms")
head, deep, ids = [], [], []
_, _, first = call("GET", "/v1/reviews?destination=bench&limit=1000")
ids = [i["id"] for i in json.loads(first)["items"]]
for i in range(samples // 5):
    call("GET", "/v1/reviews?destination=bench&limit=100")  # warm
for i in range(samples):
    ms, st, _ = call("GET", "/v1/reviews?destination=bench&limit=100"); assert st == 200; head.append(ms)
# Deep pages: start after ids spread through the backlog.
_, _, page = call("GET", "/v1/reviews?destination=bench&limit=1000&after=" + ids[-1])
afters = [i["id"] for i in json.loads(page)["items"]]
for i in range(samples):
    ms, st, _ = call("GET", f"/v1/reviews?destination=bench&limit=100&after={afters[i % len(afters)]}"); assert st == 200; deep.append(ms)
report("GET /v1/reviews limit=100 (head)", head)
report("GET /v1/reviews limit=100 (deep)", deep)
approve, edit = [], []
body = json.load(open("loadtests/handoff/extraction-1k.json"))
for n, id in enumerate(ids[: 2 * min(samples, len(ids) // 2)]):
    if n % 2:
        corrected = dict(body, confidence=0.99)
        ms, st, data = call("POST", f"/v1/reviews/{id}/edit", {"reviewer": "bench", "body": corrected}); edit.append(ms)
    else:
        ms, st, data = call("POST", f"/v1/reviews/{id}/approve", {"reviewer": "bench"}); approve.append(ms)
    assert st == 200, data
report("POST approve", approve)
report("POST edit (schema + patch)", edit)
PY
echo "RSS after: $(rss)"
