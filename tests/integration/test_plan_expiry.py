"""A proposed plan nobody decides on expires and never runs; templates alone, with no model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import Stack
from .test_planning import CATALOGUE, waited


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("plan-expiry")
    config = workdir / "flowyard.yaml"
    config.write_text(
        "planner:\n  templates: [{workflow: restart-service, match: restart}]\n"
        "  approval: {expires_in: 1s, min_approvals: 2}\n"
    )
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir, FLOWYARD_CONFIG=str(config), FLOWYARD_EXECUTOR_RUNTIME="process")
    try:
        for name in ("planner", "scheduler", "executor", "approver"):
            s.start(name)
        catalogue = workdir / "catalogue.yaml"
        catalogue.write_text(CATALOGUE)
        assert s.cli("workflows", "apply", str(catalogue)).returncode == 0
        yield s
    finally:
        s.stop_all()
        server.stop()


def show(stack: Stack, plan_id: str) -> dict:
    return json.loads(stack.cli("plans", "show", plan_id, "--json").stdout)


def test_without_a_model_a_matching_template_is_proposed_and_expires_undecided(stack: Stack, tmp_path: Path) -> None:
    done = stack.cli("plan", "restart checkout", "--run", "--as", "ann", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["status"] == "proposed" and plan["fallback"] == "restart-service" and plan["rounds"] == []
    assert "no model is configured for planning (planner.llm)" in plan["error"]
    # The approver stores the request the planner sent: read it once it is there.
    approval = waited(
        "the plan's approval request",
        lambda: json.loads(stack.cli("approvals", "show", plan["approval_id"], "--json").stdout or "null"),
    )
    assert approval["min_approvals"] == 2 and approval["on_expiry"] == "reject" and approval["kind"] == "plan"
    deadline = time.monotonic() + 60
    while (now := show(stack, plan["id"]))["status"] == "proposed":
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert now["status"] == "expired" and now["run_id"] is None and now["workflow_version"] is None, now
    late = stack.cli("plans", "approve", plan["id"], "--as", "bob")
    assert late.returncode == 1 and "expired" in late.stderr
    runs = json.loads(stack.cli("runs", "list", "--workflow", "restart-service", "--json").stdout)
    assert runs == []


def test_without_a_model_or_a_matching_template_the_plan_fails_saying_so(stack: Stack) -> None:
    done = stack.cli("plan", "rotate the certificates", "--json")
    assert done.returncode == 1
    plan = json.loads(done.stdout)
    assert plan["status"] == "failed"
    assert "no model is configured" in plan["error"] and "no template in planner.templates matches" in plan["error"]
