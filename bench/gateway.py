"""The gateway under 50 concurrent clients: POST /v1/runs latency and GET /v1/runs/{id} throughput.

    .venv/bin/python bench/gateway.py [--clients 50] [--posts 2000] [--seconds 10] [--rate 500] [--with-stack] [--rate-limited]

Starts a nats-server and `flowyard serve gateway` as its own process (plus the planner,
scheduler and executor with --with-stack, so the runs really run), applies a one-node workflow,
then from this process (aiohttp, one connection per client, keep-alive):

1. POST /v1/runs: each of the clients sends requests one after another (closed loop) until
   --posts have been sent; every request is timed from send to its 202.
2. With --rate R: the same clients send R POSTs a second between them (open loop: each request
   is timed from when it was due, so a slow answer cannot hide the requests queued behind it).
3. GET /v1/runs/{id}: each client reads one of the runs over and over for --seconds; prints the
   requests per second and the latency.

Prints figures; asserts nothing. The client shares the machine's two cores with the gateway and
the nats-server; its own cost is included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import pct, quiet_env, start, stop_all, wait_for  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402

TOKEN = "bench-token-0123456789abcdefghij"
WORKFLOW = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: bench-echo}
spec:
  command: [cat]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: bench-one}
spec:
  inputs:
    n: {type: integer, default: 0}
  nodes:
    - {id: echo, agent: bench-echo, with: {n: "{{ inputs.n }}"}}
"""


async def post_runs(base: str, clients: int, total: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    run_ids: list[str] = []
    remaining = total
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(
                f"{base}/v1/runs", json={"workflow": "bench-one", "inputs": {"n": n}}, headers=headers
            ) as r:
                body = await r.json()
            latencies.append((time.perf_counter() - started) * 1000)
            assert r.status == 202, body
            run_ids.append(body["run_id"])

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, i) for i in range(clients)))
    return latencies, run_ids


async def post_at_rate(base: str, clients: int, rate: float, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    began = time.perf_counter()
    interval = clients / rate  # each client's gap between requests

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        due = began + n * interval / clients
        while due < began + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with session.post(
                f"{base}/v1/runs", json={"workflow": "bench-one", "inputs": {"n": n}}, headers=headers
            ) as r:
                await r.read()
            latencies.append((time.perf_counter() - due) * 1000)
            assert r.status == 202
            due += interval

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, i) for i in range(clients)))
    return latencies, time.perf_counter() - began


async def get_runs(base: str, clients: int, seconds: float, run_ids: list[str]) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    stop = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        run_id = run_ids[i % len(run_ids)]
        while time.monotonic() < stop:
            started = time.perf_counter()
            async with session.get(f"{base}/v1/runs/{run_id}", headers=headers) as r:
                await r.read()
            latencies.append((time.perf_counter() - started) * 1000)
            assert r.status == 200

    connector = aiohttp.TCPConnector(limit=clients)
    began = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, i) for i in range(clients)))
    return len(latencies), latencies, time.monotonic() - began


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, nargs="*", default=[], help="open-loop POST rates to try (per second)")
    parser.add_argument("--with-stack", action="store_true", help="also run planner, scheduler and executor")
    parser.add_argument(
        "--rate-limited",
        action="store_true",
        help="switch the rate limit on, too high to refuse anything: every request pays the shared bucket's update",
    )
    args = parser.parse_args()
    limit = "{per_minute: 60000000, burst: 1000000}" if args.rate_limited else "{per_minute: 0}"

    with tempfile.TemporaryDirectory(prefix="fy-bench-gw-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats").start()
        config = work / "flowyard.yaml"
        config.write_text(
            f"gateway:\n  port: 0\n  rate_limit: {limit}\n"
            "  users:\n    bench: {token_secret: BENCH_TOKEN, roles: [operator]}\n"
        )
        env = quiet_env(
            {
                "FLOWYARD_NATS_URL": server.url,
                "FLOWYARD_CONFIG": str(config),
                "FLOWYARD_SECRET_BENCH_TOKEN": TOKEN,
                "FLOWYARD_LOG_LEVEL": "info",
            }
        )
        procs = []
        try:
            gw_log = work / "gateway.log"
            procs.append(start("gateway", env, gw_log))
            port = wait_for(gw_log, r'"url": "http://127\.0\.0\.1:(\d+)", "users"', procs[-1]).group(1)
            base = f"http://127.0.0.1:{port}"
            if args.with_stack:
                for name in ("planner", "scheduler", "executor"):
                    log = work / f"{name}.log"
                    procs.append(start(name, env, log))
                    wait_for(log, "service started", procs[-1])
            async with aiohttp.ClientSession() as s:
                r = await s.post(
                    f"{base}/v1/workflows",
                    data=WORKFLOW.encode(),
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"},
                )
                assert r.status == 201, await r.text()
            await post_runs(base, args.clients, args.warmup)
            latencies, run_ids = await post_runs(base, args.clients, args.posts)
            stack = "gateway + planner, scheduler, executor" if args.with_stack else "gateway alone (runs not planned)"
            print(f"stack: nats-server + {stack}, one process each; {args.clients} concurrent clients (aiohttp)")
            print(
                f"POST /v1/runs -> 202: {len(latencies)} requests, median {statistics.median(latencies):.1f} ms, "
                f"p95 {pct(latencies, 0.95):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms"
            )
            for rate in args.rate:
                timed, took = await post_at_rate(base, args.clients, rate, args.seconds)
                print(
                    f"POST /v1/runs at {rate:.0f}/s offered ({len(timed) / took:.0f}/s done): "
                    f"median {statistics.median(timed):.1f} ms, p95 {pct(timed, 0.95):.1f} ms, "
                    f"p99 {pct(timed, 0.99):.1f} ms"
                )
            count, gets, took = await get_runs(base, args.clients, args.seconds, run_ids[: args.clients])
            print(
                f"GET /v1/runs/{{id}}: {count / took:,.0f} requests/s over {took:.1f} s, "
                f"median {statistics.median(gets):.1f} ms, p95 {pct(gets, 0.95):.1f} ms"
            )
        finally:
            stop_all(procs, server)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
