"""Warm workers on the Docker runtime against a real daemon: one container for many attempts, the
failures of one attempt, and adoption by the executor that gets a redelivered dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator

import aiodocker
import msgspec
import pytest

from services.executor import handlers
from services.executor.runtimes import dockeradopt
from services.executor.runtimes.base import MAYBE_STARTED
from services.executor.runtimes.docker import LABEL, DockerRuntime
from services.executor.runtimes.dockerwarm import AGENT_USER, DockerWorker
from shared.contract.messages import AgentResources, AgentSnapshot, TaskDispatched
from shared.contract.plans import WarmUse

pytestmark = pytest.mark.docker
IMAGE = "flowyard/base:bookworm"

# Answers each input line with its container's hostname and how many it has served; {"die": n}
# exits n, {"sleep": s} works s seconds first, {"big": n} answers n bytes, {"hang": true} never answers.
AGENT = textwrap.dedent("""
    import json, os, socket, sys, time
    served = 0
    for line in sys.stdin:
        req = json.loads(line)
        served += 1
        print(f"serving {served}", file=sys.stderr, flush=True)
        if "die" in req:
            sys.exit(req["die"])
        if "hang" in req:
            time.sleep(3600)
        time.sleep(req.get("sleep", 0))
        out = {"host": socket.gethostname(), "served": served, "echo": req, "warm": os.environ.get("FLOWYARD_WARM")}
        if "big" in req:
            out["pad"] = "x" * req["big"]
        if "eat" in req:
            out["pad"] = bytearray(req["eat"] << 20)
        print(json.dumps(out), flush=True)
