"""POSTs a body over ingress.max_body with Python's http.client (what urllib
and many producers use), N times, and counts what came back: the 413 with
its problem body, a broken pipe or reset (the client never saw an answer),
or anything else.

    python3 post_big.py PORT SIZE N
"""
import http.client
import json
import sys

port, size, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = b'{"x": "' + b"a" * max(0, size - 10) + b'"}'
answered, broken, other = 0, 0, []
for _ in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", "/crm/x", body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status == 413 and json.loads(data).get("code") == "payload_too_large":
            answered += 1
        else:
            other.append(r.status)
    except (BrokenPipeError, ConnectionResetError):
        broken += 1
    finally:
        c.close()
print(json.dumps({"answered": answered, "broken": broken, "other": other}))
