#!/usr/bin/env python3
"""A toy downstream for trying tidegate by hand: answers 201 to every
request on 127.0.0.1:PORT (default 9200) and prints what it got.

    python3 scripts/echo-downstream.py [PORT] [STATUS]
"""
import http.server
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9200
STATUS = int(sys.argv[2]) if len(sys.argv) > 2 else 201


class Handler(http.server.BaseHTTPRequestHandler):
    def _any(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(f"{self.command} {self.path} attempt={self.headers.get('x-tidegate-attempt')} "
              f"id={self.headers.get('x-tidegate-message-id')} body={body[:200]!r}", flush=True)
        self.send_response(STATUS)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
