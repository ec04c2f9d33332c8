"""What egress by allowlist adds to a Docker attempt: the attempt's network and proxy.

    .venv/bin/python bench/egress.py [--runs 20]

Needs Docker, the base image and flowyard/egress:<version> (`flowyard agents build`). Runs, in
turn, the same agent through the Docker runtime — a Python one-liner that fetches one page from
a local HTTP server — with `network: egress` (the default bridge) and with
`network: {allow: [that server]}` (its own internal network, a tinyproxy container, the fetch
through it), and prints each attempt's duration (start to judged outcome) for both and the
difference of the medians. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import pct  # noqa: E402
from services.executor.runtimes.docker import DockerRuntime  # noqa: E402
from shared.contract.messages import AgentSnapshot, TaskDispatched  # noqa: E402
from shared.telemetry.metrics import VERSION  # noqa: E402
from tests.fakellm import docker_bridge_address  # noqa: E402

FETCH = (
    "import json, sys, urllib.request; w = json.load(sys.stdin); "
    "print(json.dumps({'n': len(urllib.request.urlopen(w['url'], timeout=10).read())}))"
)


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def task(i: int, allow: list[str] | None) -> TaskDispatched:
    agent = AgentSnapshot(
        name="fetcher",
        image="flowyard/base:bookworm",
        command=["python3", "-c", FETCH],
        network="none" if allow else "egress",
        egress_allow=allow or [],
    )
    return TaskDispatched(run_id=f"rbench-egress-{i}", workflow="w", node_id="n", attempt=1, agent=agent, input={})


async def main(runs: int) -> None:
    host = docker_bridge_address()
    server = ThreadingHTTPServer((host, 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    stdin = f'{{"url": "http://{host}:{port}/"}}'.encode()
    rt = DockerRuntime(max_output_bytes=65536, log_tail_bytes=4096, egress_image=f"flowyard/egress:{VERSION}")
    times: dict[str, list[float]] = {"egress": [], "allow": []}
    try:
        for i in range(runs + 2):  # the first two of each warm the daemon's caches
            for kind, allow in (("egress", None), ("allow", [f"{host}:{port}"])):
                t = task(i * 2 + (kind == "allow"), allow)
                started = time.perf_counter()
                out = await rt.run(t, stdin=stdin, env={}, timeout_s=60)
                took = time.perf_counter() - started
                if out.exit_code != 0:
                    raise SystemExit(f"{kind} attempt failed: {out.start_error or out.stderr_tail[-500:]!r}")
                if i >= 2:
                    times[kind].append(took * 1000)
                await rt.forget_run(t.run_id)
    finally:
        await rt.close()
        server.shutdown()
    for kind, values in times.items():
        print(f"{kind:>7}: p50 {pct(values, 0.5):7.1f} ms  p95 {pct(values, 0.95):7.1f} ms  ({len(values)} attempts)")
    added = statistics.median(times["allow"]) - statistics.median(times["egress"])
    print(f"the allowlist adds {added:.0f} ms per attempt (median against median)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
