#!/usr/bin/env python3
"""A downstream that rate-limits the way public APIs do, for measuring how
close tidegate's adaptive rate gets to what it allows. Answers 200 within
its allowance and 429 beyond it; `GET /stats` reports what it saw.

    loadtests/limited-downstream.py PORT MODEL [options]

Models (the allowance is what the model could have accepted from its first
request to its last success):
  token_bucket    --rate R --burst B          a bucket of B refilled at R/s
  fixed_window    --limit N --window S        N per window of S seconds
  sliding_window  --limit N --window S        N in any S seconds
  concurrency     --limit N --service-ms M    429 beyond N in flight; each takes M ms

Batches (SPEC §16): --batch B takes a JSON array of at most B items (or
`{"inputs": [...]}`) per request, 413 beyond; the rate limit counts
requests, not items. A 200 carries `{"results": [{"status": 201} |
{"status": 422, "error": ...}]}`, one per item, in order; each item fails
at random with --item-failure P (a fraction). /stats adds items_ok and
items_failed.

Signals: --retry-after (an integer Retry-After on each 429, rounded up, as
most APIs send it), --headers none|x|ietf (X-RateLimit-Remaining/Reset, or
the IETF RateLimit/RateLimit-Policy fields, on every answer; for the
window models). Listens on
127.0.0.1 only.
"""
import argparse
import http.server
import json
import math
import random
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("model", choices=["token_bucket", "fixed_window", "sliding_window", "concurrency"])
p.add_argument("--rate", type=float, default=50)
p.add_argument("--burst", type=int, default=5)
p.add_argument("--limit", type=int, default=50)
p.add_argument("--window", type=float, default=1.0)
p.add_argument("--service-ms", type=float, default=80)
p.add_argument("--retry-after", action="store_true")
p.add_argument("--headers", choices=["none", "x", "ietf"], default="none")
p.add_argument("--batch", type=int, default=0)
p.add_argument("--item-failure", type=float, default=0.0)
a = p.parse_args()

lock = threading.Lock()
state = {"first": None, "last_ok": None, "first_refused": None, "ok": 0, "refused": 0, "in_flight": 0,
         "tokens": float(a.burst), "refilled": None, "window_start": None, "count": 0, "log": [],
         "items_ok": 0, "items_failed": 0}
rng = random.Random(7)


def decide(now):
    """(accepted, remaining, seconds until more is allowed) under the lock."""
    s = state
    if a.model == "token_bucket":
        if s["refilled"] is not None:
            s["tokens"] = min(a.burst, s["tokens"] + (now - s["refilled"]) * a.rate)
        s["refilled"] = now
        if s["tokens"] >= 1:
            s["tokens"] -= 1
            return True, int(s["tokens"]), (1 - s["tokens"] % 1) / a.rate
        return False, 0, (1 - s["tokens"]) / a.rate
    if a.model == "fixed_window":
        # Windows are aligned to the clock, as APIs that give the reset as
        # an epoch second align them.
        start = math.floor(now / a.window) * a.window
        if s["window_start"] != start:
            s["window_start"], s["count"] = start, 0
        reset = start + a.window - now
        if s["count"] < a.limit:
            s["count"] += 1
            return True, a.limit - s["count"], reset
        return False, 0, reset
    if a.model == "sliding_window":
        log = s["log"]
        while log and log[0] <= now - a.window:
            log.pop(0)
        if len(log) < a.limit:
            log.append(now)
            return True, a.limit - len(log), (log[0] + a.window - now)
        return False, 0, log[0] + a.window - now
    # concurrency
    if s["in_flight"] < a.limit:
        s["in_flight"] += 1
        return True, a.limit - s["in_flight"], a.service_ms / 1000
    return False, 0, a.service_ms / 1000


def allowance():
    s = state
    if s["first"] is None or s["last_ok"] is None:
        return 0
    t = s["last_ok"] - s["first"]
    if a.model == "token_bucket":
        return a.burst + t * a.rate
    if a.model == "fixed_window":
        windows = math.floor(s["last_ok"] / a.window) - math.floor(s["first"] / a.window) + 1
        return a.limit * windows
    if a.model == "sliding_window":
        return a.limit * (t / a.window + 1)
    return a.limit * (t * 1000 / a.service_ms + 1)


def allowed_per_second():
    """The model's sustained allowance, per second."""
    if a.model == "token_bucket":
        return a.rate
    if a.model in ("fixed_window", "sliding_window"):
        return a.limit / a.window
    return a.limit * 1000 / a.service_ms


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with lock:
            s = state
            span = (s["last_ok"] - s["first"]) if s["first"] and s["last_ok"] else 0
            body = json.dumps({"ok": s["ok"], "refused": s["refused"], "span_s": span,
                               "allowance": allowance(), "allowed_per_second": allowed_per_second(),
                               "first_refused": s["first_refused"], "items_ok": s["items_ok"],
                               "items_failed": s["items_failed"]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        items = None
        if a.batch:
            try:
                doc = json.loads(raw)
                items = doc["inputs"] if isinstance(doc, dict) else doc
                assert isinstance(items, list)
            except Exception:
                return self.answer(400, b'{"error": "a batch is a JSON array of items"}')
            if len(items) > a.batch:
                return self.answer(413, b'{"error": "too many items"}')
        now = time.time()
        with lock:
            if state["first"] is None:
                state["first"] = now
            ok, remaining, wait = decide(now)
        if ok and a.model == "concurrency":
            time.sleep(a.service_ms / 1000)
            with lock:
                state["in_flight"] -= 1
        with lock:
            if ok:
                state["ok"] += 1
                state["last_ok"] = time.time()
            else:
                state["refused"] += 1
                if state["first_refused"] is None:
                    state["first_refused"] = now
        self.send_response(200 if ok else 429)
        if not ok and a.retry_after:
            self.send_header("retry-after", str(max(1, math.ceil(wait))))
        if a.headers == "x":
            # As GitHub and others send it: the reset as an epoch second.
            self.send_header("x-ratelimit-limit", str(a.limit))
            self.send_header("x-ratelimit-remaining", str(remaining))
            self.send_header("x-ratelimit-reset", str(math.ceil(now + wait)))
        elif a.headers == "ietf":
            # Delta seconds, rounded up: never earlier than the reset.
            self.send_header("ratelimit-policy", f'"default";q={a.limit};w={int(a.window)}')
            self.send_header("ratelimit", f'"default";r={remaining};t={max(0, math.ceil(wait))}')
        body = b""
        if ok and items is not None:
            results = []
            with lock:
                for _ in items:
                    if rng.random() < a.item_failure:
                        state["items_failed"] += 1
                        results.append({"status": 422, "error": "invalid record"})
                    else:
                        state["items_ok"] += 1
                        results.append({"status": 201})
            body = json.dumps({"results": results}).encode()
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


Server(("127.0.0.1", a.port), Handler).serve_forever()
