"""Schedules with real planners: each time fires once across two replicas, a run still going
skips the next time (overlap: skip), and a planner that was down runs the latest missed time once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import Stack
from .test_triggers import counts, runs_of, wait_for

AGENTS = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: cnote}
spec:
  command: [cat]
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: cslow}
spec:
  command: [python3, -c, "import sys, time; sys.stdin.read(); time.sleep(5); print('{}')"]
"""


def workflow(name: str, cron: str, agent: str = "cnote") -> str:
    return (
        f"{AGENTS}---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n"
        f"  triggers: [{{cron: {cron}}}]\n"
        f"  nodes: [{{id: a, agent: {agent}, with: {{at: '{{{{ trigger.scheduled_at }}}}'}}}}]\n"
    )


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("schedules")
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir)
    try:
        s.start_all()
        s.start_replica("planner")
        yield s
    finally:
        s.stop_all()
        server.stop()


def apply(stack: Stack, tmp: Path, name: str, cron: str, agent: str = "cnote") -> None:
    doc = tmp / f"{name}.yaml"
    doc.write_text(workflow(name, cron, agent))
    done = stack.cli("workflows", "apply", str(doc))
    assert done.returncode == 0, done.stderr


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def scheduled(stack: Stack, name: str) -> list[str]:
    return [r["trigger"]["scheduled_at"] for r in runs_of(stack, name)]


def test_every_time_fires_once_across_two_planners(stack: Stack, tmp_path: Path) -> None:
    apply(stack, tmp_path, "tick", "{every: 2s}")
    times = wait_for(
        lambda: (lambda t: t if len(t) >= 4 else None)(scheduled(stack, "tick")), timeout=30, what="4 ticks"
    )
    assert stack.cli("workflows", "delete", "tick").returncode == 0
    times = scheduled(stack, "tick")
    assert len(times) == len(set(times)), times  # no time twice
    stamps = sorted(epoch(t) for t in times)
    assert all(b - a == 2 for a, b in itertools.pairwise(stamps)), times  # none skipped either
    run = runs_of(stack, "tick")[0]
    assert run["trigger"]["type"] == "cron" and run["trigger"]["fired_at"] and run["requested_by"] == "trigger:cron"


def test_overlap_skip_skips_and_records(stack: Stack, tmp_path: Path) -> None:
    apply(stack, tmp_path, "slowtick", "{every: 2s, overlap: skip}", agent="cslow")
    wait_for(lambda: counts(stack, "slowtick#0")["skipped"] >= 2, timeout=30, what="skipped times")
    assert stack.cli("workflows", "delete", "slowtick").returncode == 0
    listed = runs_of(stack, "slowtick")
    running = [r for r in listed if r["status"] in ("pending", "running")]
    assert len(running) <= 1  # never two at once
    assert len(listed) < 4


def test_a_planner_down_across_two_times_runs_the_latest_once(stack: Stack, tmp_path: Path) -> None:
    apply(stack, tmp_path, "catchup", "{every: 3s, catchup_window: 1h}")
    wait_for(lambda: scheduled(stack, "catchup"), timeout=20, what="a first tick")
    stack.kill("planner")
    stack.kill("planner-2")
    before = set(scheduled(stack, "catchup"))
    time.sleep(7.5)  # two scheduled times pass with no planner running (the scenario, not a wait)
    restart_at = time.time()
    stack.start("planner")
    stack.start_replica("planner")
    wait_for(lambda: set(scheduled(stack, "catchup")) - before, timeout=20, what="the caught-up time")
    assert stack.cli("workflows", "delete", "catchup").returncode == 0
    new = sorted(set(scheduled(stack, "catchup")) - before, key=epoch)
    # The earlier missed time never runs: the first new time is the latest one at the restart
    # (or, if a time fell due while the planners came up, that one), and it runs once.
    assert epoch(new[0]) >= restart_at - 3, (new, restart_at)
    assert len(new) == len(set(new))
    logs = stack.replica_log("planner") + stack.replica_log("planner-2")
    assert logs.count('"caught_up": true') == 1


def test_overlap_cancel_other_cancels_the_previous_run(stack: Stack, tmp_path: Path) -> None:
    apply(stack, tmp_path, "pushy", "{every: 2s, overlap: cancel_other}", agent="cslow")
    cancelled = wait_for(
        lambda: [r for r in runs_of(stack, "pushy") if r["status"] == "cancelled"], timeout=30, what="a cancelled run"
    )
    assert stack.cli("workflows", "delete", "pushy").returncode == 0
    assert "the schedule's next time" in (cancelled[0]["error"] or "")
