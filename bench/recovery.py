"""Recovery: from a scheduler SIGKILL to the run making progress again.

    .venv/bin/python bench/recovery.py [--trials 10]

A nats-server and the planner, scheduler and executor as separate processes; a chain of 60 `cat`
nodes runs. In each trial, once the run is going, the scheduler is SIGKILLed and started again at
once (as a supervisor would), and the time is taken from the kill to the start of the second node
after the last one started before it (the first may have been dispatched by the killed scheduler
just before it died; the second can only come from the new one). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import pct, quiet_env, start, stop_all, wait_for  # noqa: E402  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402

NODES = 60


def chain() -> str:
    nodes = "\n".join(
        f"    - {{id: n{i}, agent: rcat{', needs: [n' + str(i - 1) + ']' if i else ''}, with: {{i: {i}}}}}"
        for i in range(NODES)
    )
    return (
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: rcat}\nspec:\n  command: [cat]\n---\n"
        f"apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: chain}}\nspec:\n  nodes:\n{nodes}\n"
    )


async def trial(
    url: str, work: Path, env: dict[str, str], procs: dict[str, subprocess.Popen[bytes]], n: int
) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    started: dict[int, float] = {}
    kill_at = 0.0
    progressed = asyncio.get_running_loop().create_future()
    before = -1

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        data = json.loads(msg.data)
        if data["type"] != "task.started":
            return
        i = int(data["node_id"][1:])
        started.setdefault(i, time.perf_counter())
        if kill_at and before >= 0 and i >= before + 2 and not progressed.done():
            progressed.set_result(started[i])

    sub = await js.subscribe(
        "fy.run.*.task.*.started", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.NEW, cb=on_event
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", str(work / "chain.yaml"), "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while len(started) < 10:  # noqa: ASYNC110 (a bench polling its own counter)
        await asyncio.sleep(0.005)
    before = max(started)
    kill_at = time.perf_counter()
    procs["scheduler"].send_signal(signal.SIGKILL)
    procs["scheduler"].wait()
    log = work / f"scheduler.{n}.log"
    procs["scheduler"] = start("scheduler", env, log)
    await asyncio.to_thread(wait_for, log, "service started", procs["scheduler"])
    up_at = time.perf_counter()
    progress_at = await asyncio.wait_for(progressed, 120)
    await asyncio.to_thread(run.wait, 120)
    await sub.unsubscribe()
    await nc.close()
    return (progress_at - kill_at) * 1000, (up_at - kill_at) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fy-bench-rec-") as tmp:
        work = Path(tmp)
        (work / "chain.yaml").write_text(chain())
        server = NatsServer(work / "nats").start()
        env = quiet_env({"FLOWYARD_NATS_URL": server.url, "FLOWYARD_LOG_LEVEL": "info"})
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in ("planner", "scheduler", "executor"):
                procs[name] = start(name, env, work / f"{name}.log")
                wait_for(work / f"{name}.log", "service started", procs[name])
            progress, restart = [], []
            for n in range(args.trials):
                p, r = await trial(server.url, work, env, procs, n)
                progress.append(p)
                restart.append(r)
            print(
                f"stack: nats-server + planner, scheduler, executor (process runtime), one process each; {args.trials} trials"
            )
            print(
                f"scheduler SIGKILL -> run progressing again (new scheduler dispatched): median {statistics.median(progress):.0f} ms, "
                f"p95 {pct(progress, 0.95):.0f} ms, max {max(progress):.0f} ms"
            )
            print(
                f"  of which the new process starting (to 'service started'): median {statistics.median(restart):.0f} ms"
            )
        finally:
            stop_all(procs.values(), server)


if __name__ == "__main__":
    asyncio.run(main())
