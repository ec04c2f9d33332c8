"""Any one service (or the nats-server) SIGKILLed at a random point of a run and restarted: the
run finishes with the right outputs, no attempt's side effect happens twice, and timers survive. Two schedulers and
two executors share the work without doing anything twice."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer
from tests.chaos.harness import Chaos, run_trials
from tests.chaos.test_services import SCENARIOS

from .stack import Stack

WORKFLOWS = Path(__file__).parent / "workflows"
SEED = random.randrange(1_000_000)


@pytest.fixture
def stack(nats_binary: str, tmp_path: Path) -> Iterator[Stack]:
    server = NatsServer(tmp_path / "nats").start()
    s = Stack(server, tmp_path)
    try:
        yield s
    finally:
        s.stop_all()
        server.stop()


def check_once(markers: Path, result: dict) -> None:
    assert result["status"] == "succeeded", result
    assert result["outputs"] == {"total": 7}
    for node in "abcde":
        lines = (markers / node).read_text().splitlines()
        assert lines == ["1"], f"node {node} ran {lines} (seed {SEED})"
        assert result["nodes"][node]["attempts"] == 1


def test_every_service_and_the_nats_server_sigkilled_once_at_random(nats_binary: str, tmp_path: Path) -> None:
    """The chaos tier's trials, one per victim (tests/chaos runs 20 each)."""
    chaos = Chaos(tmp_path / "chaos").start()
    try:
        for victim, scenario in {**SCENARIOS, "nats": SCENARIOS["planner"]}.items():
            run_trials(chaos, victim, scenario, 1)
    finally:
        chaos.stop()


def test_retry_backoff_survives_a_scheduler_restart(stack: Stack, tmp_path: Path) -> None:
    stack.start_all()
    code_dir = tmp_path / "markers"
    code_dir.mkdir()
    run = stack.cli_background("run", str(WORKFLOWS / "retry-later.yaml"), "-i", f"dir={code_dir}", "--json")
    for _ in range(200):
        if (code_dir / "tries").exists():
            break
        time.sleep(0.05)
    time.sleep(0.3)  # the first attempt has failed; its 3 s back-off timer is pending
    stack.kill("scheduler", signal.SIGKILL)
    time.sleep(0.5)
    stack.start("scheduler")
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert result["nodes"]["flaky"]["attempts"] == 2
    stamps = [float(x) for x in (code_dir / "tries").read_text().split()]
    assert len(stamps) == 2 and stamps[1] - stamps[0] >= 1.5 * 0.9, "the back-off was not waited out"


def test_two_schedulers_and_two_executors_share_the_work(stack: Stack, tmp_path: Path) -> None:
    stack.start("planner")
    stack.start("scheduler")
    stack.start("executor")
    # Second replicas: the same services again, as separate processes.
    stack.start_replica("scheduler")
    stack.start_replica("executor")
    runs = []
    for i in range(6):
        markers = tmp_path / f"m{i}"
        markers.mkdir()
        runs.append(
            (
                markers,
                stack.cli_background(
                    "run", str(WORKFLOWS / "slow-diamond.yaml"), "-i", f"dir={markers}", "-i", "sleep=0.2", "--json"
                ),
            )
        )
    for markers, run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        check_once(markers, json.loads(out))
    # Both executors took work.
    worked = [stack.replica_log(name).count('"attempt finished"') for name in ("executor", "executor-2")]
    assert all(n > 0 for n in worked), worked


MANY = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: tick}
spec:
  command:
    - python3
    - -c
    - |
      import json, os, sys
      req = json.load(sys.stdin)
      with open(os.path.join(req["dir"], str(req["i"])), "a") as f:
          f.write(os.environ["FLOWYARD_ATTEMPT"] + "\\n")
      print(json.dumps({"i": req["i"], "pad": "x" * 200}))
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: many}
spec:
  inputs: {dir: {type: string}, items: {type: array}}
  nodes:
    - {id: each, agent: tick, foreach: "{{ inputs.items }}", parallelism: 16, with: {dir: "{{ inputs.dir }}", i: "{{ item }}"}}
  outputs: {all: "{{ nodes.each.output }}"}
"""


def test_a_scheduler_killed_mid_fan_out_resumes_from_the_stored_items(stack: Stack, tmp_path: Path) -> None:
    """The restarted scheduler reads the run back from its stored form (ended items in fy_items,
    open ones as runs, ADR 11) and finishes it: every item once, every output in order."""
    stack.start_all()
    doc = tmp_path / "many.yaml"
    doc.write_text(MANY)
    markers = tmp_path / "ticks"
    markers.mkdir()
    n = 300
    run = stack.cli_background(
        "run", str(doc), "-i", f"dir={markers}", "-i", f"items={json.dumps(list(range(n)))}", "--json"
    )
    deadline = time.monotonic() + 120
    while len(list(markers.iterdir())) < n // 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stack.kill("scheduler", signal.SIGKILL)
    stack.start("scheduler")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert [x["i"] for x in result["outputs"]["all"]] == list(range(n))
    ran = {p.name: p.read_text().splitlines() for p in markers.iterdir()}
    assert len(ran) == n and all(lines == ["1"] for lines in ran.values()), {k: v for k, v in ran.items() if v != ["1"]}
