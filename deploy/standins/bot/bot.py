"""Stand-in for the bot's web API in the container tests, and a webhook
receiver for them: GET /health and /users answer as the bot's would; a
POST to any path is answered 200 and counted by its webhook-id header;
GET /received reports the counts."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
posts = 0
ids = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, {"status": "ok", "service": "bot"})
        elif path == "/users":
            self._send(200, {"service": "bot", "items": [{"id": 1, "username": "alice"}], "total": 1})
        elif path == "/received":
            with lock:
                repeated = sum(1 for n in ids.values() if n > 1)
                self._send(200, {"posts": posts, "distinct": len(ids), "repeated": repeated})
        else:
            self._send(404, {"service": "bot", "detail": "Not Found", "path": path})

    def do_POST(self):
        global posts
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            posts += 1
            key = self.headers.get("webhook-id") or "post-%d" % posts
            ids[key] = ids.get(key, 0) + 1
        self._send(200, {"ok": True})


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