""")
_seq = iter(range(1_000_000))


@pytest.fixture
async def runtime(base_image: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(max_output_bytes=64 * 1024, log_tail_bytes=4096, retention=120)
    rt.stack_id = f"warmtest{next(_seq)}"
    yield rt
    await rt.close()
    await _remove_stack(rt.stack_id)


async def _remove_stack(stack_id: str) -> None:
    docker = aiodocker.Docker()
    try:
        for c in await docker.containers.list(all=True, filters={"label": [f"{LABEL}.stack={stack_id}"]}):
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)
    finally:
        await docker.close()


def task(
    run_id: str, node: str = "n", *, reuse: str = "agent", timeout: float = 30, max_: int = 2, memory: str | None = None
) -> TaskDispatched:
    agent = AgentSnapshot(
        name="warmprobe",
        image=IMAGE,
        command=["python3", "-c", AGENT],
        resources=AgentResources(memory=memory),
        warm=WarmUse(min=0, max=max_, idle_s=300, reuse=reuse),  # type: ignore[arg-type]
    )
    return TaskDispatched(
        run_id=run_id, workflow="w", node_id=node, attempt=1, agent=agent, input={}, timeout_s=timeout
    )


async def ask(rt: DockerRuntime, t: TaskDispatched, req: dict[str, object]) -> handlers.Judgement:
    outcome = await rt.run(t, stdin=msgspec.json.encode(req), env={"FLOWYARD_RUN_ID": t.run_id}, timeout_s=t.timeout_s)
    return handlers.judge(t, outcome, log_tail_bytes=4096)


async def warm_containers(rt: DockerRuntime, *, running: bool = True) -> list[dict[str, object]]:
    assert rt.stack_id is not None
    filters = {"label": [f"{LABEL}.warm", f"{LABEL}.stack={rt.stack_id}"]}
    if running:
        filters["status"] = ["running"]
    return list(await rt.docker.containers.list(all=not running, filters=filters))


async def test_one_locked_down_container_serves_attempt_after_attempt(runtime: DockerRuntime) -> None:
    logs: list[bytes] = []
    t0 = task("rwarm1", "a")
    first = handlers.judge(
        t0,
        await runtime.run(t0, stdin=b'{"i": 0}', env={}, timeout_s=30, on_log=logs.append),
        log_tail_bytes=4096,
    )
    assert first.ok, first.error
    answers = [first.output] + [(await ask(runtime, task("rwarm1", f"n{i}"), {"i": i})).output for i in range(1, 5)]
    assert [a["served"] for a in answers] == [1, 2, 3, 4, 5]  # one worker, no start per attempt
    assert {a["host"] for a in answers} == {answers[0]["host"]}
    assert answers[0]["warm"] == "1" and answers[3]["echo"] == {"i": 3}
    assert b"serving 1" in b"".join(logs)
    [summary] = await warm_containers(runtime)
    info = await (await runtime.docker.containers.get(summary["Id"])).show()
    host = info["HostConfig"]
    # The same lockdown as a cold attempt's container.
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["NetworkMode"] == "none"
    assert info["Config"]["User"] == AGENT_USER and "no-new-privileges" in host["SecurityOpt"]
    # Its environment is the worker's, fixed at its start: no per-attempt values.
    assert not any(e.startswith("FLOWYARD_RUN_ID=") for e in info["Config"]["Env"])


async def test_a_worker_that_dies_fails_that_attempt_only(runtime: DockerRuntime) -> None:
    ok = await ask(runtime, task("rwarm2", "a"), {})
    assert ok.ok
    died = await ask(runtime, task("rwarm2", "b"), {"die": 3})
    assert not died.ok and "exit" in (died.error or "") and "3" in (died.error or "")
    again = await ask(runtime, task("rwarm2", "c"), {})
    assert again.ok and again.output["served"] == 1  # a new worker took the next one
    assert again.output["host"] != ok.output["host"]


async def test_a_timeout_or_an_overflow_fails_the_attempt_and_replaces_the_worker(runtime: DockerRuntime) -> None:
    hung = await ask(runtime, task("rwarm3", "a", timeout=2), {"hang": True})
    assert not hung.ok and hung.reason == "timeout"
    big = await ask(runtime, task("rwarm3", "b"), {"big": 200_000})
    assert not big.ok and "max_output_bytes" in (big.error or "")
    after = await ask(runtime, task("rwarm3", "c"), {})
    assert after.ok and after.output["served"] == 1


async def test_eating_memory_is_an_oom_kill_of_that_attempt(runtime: DockerRuntime) -> None:
    assert (await ask(runtime, task("rwarm8", "a", memory="64Mi"), {})).ok
    ate = await ask(runtime, task("rwarm8", "b", memory="64Mi"), {"eat": 300})
    assert not ate.ok and "ran out of memory (its limit of 64 MiB)" in (ate.error or ""), ate.error
    assert "serving 2" in (ate.error or "")  # its log tail: what it said on stderr for this attempt
    assert (await ask(runtime, task("rwarm8", "c", memory="64Mi"), {})).ok


async def test_reuse_run_never_gives_a_worker_two_runs_and_its_workers_go_with_the_run(
    runtime: DockerRuntime,
) -> None:
    one = await ask(runtime, task("rwarm4a", "a", reuse="run"), {})
    two = await ask(runtime, task("rwarm4b", "a", reuse="run"), {})
    assert one.ok and two.ok and one.output["host"] != two.output["host"]
    same = await ask(runtime, task("rwarm4a", "b", reuse="run"), {})
    assert same.output["host"] == one.output["host"] and same.output["served"] == 2
    assert await runtime.forget_run("rwarm4a") >= 1
    hosts = set()
    for _ in range(50):  # removed in the background
        hosts = {c["Id"][:12] for c in await warm_containers(runtime)}
        if one.output["host"] not in hosts:
            break
        await asyncio.sleep(0.1)
    assert one.output["host"] not in hosts and two.output["host"] in hosts


async def test_a_dead_executors_attempt_is_adopted_not_run_again(base_image: str) -> None:
    first = DockerRuntime(max_output_bytes=64 * 1024, log_tail_bytes=4096, retention=120)
    first.stack_id = stack = f"warmtest{next(_seq)}"
    t = task("rwarm5", "a")
    try:
        running = asyncio.create_task(ask(first, t, {"sleep": 2}))
        # Wait until the worker holds the attempt (its claim is on file), then let the executor
        # "die": its attach goes, so the container's stdin ends.
        claim = None
        while claim is None:
            await asyncio.sleep(0.05)
            for c in await warm_containers(first):
                container = await first.docker.containers.get(c["Id"])
                claim = await dockeradopt._claimed(container, t.key, AGENT_USER)
        [worker] = [w.handle for ws in first.warm.pools._workers.values() for w in ws]
        assert isinstance(worker, DockerWorker)
        first.detach = True
        await worker.stream.close()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        second = DockerRuntime(max_output_bytes=64 * 1024, log_tail_bytes=4096, retention=120)
        second.stack_id = stack
        try:
            token = MAYBE_STARTED.set(True)  # the executor sets it for a redelivered dispatch
            try:
                adopted = await ask(second, t, {"sleep": 2})
                fresh = await ask(second, task("rwarm5", "b"), {})  # never started: it runs
            finally:
                MAYBE_STARTED.reset(token)
            assert adopted.ok and adopted.output["served"] == 1
            assert adopted.output["host"] == container.id[:12]  # the first executor's worker answered
            assert fresh.ok and fresh.output["host"] != container.id[:12]
        finally:
            await second.close()
    finally:
        await first.close()
        await _remove_stack(stack)


async def test_an_image_without_a_shell_runs_its_warm_agent_cold(runtime: DockerRuntime) -> None:
    # The wrapper needs /bin/sh; the runtime learns the image has none and starts attempts cold.
    runtime._no_shell.add("flowyard/noshell:test")
    t = task("rwarm6", "a")
    t = msgspec.structs.replace(t, agent=msgspec.structs.replace(t.agent, image="flowyard/noshell:test"))
    outcome = await runtime.run(t, stdin=b"{}", env={}, timeout_s=10)
    assert outcome.start_error and "not present" in outcome.start_error  # the cold path's answer
    assert await warm_containers(runtime) == []


async def test_a_dead_executors_warm_containers_go_once_their_runs_have_ended(base_image: str) -> None:
    first = DockerRuntime(max_output_bytes=64 * 1024, log_tail_bytes=4096, retention=120)
    first.stack_id = stack = f"warmtest{next(_seq)}"
    second = DockerRuntime(max_output_bytes=64 * 1024, log_tail_bytes=4096, retention=120)
    second.stack_id = stack
    try:
        assert (await ask(first, task("rwarm7", "a"), {})).ok
        [worker] = first.warm.pools.handles()
        assert isinstance(worker, DockerWorker)
        worker.abandon()  # as when its executor dies: the input ends, the container stays
        status: dict[str, str | None] = {"rwarm7": "running"}

        async def run_status(run_id: str) -> str | None:
            return status.get(run_id)

        for _ in range(100):  # the wrapper marks the end of its input as it sees it
            container = await second.docker.containers.get(worker.container.id)
            if await dockeradopt._read(container, f"{dockeradopt.FILES}/eof", AGENT_USER) is not None:
                break
            await asyncio.sleep(0.05)
        assert await second.warm.sweep_orphans(stack, run_status) == 0  # its run may still adopt
        assert await first.warm.sweep_orphans(stack, run_status) == 0  # never its own executor's
        status["rwarm7"] = "succeeded"
        assert await second.warm.sweep_orphans(stack, run_status) == 1
        assert await warm_containers(second) == []
    finally:
        await second.close()
        await first.close()
        await _remove_stack(stack)
