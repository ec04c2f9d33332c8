"""Container node overhead: a one-node run in the Docker runtime, minus a bare container cycle.

    .venv/bin/python bench/container.py [--runs 50] [--parallel 20]

Needs Docker and the base image (deploy/base-image/build.sh). Measures (a) a bare
create + start + wait + delete of `cat` in flowyard/base:bookworm through the Docker API, with
the container configuration the runtime uses (and, for reference, with Docker's defaults), (b)
the end-to-end latency of a one-node run whose agent is that same `cat` in the Docker runtime
(request to the run's end, through planner, scheduler and executor), (a) and (b) in turn, and
reports (b) minus (a), pairwise and against the median of (a); then N container nodes at once on
one executor (a foreach of N items, executor concurrency N); then both again with the agent on
warm containers (`spec.warm`); then the same one-node run with the sample repository as its workspace, read
only and read-write (the agent changes one file, so a new version is stored). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiodocker
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import BenchStack, pct  # noqa: E402
from services.executor.runtimes.docker import DockerRuntime  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import AgentSnapshot, RunRequested, TaskDispatched, decode_record  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.state import workspace as ws  # noqa: E402
from shared.workflow.loader import load_bundle  # noqa: E402

IMAGE = "flowyard/base:bookworm"
WORKFLOWS = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: c-noop}
spec:
  image: flowyard/base:bookworm
  command: [cat]
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: c-warm}
spec:
  image: flowyard/base:bookworm
  command: [cat]
  warm: {min: 1, max: 16, reuse: agent}
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: c-ws-ro}
spec:
  image: flowyard/base:bookworm
  command: [cat]
  workspace: ro
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: c-ws-rw}
spec:
  image: flowyard/base:bookworm
  command: [sh, -c, 'cat; date +%s%N > stamp']
  workspace: rw
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: ws-ro}
spec:
  nodes:
    - {id: only, agent: c-ws-ro, with: {n: 1}}
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: ws-rw}
spec:
  nodes:
    - {id: only, agent: c-ws-rw, with: {n: 1}}
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: one-container}
spec:
  nodes:
    - {id: only, agent: c-noop, with: {n: 1}}
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: one-warm}
spec:
  nodes:
    - {id: only, agent: c-warm, with: {n: 1}}
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: many-warm}
spec:
  inputs:
    n: {type: integer}
  nodes:
    - {id: each, agent: c-warm, foreach: "{{ inputs.n_items }}", with: {i: "{{ item }}"}}
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: many-containers}
spec:
  inputs:
    n: {type: integer}
  nodes:
    - {id: each, agent: c-noop, foreach: "{{ inputs.n_items }}", with: {i: "{{ item }}"}}
"""


def locked_down_spec() -> dict:
    """The container the Docker runtime makes for a `cat` agent, minus stdin (nothing attaches here)."""
    task = TaskDispatched(
        run_id="bench",
        workflow="bench",
        node_id="bare",
        attempt=1,
        agent=AgentSnapshot(name="bare", image=IMAGE, command=["cat"]),
    )
    spec = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096).spec(task, {})
    return {**spec, "OpenStdin": False, "StdinOnce": False, "AttachStdin": False}


async def bare_cycle(docker: aiodocker.Docker, spec: dict) -> tuple[float, float]:
    """(create+start+wait+delete, create+start+wait) in milliseconds."""
    t0 = time.perf_counter()
    c = await docker.containers.create(spec)
    await c.start()
    await c.wait()
    t1 = time.perf_counter()
    await c.delete(force=True)
    return (time.perf_counter() - t0) * 1000, (t1 - t0) * 1000


def summary(label: str, values: list[float]) -> str:
    return f"{label}: median {statistics.median(values):.0f} ms, p95 {pct(values, 0.95):.0f} ms"


