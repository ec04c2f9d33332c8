"""Workflow semantics end to end, across separate service processes."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import Stack

WORKFLOWS = Path(__file__).parent / "workflows"


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("semantics")
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir, FLOWYARD_EXECUTOR_CONCURRENCY="4")
    try:
        yield s.start_all()
    finally:
        s.stop_all()
        server.stop()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_when_foreach_retry_and_continue_on_failure(stack: Stack, tmp_path: Path) -> None:
    code, result, err = stack.run_json(str(WORKFLOWS / "features.yaml"), "-i", f"dir={tmp_path}")
    assert code == 0, err
    nodes = result["nodes"]
    probe = nodes["probe"]
    assert probe["status"] == "succeeded"
    assert [p["host"] for p in probe["output"]] == ["web-1", "flaky", "web-2", "db-1"]
    assert [p["index"] for p in probe["output"]] == [0, 1, 2, 3]
    flaky = probe["items"][1]
    assert flaky["attempts"] == 2 and flaky["errors"] == ["attempt 1: exited with code 75: connection reset by peer"]
    assert (tmp_path / "flaky.tries").read_text() == "1\n2\n"
    assert (tmp_path / "web-1.tries").read_text() == "1\n"
    assert nodes["optional"]["status"] == "failed" and nodes["optional"]["attempts"] == 1
    assert nodes["page"]["status"] == "skipped" and "`when` is false" in nodes["page"]["error"]
    assert nodes["report"]["status"] == "succeeded"
    assert result["outputs"]["optional"] == "failed"
    assert result["status"] == "succeeded"


def test_a_run_past_its_deadline_fails_and_its_agents_are_stopped(stack: Stack, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code, result, _ = stack.run_json(str(WORKFLOWS / "deadline.yaml"), "-i", f"pidfile={pidfile}")
    assert code == 1
    assert result["status"] == "failed" and "exceeded its timeout of 2s" in result["error"]
    assert result["nodes"]["nap"]["status"] == "cancelled" and result["nodes"]["after"]["status"] == "cancelled"
    pid = int(pidfile.read_text())
    for _ in range(100):
        if not alive(pid):
            break
        time.sleep(0.05)
    assert not alive(pid), "the agent kept running after the run failed"


def test_cancel_stops_running_agents(stack: Stack, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    run = stack.cli_background("run", str(WORKFLOWS / "cancellable.yaml"), "-i", f"pidfile={pidfile}", "--json")
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    listed = json.loads(stack.cli("runs", "list", "--json").stdout)
    run_id = next(r["run_id"] for r in listed if r["workflow"] == "cancellable" and r["status"] == "running")
    cancelled = stack.cli("runs", "cancel", run_id, "--reason", "wrong host", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    record = json.loads(cancelled.stdout)
    assert record["status"] == "cancelled" and "wrong host" in record["error"]
    assert {n["status"] for n in record["nodes"].values()} == {"cancelled"}
    out, _ = run.communicate(timeout=30)
    assert run.returncode == 1 and json.loads(out)["status"] == "cancelled"
    pid = int(pidfile.read_text())
    for _ in range(100):
        if not alive(pid):
            break
        time.sleep(0.05)
    assert not alive(pid)
    again = stack.cli("runs", "cancel", run_id)
    assert again.returncode == 1 and "already cancelled" in again.stderr


def test_retry_of_a_failed_run_reuses_what_succeeded(stack: Stack, tmp_path: Path) -> None:
    code, first, _ = stack.run_json(str(WORKFLOWS / "flaky-once.yaml"), "-i", f"dir={tmp_path}")
    assert code == 1 and first["nodes"]["b"]["status"] == "failed" and first["nodes"]["c"]["status"] == "skipped"
    retried = stack.cli("runs", "retry", first["run_id"], "--json")
    assert retried.returncode == 0, retried.stderr
    second = json.loads(retried.stdout)
    assert second["run_id"] != first["run_id"] and second["retry_of"] == first["run_id"]
    assert second["nodes"]["a"]["status"] == "succeeded" and second["nodes"]["a"]["reused_from"] == first["run_id"]
    assert second["nodes"]["a"]["attempts"] == 0
    assert (tmp_path / "a").read_text() == "x", "a ran again"
    assert second["nodes"]["b"]["output"] == {"name": "b", "runs": 2}
    assert second["outputs"] == {"c_runs": 1}
    refused = stack.cli("runs", "retry", second["run_id"])
    assert refused.returncode == 2 and "only failed or cancelled runs" in refused.stderr


def test_concurrency_queues_runs_of_the_same_workflow(stack: Stack) -> None:
    runs = [stack.cli_background("run", str(WORKFLOWS / "one-at-a-time.yaml"), "--json") for _ in range(3)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=90)
        assert run.returncode == 0, err
        results.append(json.loads(out)["outputs"])
    spans = sorted((r["start"], r["end"]) for r in results)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05, f"two runs overlapped: {spans}"


def test_fan_out_of_many_items(stack: Stack) -> None:
    code, result, err = stack.run_json(str(WORKFLOWS / "fan-out.yaml"), "-i", "n=300", timeout=180)
    assert code == 0, err
    assert result["outputs"]["items"] == [{"i": i} for i in range(300)]
    assert len(result["nodes"]["each"]["items"]) == 300


def test_a_fan_out_travels_in_batches_and_every_item_is_reported_once(stack: Stack) -> None:
    """64 items: the scheduler sends 16 batches of 4 (the automatic size), the executor reports
    each item once, alone or inside task.results, and the outputs come back in order."""
    import asyncio

    import nats

    async def watched() -> tuple[int, dict, str, dict[str, int], list[tuple[int, int]]]:
        nc = await nats.connect(stack.server.url)
        seen: dict[str, int] = {}
        reported: list[tuple[int, int]] = []  # (item, attempt) of every result heard

        ids: set[str] = set()

        async def on(msg: nats.aio.msg.Msg) -> None:
            # Core subscribers also hear a re-send JetStream drops as a duplicate: count ids once.
            msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            if msg_id in ids:
                return
            ids.add(msg_id)
            event = json.loads(msg.data)
            seen[event["type"]] = seen.get(event["type"], 0) + 1
            for e in event.get("events", [event]):
                if e["type"] in ("task.succeeded", "task.failed") and e.get("node_id") == "each":
                    reported.append((e["item"], e["attempt"]))

        await nc.subscribe("fy.task.dispatch.>", cb=on)
        await nc.subscribe("fy.run.*.task.>", cb=on)
        code, result, err = await asyncio.to_thread(
            stack.run_json, str(WORKFLOWS / "fan-out.yaml"), "-i", "n=64", timeout=180
        )
        await nc.flush()
        await nc.close()
        return code, result, err, seen, reported

    code, result, err, seen, reported = asyncio.run(watched())
    assert code == 0, err
    assert result["outputs"]["items"] == [{"i": i} for i in range(64)]
    assert seen.get("task.batch") == 16, seen
    assert seen.get("task.dispatched") == 2, seen  # make and join
    assert sorted(reported) == [(i, 1) for i in range(64)]  # each item once, first attempt


def test_poison_messages_do_not_block_the_services(stack: Stack) -> None:
    import asyncio

    from shared.bus.connection import Bus
    from shared.config.settings import BusConfig, NatsConfig

    async def send() -> None:
        bus = Bus(NatsConfig(url=stack.server.url), BusConfig(), name="poisoner")
        await bus.connect()
        await bus.js.publish("fy.run.rpoison.requested", b"{not json")
        await bus.js.publish("fy.run.rpoison2.task.a.succeeded", b'{"type": "task.succeeded"}')
        await bus.js.publish("fy.task.dispatch.default", b'{"type": "task.dispatched", "run_id": 7}')
        await bus.close()

    asyncio.run(send())
    code, result, _ = stack.run_json(str(WORKFLOWS / "garbage.yaml"))
    assert code == 1 and result["status"] == "failed"  # the services kept working
    for name in ("planner", "scheduler", "executor"):
        assert "message terminated" in stack.wait_for_log(name, "message terminated")
