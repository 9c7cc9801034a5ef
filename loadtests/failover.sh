#!/usr/bin/env bash
# Failover time in cluster mode: three tidegate instances on a three-node
# local JetStream cluster, a backlog draining at 200/s to nginx; KILLS times
# (default 10), kill -9 the instance holding the destination's dispatch
# lease and time from the kill to the first delivery by another instance
# (its delivered counter moving), then start the killed one again. Prints
# each failover, the median and the max.
#
#   loadtests/failover.sh [KILLS]
#
# Needs wrk, nginx (installed if missing) and nats-server
# (scripts/install-test-deps.sh). 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-10}
. loadtests/lib.sh
need wrk wrk
need nginx nginx-light
[ -n "${TIDEGATE_BIN:-}" ] || cargo build --release --quiet
start_nats_cluster 3
start_nginx_200
{ tidegate_config_head; printf 'backend = "jetstream"\n[storage.jetstream]\nurls = %s\nreplicas = 3\n[log]\nlevel = "info"\n' "$NATS_URLS"
  printf '[[destination]]\nname = "crm"\nurl = "http://127.0.0.1:%s/crm"\nowner = "bench@example.com"\n[destination.rate_limit]\nrate = "200/s"\n[destination.queue]\nmax_messages = 10000000\n' "$P_OK"
} > "$work/tidegate.toml"
WORK=$work KILLS=$KILLS BIN=${TIDEGATE_BIN:-./target/release/tidegate} python3 - <<'PY'
import json, os, re, signal, statistics, subprocess, time, urllib.request
work, kills, binary = os.environ["WORK"], int(os.environ["KILLS"]), os.environ["BIN"]
procs = [None, None, None]
def start(i):
    log = open(f"{work}/tg{i}.log", "w")
    p = subprocess.Popen([binary, "serve", "--config", f"{work}/tidegate.toml"], stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    admin = re.search(r"admin=(\S+)", line).group(1)
    ingress = re.search(r"ingress=(\S+)", line).group(1)
    procs[i] = (p, admin, ingress, f"{work}/tg{i}.log")
def get(admin, path):
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as r:
        return json.load(r)
def delivered(i):
    try:
        return get(procs[i][1], "/v1/destinations/crm")["counters"]["delivered"]
    except Exception:
        return None
def holder():
    for i, (p, _, _, log) in enumerate(procs):
        text = open(log).read()
        if text.count("took the dispatch lease") > text.count("lost the dispatch lease") and p.poll() is None:
            return i
    return None
try:
    for i in range(3):
        start(i)
    # A backlog for the kills: wrk through instance 0 for a few seconds.
    subprocess.run(["wrk", "-t2", "-c16", "-d4s", "-s", "loadtests/post-1k.lua", f"http://{procs[0][2]}/crm/x"], check=True, capture_output=True)
    times = []
    for k in range(kills):
        deadline = time.time() + 15
        while holder() is None and time.time() < deadline:
            time.sleep(0.05)
        h = holder()
        assert h is not None, "no holder"
        survivors = [i for i in range(3) if i != h]
        base = {i: delivered(i) for i in survivors}
        killed = time.monotonic()
        procs[h][0].send_signal(signal.SIGKILL)
        procs[h][0].wait()
        while True:
            moved = [i for i in survivors if (d := delivered(i)) is not None and d > base[i]]
            if moved:
                break
            time.sleep(0.01)
            assert time.monotonic() - killed < 30, "no failover in 30 s"
        took = time.monotonic() - killed
        times.append(took)
        print(f"kill {k + 1}: instance {h} killed, instance {moved[0]} delivering after {took:.2f} s", flush=True)
        start(h)
    depth = get(procs[survivors[0]][1], "/v1/destinations/crm")["queue"]["depth"]
    print(f"failover over {kills} kills: median {statistics.median(times):.2f} s, max {max(times):.2f} s, min {min(times):.2f} s (backlog left: {depth})")
finally:
    for p in procs:
        if p and p[0].poll() is None:
            p[0].kill()
PY
