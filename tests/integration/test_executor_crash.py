"""The executor SIGKILLed around an agent container's start: never an agent failure, never twice.

A chain of five container nodes (each reads its JSON input, sleeps, prints a result), the
services as separate processes on the Docker runtime. In each trial the executor is killed at a
random moment between 0 and 300 ms after Docker reports one of the containers created — where
the input used to travel through the executor's own connection — and restarted after a random
0-2 s. The run must end succeeded with the right output, and every attempt's container must
have been created once and started once (the daemon's own events say so). Seeded: the seed is
printed, FLOWYARD_TEST_SEED replays it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import Stack

pytestmark = pytest.mark.docker

SEED = int(os.environ.get("FLOWYARD_TEST_SEED", random.randrange(2**32)))
TRIALS = int(os.environ.get("FLOWYARD_CRASH_TRIALS", "5"))
WORKFLOW = "crash-chain"


def chain(image: str, sleep: float = 1.5) -> str:
    agent = (
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: c-step}\nspec:\n"
        f"  image: {image}\n"
        f"  command: [python3, -c, \"import json, sys, time; n = json.load(sys.stdin)['n']; time.sleep({sleep});"
        " print(json.dumps({'n': n + 1}))\"]\n"
    )
    nodes = "    - {id: s1, agent: c-step, with: {n: 0}}\n" + "".join(
        f'    - {{id: s{i}, agent: c-step, needs: [s{i - 1}], with: {{n: "{{{{ nodes.s{i - 1}.output.n }}}}"}}}}\n'
        for i in range(2, 6)
    )
    return (
        agent
        + f"---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: {WORKFLOW}}}\nspec:\n  nodes:\n"
        + nodes
        + '  outputs:\n    n: "{{ nodes.s5.output.n }}"\n'
    )


class Events:
    """`docker events` for this workflow's containers, as they happen."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (action, container name)
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", f"label=io.flowyard.workflow={WORKFLOW}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event.get("Type") != "container":
                continue
            with self.cond:
                self.seen.append((event["Action"], event["Actor"]["Attributes"].get("name", "")))
                self.cond.notify_all()

    def wait_for_creates(self, count: int, timeout: float = 60) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(a == "create" for a, _ in self.seen) >= count, timeout)
        assert ok, f"only {sum(a == 'create' for a, _ in self.seen)} containers created"

    def counts(self, action: str, run_id: str) -> Counter[str]:
        with self.cond:
            return Counter(name for a, name in self.seen if a == action and run_id in name)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_an_executor_killed_around_a_container_start_never_fails_or_repeats_an_attempt(
    base_image: str, nats_binary: str, tmp_path: Path
) -> None:
    print(f"seed {SEED} ({TRIALS} trials; FLOWYARD_TEST_SEED={SEED} replays them)")
    rng = random.Random(SEED)
    workflow = tmp_path / "chain.yaml"
    workflow.write_text(chain(base_image))
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(server, tmp_path, FLOWYARD_EXECUTOR_RUNTIME="docker")
    events = Events()
    try:
        stack.start_all()
        for trial in range(TRIALS):
            which = rng.randint(1, 5)  # the container around whose creation the executor dies
            delay = rng.uniform(0, 0.3)
            pause = rng.uniform(0, 2)
            before = sum(a == "create" for a, _ in events.seen)
            run = stack.cli_background("run", str(workflow), "--json")
            events.wait_for_creates(before + which)
            time.sleep(delay)
            stack.kill("executor", signal.SIGKILL)
            time.sleep(pause)
            stack.start("executor")
            where = f"trial {trial} (seed {SEED}): killed {delay * 1000:.0f} ms after container {which} was created"
            check_chain(run, events, where)
    finally:
        events.close()
        stack.stop_all()
        server.stop()


def check_chain(run: subprocess.Popen[str], events: Events, where: str) -> None:
    """The chain ended right, and each of its five containers was created once and started once."""
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, f"{where}: {err}\n{out}"
    result = json.loads(out)
    assert result["outputs"] == {"n": 5}, where
    assert all(n["attempts"] == 1 for n in result["nodes"].values()), (where, result["nodes"])
    created = events.counts("create", result["run_id"])
    started = events.counts("start", result["run_id"])
    assert len(created) == 5 and set(created.values()) == {1}, (where, created)
    assert started == created, (where, started)
