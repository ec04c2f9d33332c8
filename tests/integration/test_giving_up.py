"""Whatever a service gives up on ends the run it belongs to, as failed, in plain words — never a
silent wait; and a run too big for the bus ends the same way, however big it grew."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from shared.bus.server import NatsServer

from ..cli import flowyard
from .stack import Stack

SLOW = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: snooze}
spec:
  command: [python3, -c, "import sys, time; sys.stdin.read(); time.sleep(60); print('{}')"]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: snoozing}
spec:
  nodes: [{id: a, agent: snooze}]
"""


@pytest.fixture
def stack(nats_binary: str, tmp_path: Path) -> Iterator[Stack]:
    server = NatsServer(tmp_path / "nats").start()
    s = Stack(server, tmp_path, FLOWYARD_BUS_MAX_DELIVER="2")
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()
        server.stop()


def test_a_dead_lettered_message_ends_its_run_saying_why(stack: Stack, tmp_path: Path) -> None:
    doc = tmp_path / "snooze.yaml"
    doc.write_text(SLOW)
    run = stack.cli_background("run", str(doc), "--json")
    deadline = time.monotonic() + 30
    run_id = ""
    while not run_id and time.monotonic() < deadline:
        listed = json.loads(stack.cli("runs", "list", "--json").stdout)
        run_id = next((r["run_id"] for r in listed if r["workflow"] == "snoozing" and r["status"] == "running"), "")
    assert run_id

    async def poison() -> None:
        nc = await nats.connect(stack.server.url)
        js = nc.jetstream()
        await js.publish(f"fy.run.{run_id}.task.a.succeeded", b"this is not an event")
        await nc.close()

    asyncio.run(poison())
    out, _ = run.communicate(timeout=60)
    result = json.loads(out)
    assert run.returncode == 1 and result["status"] == "failed"
    assert "the scheduler gave up on a message of this run" in result["error"]
    assert f"fy.run.{run_id}.task.a.succeeded" in result["error"] and "fy.dlq.scheduler" in result["error"]


def test_a_fan_out_far_bigger_than_a_message_runs_through_the_object_store(nats_binary: str, tmp_path: Path) -> None:
    """With bus.max_payload at 64 KiB, 100 items of about 1,530 bytes each: the items' results
    (150 KB), the fan-in node's input (the same list) and the run's output are each larger than a
    message may be; they travel by reference (ADR 11) and the run succeeds with every value. (Few
    big items rather than many small ones: on a loaded CI machine 400 process starts took > 300 s.)"""
    doc = tmp_path / "wide.yaml"
    doc.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: chatty}\nspec:\n"
        "  command: [python3, -c, \"import json, sys; r = json.load(sys.stdin); print(json.dumps({'i': r['i'], 'pad': 'x' * 1500}))\"]\n"
        "---\napiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: count}\nspec:\n"
        "  command: [python3, -c, \"import json, sys; r = json.load(sys.stdin)['all']; print(json.dumps({'n': len(r), 'sum': sum(x['i'] for x in r)}))\"]\n"
        "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: wide}\nspec:\n"
        "  inputs: {items: {type: array}}\n"
        "  nodes:\n"
        '    - {id: each, agent: chatty, foreach: "{{ inputs.items }}", with: {i: "{{ item }}"}}\n'
        '    - {id: total, agent: count, needs: [each], with: {all: "{{ nodes.each.output }}"}}\n'
        '  outputs: {all: "{{ nodes.each.output }}", n: "{{ nodes.total.output.n }}", sum: "{{ nodes.total.output.sum }}"}\n'
    )
    items = json.dumps(list(range(100)))
    try:
        done = flowyard(
            "run", str(doc), "-i", f"items={items}", "--json", env={"FLOWYARD_BUS_MAX_PAYLOAD": "65536"}, timeout=240
        )
    except subprocess.TimeoutExpired as e:  # say what the stack was doing, not only that it was slow
        pytest.fail(f"the run did not end in 240 s; its log's tail:\n{(e.stderr or b'')[-6000:]!r}")
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["status"] == "succeeded", (result.get("error"), done.stderr[-2000:])
    assert result["outputs"]["n"] == 100 and result["outputs"]["sum"] == sum(range(100))
    assert [x["i"] for x in result["outputs"]["all"]] == list(range(100))
    assert len(result["nodes"]["each"]["items"]) == 100
    assert all(it["status"] == "succeeded" for it in result["nodes"]["each"]["items"])