async def run_once(
    bus: Bus, definition: dict, inputs: dict, tag: str, workspace: bytes | None = None
) -> tuple[float, object]:
    kv = await bus.kv(subjects.RUNS_BUCKET)
    run_id = f"{tag}{time.time_ns():x}"
    first = None
    if workspace is not None:  # uploaded before the clock starts, as the CLI does before it submits
        first = await ws.WorkspaceStore(bus, max_bytes=64 << 20).store(ws.first_version(run_id), workspace)
    t0 = time.perf_counter()
    await bus.publish(
        subjects.run_requested(run_id),
        RunRequested(
            run_id=run_id,
            workflow=definition["metadata"]["name"],
            definition=definition,
            inputs=inputs,
            workspace=first,
        ),
        msg_id=f"{run_id}:requested",
    )
    while True:
        try:
            record = decode_record((await kv.get(run_id)).value)
            if record.status != "running":
                return (time.perf_counter() - t0) * 1000, record
        except Exception:
            pass
        await asyncio.sleep(0.002)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=20)
    args = ap.parse_args()
    # The baseline is the very container the runtime makes (no network stack at all, read-only
    # root, limits...); a default container costs more to start here (a network namespace), which
    # would hide the runtime's own overhead. Both are printed.
    docker = aiodocker.Docker()
    default_config = {"Image": IMAGE, "Cmd": ["cat"], "HostConfig": {"NetworkMode": "none"}}
    plain = [(await bare_cycle(docker, default_config))[0] for _ in range(args.runs)]
    print(summary("bare cycle, default container config (NetworkMode none)", plain))
    bundle = load_bundle(WORKFLOWS.replace("n: {type: integer}", "n_items: {type: array}"), "bench")
    one = msgspec.to_builtins(bundle.workflow("one-container"))
    many = msgspec.to_builtins(bundle.workflow("many-containers"))
    env = {"FLOWYARD_EXECUTOR_RUNTIME": "docker", "FLOWYARD_EXECUTOR_CONCURRENCY": str(args.parallel)}
    with tempfile.TemporaryDirectory(prefix="fy-bench-") as tmp:
        async with BenchStack(Path(tmp), separate=True, env=env) as stack:
            bus = Bus(NatsConfig(url=stack.url), BusConfig(), name="bench")
            await bus.connect()
            await registry.register(bus, bundle.agents.values())
            for _ in range(3):
                await run_once(bus, one, {}, "warm")
            # A bare cycle and a one-node run in turn, so that the daemon's drift over the
            # minutes this takes (it is not steady after a restart) weighs on both alike.
            bare, bare_kept, e2e, in_runtime = [], [], [], []
            spec = locked_down_spec()
            for _ in range(args.runs):
                full, kept = await bare_cycle(docker, spec)
                bare.append(full)
                bare_kept.append(kept)
                ms, record = await run_once(bus, one, {}, "one")
                assert record.status == "succeeded", record.error
                e2e.append(ms)
                in_runtime.append((record.nodes["only"].duration_s or 0.0) * 1000)
            print(summary("bare create+start+wait+delete, the runtime's container config", bare))
            print(summary("bare create+start+wait (delete not timed)", bare_kept))
            print(summary("one-node run in the Docker runtime", e2e))
            # The executor's own measure of the attempt (create to output read): the rest is the bus.
            rest = [total - agent for total, agent in zip(e2e, in_runtime, strict=True)]
            print(
                f"  of which in the Docker runtime: median {statistics.median(in_runtime):.0f} ms; "
                + summary("outside it (planner, scheduler, executor, bus)", rest)
            )
            paired = [run - cycle for run, cycle in zip(e2e, bare, strict=True)]
            print(summary("container node overhead (each run minus the bare cycle before it, with delete)", paired))
            over = [x - statistics.median(bare) for x in e2e]
            print(summary("container node overhead (runs minus the median bare cycle, with delete)", over))
            ms, record = await run_once(bus, many, {"n_items": list(range(args.parallel))}, "many")
            assert record.status == "succeeded", record.error
            print(f"{args.parallel} container nodes at once on one executor: whole run {ms:.0f} ms")
            # The same on a warm container (spec.warm): started once, then a line in and a line out.
            one_warm = msgspec.to_builtins(bundle.workflow("one-warm"))
            many_warm = msgspec.to_builtins(bundle.workflow("many-warm"))
            for _ in range(3):
                await run_once(bus, one_warm, {}, "warmup")
            warm_e2e, warm_in = [], []
            for _ in range(args.runs):
                ms, record = await run_once(bus, one_warm, {}, "onewarm")
                assert record.status == "succeeded", record.error
                warm_e2e.append(ms)
                warm_in.append((record.nodes["only"].duration_s or 0.0) * 1000)
            print(summary("one-node run on a warm container (spec.warm)", warm_e2e))
            print(f"  of which in the Docker runtime: median {statistics.median(warm_in):.1f} ms")
            await run_once(bus, many_warm, {"n_items": list(range(args.parallel))}, "manywarm")  # starts the pool
            ms, record = await run_once(bus, many_warm, {"n_items": list(range(args.parallel))}, "manywarm")
            assert record.status == "succeeded", record.error
            print(f"{args.parallel} warm container nodes at once on one executor: whole run {ms:.0f} ms")
            packed = ws.pack_dir(ROOT / "examples/sample-repo", max_bytes=64 << 20)
            for name in ("ws-ro", "ws-rw"):
                definition = msgspec.to_builtins(bundle.workflow(name))
                times = []
                for _ in range(args.runs):
                    ms, record = await run_once(bus, definition, {}, name.replace("-", ""), packed)
                    assert record.status == "succeeded", record.error
                    assert (name == "ws-rw") == (record.workspace_version == 1)
                    times.append(ms)
                print(
                    f"one-node run with a {len(packed) // 1024} KiB workspace, {name[3:]}: "
                    f"median {statistics.median(times):.0f} ms, p95 {pct(times, 0.95):.0f} ms"
                )
            await bus.close()
    try:
        for label in ("io.flowyard.key", "io.flowyard.warm"):
            for c in await docker.containers.list(all=True, filters={"label": [label]}):
                await c.delete(force=True, v=True)
    finally:
        await docker.close()


if __name__ == "__main__":
    asyncio.run(main())
