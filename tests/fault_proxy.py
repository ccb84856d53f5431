"""A fault-injecting HTTP proxy on 127.0.0.1 for tests: forwards to a real upstream server, and for a configurable
share of requests answers with a fault instead: 429 with Retry-After, 500, 503, a connection reset, a timeout
(no answer for longer than the client waits), a truncated body, or invalid JSON."""
from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def send_json(handler: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict | None = None,
              send_len: int | None = None) -> None:
    """Answer with a JSON body; ``send_len`` sends only that many bytes of it (a truncated body)."""
    handler.send_response(code)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body[: send_len if send_len is not None else len(body)])
    handler.wfile.flush()


FAULTS = ["http_429", "http_500", "http_503", "reset", "timeout", "truncated", "invalid_json"]


class FaultProxy:
    def __init__(self, upstream: str, rate: float, seed: int = 0, hang_s: float = 4.0,
                 faults: list[str] | None = None, cycle: bool = False):
        self.upstream_root = upstream.rstrip("/").removesuffix("/v1")  # paths are forwarded as they come
        self.rate, self.hang_s = rate, hang_s
        self.faults = faults or FAULTS
        self.cycle = cycle  # True: exactly `rate` of the requests fail, the kinds in turn (every kind is seen)
        self.posts = 0
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter = Counter()
        self.forwarded = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers.get("content-length", 0))))

            def _reply(self, code: int, body: bytes, headers: dict | None = None, send_len: int | None = None):
                send_json(self, code, body, headers, send_len)

            def _forward(self, body: bytes | None):
                fault = proxy._draw() if self.command == "POST" else None
                if fault == "http_429":
                    return self._reply(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "1"})
                if fault in ("http_500", "http_503"):
                    return self._reply(int(fault[-3:]), b'{"error": {"message": "server error"}}')
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == "timeout":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return
                req = urllib.request.Request(proxy.upstream_root + self.path, data=body, method=self.command,
                                             headers={"content-type": "application/json",
                                                      "authorization": self.headers.get("authorization", "")})
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        code, data = resp.status, resp.read()
                except urllib.error.HTTPError as e:
                    code, data = e.code, e.read()
                with proxy.lock:
                    proxy.forwarded += 1
                if fault == "truncated":
                    self._reply(code, data, send_len=len(data) // 2)
                    self.close_connection = True
                    return
                if fault == "invalid_json":
                    return self._reply(200, b'{"id": "x", "choices": [ {"message": oops')
                self._reply(code, data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _draw(self) -> str | None:
        with self.lock:
            self.posts += 1
            if self.cycle:  # deterministic: a fault whenever the share so far would fall below the rate
                if sum(self.injected.values()) + 1 > self.rate * self.posts:
                    return None
            elif self.rng.random() >= self.rate:
                return None
            if self.cycle:
                fault = self.faults[sum(self.injected.values()) % len(self.faults)]
            else:
                fault = self.rng.choice(self.faults)
            self.injected[fault] += 1
            return fault

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def summary(proxy: FaultProxy) -> str:
    return json.dumps({"injected": dict(proxy.injected), "forwarded": proxy.forwarded, "posts": proxy.posts})
