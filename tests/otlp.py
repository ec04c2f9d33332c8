"""A real OTLP/HTTP trace receiver on loopback: decodes ``ExportTraceServiceRequest`` protobufs.

``hold_s`` makes it a slow collector (each request is answered only after that long), to show
that a slow or dead collector never slows a run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0
    status_code: int = 0


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Collector:
    def __init__(self, *, hold_s: float = 0.0) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._released = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with collector._lock:
                    collector.requests += 1
                if collector.hold_s:
                    collector._released.wait(collector.hold_s)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received = []
                for rs in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            received.append(
                                ReceivedSpan(
                                    trace_id=s.trace_id.hex(),
                                    span_id=s.span_id.hex(),
                                    parent_id=s.parent_span_id.hex(),
                                    name=s.name,
                                    kind=s.kind,
                                    service=str(resource.get("service.name", "")),
                                    attributes={a.key: _value(a.value) for a in s.attributes},
                                    start_ns=s.start_time_unix_nano,
                                    end_ns=s.end_time_unix_nano,
                                    status_code=s.status.code,
                                )
                            )
                with collector._lock:
                    collector.spans.extend(received)
                out = ExportTraceServiceResponse().SerializeToString()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter gave up waiting (a held request): nothing to answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Wait (on the spans arriving, polled) until ``predicate(spans)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector did not get the expected spans in {timeout}s; it has {len(spans)}")
            time.sleep(0.1)

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
