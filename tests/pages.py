"""Tiny HTTP servers for the egress tests: each answers every GET with JSON naming its port."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"port": self.server.server_address[1], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def pages(host: str, count: int = 2) -> Iterator[list[int]]:
    """``count`` servers on ``host``, served from threads; yields their ports."""
    made = [ThreadingHTTPServer((host, 0), _Hello) for _ in range(count)]
    for server in made:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [int(s.server_address[1]) for s in made]
    finally:
        for server in made:
            server.shutdown()
