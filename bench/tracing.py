"""What tracing costs: the diamond's orchestration overhead with span export off, on (to a live
OTLP/HTTP collector), and pointed at a collector that is down.

    .venv/bin/python bench/tracing.py [--runs 100] [--warmup 20] [--blocks 3]

Each mode gets its own stack (nats-server + one process per service, as bench/diamond.py
--separate) and runs the same diamond of `cat` agents; modes alternate in blocks (off, on,
down, off, on, down, ...) so that drift on the machine falls on all of them alike. The collector
is a local HTTP server that decodes every ExportTraceServiceRequest and counts the spans.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from bench.diamond import connected_runner  # noqa: E402
from bench.stack import BenchStack, pct  # noqa: E402


class Collector:
    def __init__(self) -> None:
        self.spans = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                collector.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


async def block(env: dict[str, str], runs: int, warmup: int, tmp: Path, first: int) -> list[float]:
    async with BenchStack(tmp, separate=True, env=env) as stack:
        bus, runner = await connected_runner(stack.url)
        try:
            for i in range(warmup):
                await runner.one(first + i)
            overhead = []
            for i in range(runs):
                total, agent = await runner.one(first + warmup + i)
                overhead.append((total - agent) * 1000)
            return overhead
        finally:
            await bus.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100, help="timed runs per block")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=3, help="blocks per mode, alternating")
    args = ap.parse_args()
    collector = Collector()
    modes = {
        "export off": {"FLOWYARD_TELEMETRY_EXPORTER": "none"},
        "export on (live collector)": {
            "FLOWYARD_TELEMETRY_EXPORTER": "otlp",
            "FLOWYARD_TELEMETRY_ENDPOINT": collector.url,
        },
        "export on (collector down)": {
            "FLOWYARD_TELEMETRY_EXPORTER": "otlp",
            "FLOWYARD_TELEMETRY_ENDPOINT": closed_port(),
        },
    }
    results: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="fy-bench-") as tmp:
        n = 0
        for b in range(args.blocks):
            for mode, env in modes.items():
                path = Path(tmp) / f"block{b}-mode{list(modes).index(mode)}"
                path.mkdir(parents=True)
                results[mode] += await block(env, args.runs, args.warmup, path, n)
                n += args.runs + args.warmup
                print(f"  block {b + 1}/{args.blocks} {mode}: done", flush=True)
    print(
        f"diamond orchestration overhead (5 nodes, `cat` agents, separate processes), "
        f"{args.blocks} blocks x {args.runs} runs per mode:"
    )
    base = statistics.median(results["export off"])
    for mode, values in results.items():
        med = statistics.median(values)
        print(f"  {mode:28} median {med:6.1f} ms   p95 {pct(values, 0.95):6.1f} ms   ({med - base:+.1f} ms median)")
    print(f"spans received by the live collector: {collector.spans}")


if __name__ == "__main__":
    asyncio.run(main())
