"""Warm agents on the process runtime: one started worker takes attempt after attempt.

The services run as separate processes. The worker is a small Python agent that counts its
requests and says its pid, so each test reads from the outputs which worker served what.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import Stack

WORKER = r"""
import json, os, sys, time
n = 0
for line in sys.stdin:
    n += 1
    req = json.loads(line)
    print(f"request {n} in pid {os.getpid()}", file=sys.stderr, flush=True)
    if req.get("mark"):  # a side effect: one line per request it acted on
        with open(req["mark"], "a") as f:
            f.write(req.get("tag", "") + "\n")
    if req.get("sleep"):
        time.sleep(req["sleep"])
    if req.get("die_unless") and not os.path.exists(req["die_unless"]):
        open(req["die_unless"], "w").close()
        sys.exit(3)
    print(json.dumps({"n": n, "pid": os.getpid(), "secret": os.environ.get("TOKEN", ""),
                      "warm": os.environ.get("FLOWYARD_WARM")}), flush=True)
"""


def agent(tmp: Path, *, warm: str = "{max: 2}", timeout: str = "30s") -> str:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    return (
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: warmer}\nspec:\n"
        f"  command: [{sys.executable}, {script}]\n  warm: {warm}\n  timeout: {timeout}\n"
    )


def chain(tmp: Path, name: str, withs: list[str], *, warm: str = "{max: 2}", retry: int = 1) -> Path:
    nodes = ""
    for i, extra in enumerate(withs):
        needs = f", needs: [s{i - 1}]" if i else ""
        nodes += (
            f"    - {{id: s{i}, agent: warmer{needs}, retry: {{attempts: {retry}, backoff: 0s}}, with: {{{extra}}}}}\n"
        )
    outputs = "".join(f'    s{i}: "{{{{ nodes.s{i}.output }}}}"\n' for i in range(len(withs)))
    path = tmp / f"{name}.yaml"
    path.write_text(
        agent(tmp, warm=warm)
        + f"---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n  nodes:\n"
        + nodes
        + "  outputs:\n"
        + outputs
    )
    return path


@pytest.fixture
def stack(nats_binary: str, tmp_path: Path) -> Iterator[Stack]:
    server = NatsServer(tmp_path / "nats").start()
    s = Stack(server, tmp_path, FLOWYARD_EXECUTOR_RUNTIME="process")
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()
        server.stop()


def pids(result: dict) -> list[int]:
    return [out["pid"] for out in result["outputs"].values()]


def test_one_worker_serves_a_run_and_never_another_run(stack: Stack, tmp_path: Path) -> None:
    workflow = chain(tmp_path, "warm-chain", ["x: 1", "x: 2", "x: 3"])
    code, first, err = stack.run_json(str(workflow))
    assert code == 0, err
    assert len(set(pids(first))) == 1, first["outputs"]  # one worker, three requests in turn
    assert [o["n"] for o in first["outputs"].values()] == [1, 2, 3]
    assert {o["warm"] for o in first["outputs"].values()} == {"1"}
    code, second, err = stack.run_json(str(workflow))
    assert code == 0, err
    assert not set(pids(second)) & set(pids(first)), "reuse: run gave a second run the first one's worker"
    assert [o["n"] for o in second["outputs"].values()] == [1, 2, 3]
    # The ended run's worker is gone.
    for pid in pids(first):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_reuse_agent_shares_a_worker_across_runs(stack: Stack, tmp_path: Path) -> None:
    workflow = chain(tmp_path, "warm-shared", ["x: 1", "x: 2"], warm="{max: 1, reuse: agent}")
    _, first, _ = stack.run_json(str(workflow))
    _, second, _ = stack.run_json(str(workflow))
    assert first["status"] == second["status"] == "succeeded"
    assert set(pids(first)) == set(pids(second))
    assert [o["n"] for o in second["outputs"].values()] == [3, 4]


def test_a_worker_that_dies_fails_that_attempt_only_and_is_replaced(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "died-once"
    workflow = chain(tmp_path, "warm-die", ["x: 1", f"die_unless: '{flag}'", "x: 3"], retry=2)
    code, result, err = stack.run_json(str(workflow))
    assert code == 0, err
    assert result["nodes"]["s1"]["attempts"] == 2
    assert result["nodes"]["s0"]["attempts"] == result["nodes"]["s2"]["attempts"] == 1
    first, retried, last = pids(result)
    assert retried == last != first  # the dead worker's replacement took the retry and what followed
    assert result["outputs"]["s1"]["n"] == 1


def test_a_worker_that_dies_says_how_in_the_failure(stack: Stack, tmp_path: Path) -> None:
    flag = tmp_path / "never"
    workflow = chain(tmp_path, "warm-die-fail", [f"die_unless: '{flag}'"])
    code, result, _ = stack.run_json(str(workflow))
    assert code == 1
    node = result["nodes"]["s0"]
    assert "exited with code 3" in node["error"], node["error"]
    assert "request 1 in pid" in node["error"]  # what it said last on stderr


def test_a_request_past_its_timeout_kills_the_worker_and_the_next_run_gets_a_new_one(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "slow.yaml"
    (tmp_path / "worker.py").write_text(WORKER)
    path.write_text(
        agent(tmp_path, warm="{max: 1, reuse: agent}", timeout="1s")
        + "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: warm-slow}\nspec:\n"
        + "  inputs: {sleep: {type: number, default: 0}}\n  nodes:\n"
        + "    - {id: s0, agent: warmer, with: {sleep: '{{ inputs.sleep }}'}}\n"
        + '  outputs: {s0: "{{ nodes.s0.output }}"}\n'
    )
    _, before, _ = stack.run_json(str(path))
    code, slow, _ = stack.run_json(str(path), "-i", "sleep=30")
    assert code == 1 and "timed out after 1s" in slow["nodes"]["s0"]["error"], slow["nodes"]["s0"]
    _, after, _ = stack.run_json(str(path))
    assert after["status"] == "succeeded"
    assert after["outputs"]["s0"]["pid"] != before["outputs"]["s0"]["pid"]
    assert after["outputs"]["s0"]["n"] == 1


def test_an_executor_killed_mid_request_loses_nothing_and_repeats_nothing(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL while a warm worker holds a request: the worker finishes it, its answer is kept on
    file, and the next executor reads it from there: the side effect happened once."""
    mark = tmp_path / "side-effects"
    workflow = chain(
        tmp_path,
        "warm-crash",
        [f"mark: '{mark}', tag: a", f"mark: '{mark}', tag: b, sleep: 3", f"mark: '{mark}', tag: c"],
    )
    run = stack.cli_background("run", str(workflow), "--json")
    deadline = time.monotonic() + 60
    while not (mark.exists() and "b" in mark.read_text().split()):
        assert time.monotonic() < deadline, "the warm worker never took the second request"
        time.sleep(0.05)
    stack.kill("executor", signal.SIGKILL)
    stack.start("executor")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert mark.read_text().split() == ["a", "b", "c"], "a side effect ran twice or not at all"
    assert result["nodes"]["s1"]["attempts"] == 1
    assert result["outputs"]["s1"]["n"] == 2  # the answer of the worker that was killed's executor
    assert pids(result)[0] == pids(result)[1] != pids(result)[2]
