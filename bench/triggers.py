"""Triggers: event -> run started latency, Alertmanager POST -> 200 latency, and a flood of events.

    .venv/bin/python bench/triggers.py [--events 300] [--alerts 300] [--flood 5000]

A nats-server and the planner, scheduler, executor (process runtime) and gateway as separate
processes. A workflow with a NATS trigger (one `cat` node) and one with an Alertmanager trigger
are applied, then:

1. latency: one event at a time is published on the trigger's subject (core NATS); timed from
   the publish to the run's `run.started` and to its first node's `task.started`;
2. Alertmanager: notifications of one alert each are POSTed to the gateway one after another,
   timed from send to the 200;
3. flood: --flood events are published as fast as the client can, with the scheduler and
   executor stopped (so the figure is the trigger path: capture, match, de-duplicate, request,
   plan); timed from the first publish to the last run planned; every event must start exactly
   one run.

Prints figures; asserts nothing but that nothing was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import pct, quiet_env, start, stop_all, wait_for  # noqa: E402  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402

TOKEN = "bench-token-0123456789abcdefghij"
WORKFLOWS = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: bench-cat}
spec:
  command: [cat]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: bench-on-event}
spec:
  inputs: {n: {type: integer}}
  triggers:
    - nats: {subject: "bench.events.>"}
      inputs: {n: "{{ trigger.data.n }}"}
  nodes: [{id: a, agent: bench-cat, with: {n: "{{ inputs.n }}"}}]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: bench-on-alert}
spec:
  triggers:
    - alertmanager: {matchers: [alertname=BenchAlert]}
  nodes: [{id: a, agent: bench-cat, with: {i: "{{ trigger.labels.i }}"}}]
"""


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} ms, p95 {pct(values, 0.95):.1f} ms (n={len(values)})"


async def latency(url: str, count: int) -> tuple[list[float], list[float]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    started: list[float] = []
    dispatched: list[float] = []
    waiting: dict[str, asyncio.Future[float]] = {}
    marks: dict[int, tuple[float, float | None, float | None]] = {}
    run_of: dict[str, int] = {}

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        data = json.loads(msg.data)
        if data["type"] == "run.requested" and data["workflow"] == "bench-on-event":
            run_of[data["run_id"]] = data["inputs"]["n"]
        n = run_of.get(data["run_id"])
        if n is None:
            return
        sent, s, d = marks[n]
        if data["type"] == "run.started" and s is None:
            marks[n] = (sent, now, d)
        elif data["type"] == "task.started" and d is None:
            marks[n] = (sent, s, now)
            waiting[str(n)].set_result(now)

    sub = await js.subscribe(
        "fy.run.>", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.NEW, cb=on_event
    )
    try:
        for n in range(count):
            waiting[str(n)] = asyncio.get_running_loop().create_future()
            marks[n] = (time.perf_counter(), None, None)
            await nc.publish(f"bench.events.{n}", json.dumps({"n": n}).encode())
            await asyncio.wait_for(waiting[str(n)], 30)
            sent, s, d = marks[n]
            assert s is not None and d is not None
            started.append((s - sent) * 1000)
            dispatched.append((d - sent) * 1000)
    finally:
        await sub.unsubscribe()
        await nc.close()
    return started, dispatched


async def alerts(base: str, count: int) -> list[float]:
    out = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for i in range(count):
            body = {
                "version": "4",
                "status": "firing",
                "receiver": "bench",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": "BenchAlert", "i": str(i)},
                        "startsAt": "2026-12-02T00:00:00Z",
                    }
                ],
            }
            t0 = time.perf_counter()
            async with s.post(f"{base}/v1/alerts/alertmanager", json=body, headers=headers) as r:
                await r.read()
            out.append((time.perf_counter() - t0) * 1000)
            assert r.status == 200
    return out


async def flood(url: str, count: int) -> tuple[float, int, int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    planned: set[int] = set()
    requested: dict[str, int] = {}
    done = asyncio.Event()

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        data = json.loads(msg.data)
        if data["type"] == "run.requested" and data.get("workflow") == "bench-on-event":
            requested[data["run_id"]] = data["inputs"]["n"]
        elif data["type"] == "run.planned" and data["run_id"] in requested:
            planned.add(requested[data["run_id"]])
            if len(planned) >= count:
                done.set()

    sub = await js.subscribe(
        "fy.run.*.*", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.NEW, cb=on_event
    )
    t0 = time.perf_counter()
    for n in range(100_000, 100_000 + count):
        await nc.publish(f"bench.events.{n}", json.dumps({"n": n}).encode())
    await nc.flush()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 300)
    took = time.perf_counter() - t0
    await sub.unsubscribe()
    await nc.close()
    return took, len(planned), len(requested)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--alerts", type=int, default=300)
    parser.add_argument("--flood", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fy-bench-trig-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats").start()
        config = work / "flowyard.yaml"
        config.write_text(
            "gateway:\n  port: 0\n  rate_limit: {per_minute: 0}\n"
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
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in ("planner", "scheduler", "executor", "gateway"):
                log = work / f"{name}.log"
                procs[name] = start(name, env, log)
                wait_for(log, "service started", procs[name])
            port = wait_for(
                work / "gateway.log", r'"url": "http://127\.0\.0\.1:(\d+)", "users"', procs["gateway"]
            ).group(1)
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as s:
                r = await s.post(
                    f"{base}/v1/workflows",
                    data=WORKFLOWS.encode(),
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"},
                )
                assert r.status == 201, await r.text()
            # The apply itself captures the trigger subjects (logged by the gateway that applied it).
            wait_for(work / "gateway.log", "trigger subjects captured", procs["gateway"])
            print("stack: nats-server + planner, scheduler, executor (process runtime), gateway; one process each")
            await latency(server.url, 20)  # warm-up
            started, dispatched = await latency(server.url, args.events)
            print(f"event published -> run.started:        {summary(started)}")
            print(f"event published -> first task.started: {summary(dispatched)}")
            print(f"Alertmanager POST -> 200 (one alert):  {summary(await alerts(base, args.alerts))}")
            for name in ("scheduler", "executor"):
                procs[name].send_signal(signal.SIGTERM)
                procs[name].wait(30)
            took, planned, requested = await flood(server.url, args.flood)
            lost = args.flood - planned
            print(
                f"flood of {args.flood} events: {planned / took:,.0f} triggered runs/s planned "
                f"({planned} planned, {requested} requested in {took:.1f} s; lost {lost})"
            )
        finally:
            stop_all(procs.values(), server)


if __name__ == "__main__":
    asyncio.run(main())
