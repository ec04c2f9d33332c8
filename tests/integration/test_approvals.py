"""Approvals across separate processes: approve, reject, expire, N of M, who may decide, restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import Stack

GATES = str(Path(__file__).parent / "workflows" / "gates.yaml")


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("approvals")
    config = workdir / "flowyard.yaml"
    config.write_text("approver:\n  groups:\n    sre: [sam, sue]\n")
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir, FLOWYARD_CONFIG=str(config))
    try:
        for name in ("planner", "scheduler", "executor", "approver"):
            s.start(name)
        yield s
    finally:
        s.stop_all()
        server.stop()


def start(stack: Stack, workflow: str, user: str = "carol") -> subprocess.Popen[str]:
    return stack.cli_background("run", GATES, "--workflow", workflow, "--as", user, "--json")


def pending(stack: Stack, workflow: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = json.loads(stack.cli("approvals", "list", "--json").stdout)
        mine = [a for a in listed if a["workflow"] == workflow and a["status"] == "pending"]
        if mine:
            return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"no pending approval for {workflow}")


def finish(run: subprocess.Popen[str]) -> tuple[int, dict]:
    out, _ = run.communicate(timeout=60)
    return run.returncode, json.loads(out)


def test_approve_after_self_approval_is_refused(stack: Stack) -> None:
    run = start(stack, "gate-default", user="carol")
    a = pending(stack, "gate-default")
    assert set(a) >= {"id", "run_id", "node", "workflow", "status", "approvers", "approvals", "expires_at"}
    assert a["node"] == "deploy" and a["requested_by"] == "carol" and a["approvers"] == []
    assert a["inputs"] == {"version": "1.2.3", "api_token": "[masked]"}
    assert "risk: approval_required" in a["reason"]
    own = stack.cli("approvals", "approve", a["id"], "--as", "carol")
    assert own.returncode == 1 and "carol started this run and may not approve" in own.stderr
    ok = stack.cli("approvals", "approve", a["id"], "--as", "dave", "--comment", "looks right")
    assert ok.returncode == 0, ok.stderr
    code, result = finish(run)
    assert code == 0 and result["nodes"]["deploy"]["status"] == "succeeded"
    assert result["nodes"]["after"]["output"] == {"done": "1.2.3"}
    shown = json.loads(stack.cli("approvals", "show", a["id"], "--json").stdout)
    assert shown["status"] == "granted" and shown["approvals"][0]["user"] == "dave"
    assert shown["approvals"][0]["comment"] == "looks right" and shown["inputs_hash"].startswith("sha256:")
    late = stack.cli("approvals", "reject", a["id"], "--as", "dave", "--reason", "too late")
    assert late.returncode == 1 and "already granted" in late.stderr


def test_reject_fails_the_run_saying_who_and_why(stack: Stack) -> None:
    run = start(stack, "gate-default")
    a = pending(stack, "gate-default")
    no_reason = stack.cli("approvals", "reject", a["id"], "--as", "dave", "--reason", " ")
    assert no_reason.returncode == 1 and "needs a reason" in no_reason.stderr
    done = stack.cli("approvals", "reject", a["id"], "--as", "dave", "--reason", "wrong cluster")
    assert done.returncode == 0
    code, result = finish(run)
    assert code == 1 and result["status"] == "failed"
    assert result["nodes"]["deploy"]["status"] == "rejected"
    assert result["nodes"]["after"]["status"] == "skipped"
    assert result["error"] == "node 'deploy' was rejected: rejected by dave: wrong cluster"


def test_two_of_three_with_a_group_and_refusals(stack: Stack) -> None:
    run = start(stack, "gate-two")
    a = pending(stack, "gate-two")
    assert a["approvers"] == ["ann", "bob", "group:sre"] and a["min_approvals"] == 2
    stranger = stack.cli("approvals", "approve", a["id"], "--as", "mallory")
    assert stranger.returncode == 1 and "mallory may not decide" in stranger.stderr
    assert stack.cli("approvals", "approve", a["id"], "--as", "ann").returncode == 0
    assert json.loads(stack.cli("approvals", "show", a["id"], "--json").stdout)["status"] == "pending"
    twice = stack.cli("approvals", "approve", a["id"], "--as", "ann")
    assert twice.returncode == 1 and "already approved" in twice.stderr
    assert stack.cli("approvals", "approve", a["id"], "--as", "sam").returncode == 0  # group:sre
    code, result = finish(run)
    assert code == 0 and result["nodes"]["deploy"]["output"]["deployed"] == "2.0"
    unknown = stack.cli("approvals", "approve", "nope", "--as", "ann")
    assert unknown.returncode == 2 and "no approval 'nope'" in unknown.stderr


def test_expiry_rejects_and_survives_an_approver_restart(stack: Stack) -> None:
    t0 = time.monotonic()
    run = start(stack, "gate-expire")
    a = pending(stack, "gate-expire")
    stack.kill("approver", signal.SIGKILL)
    time.sleep(1)
    stack.start("approver")
    code, result = finish(run)
    elapsed = time.monotonic() - t0
    assert code == 1 and result["nodes"]["deploy"]["status"] == "rejected"
    assert "expired after 3s" in result["nodes"]["deploy"]["error"]
    assert elapsed < 3 + 6, f"the expiry fired late: {elapsed:.1f}s"
    refused = stack.cli("approvals", "approve", a["id"], "--as", "dave")
    assert refused.returncode == 1 and "already expired" in refused.stderr


def test_on_expiry_approve_runs_the_step(stack: Stack) -> None:
    code, result = finish(start(stack, "gate-auto"))
    assert code == 0 and result["nodes"]["deploy"]["status"] == "succeeded"


def test_scheduler_restarted_while_waiting_resumes_on_the_decision(stack: Stack) -> None:
    run = start(stack, "gate-default")
    a = pending(stack, "gate-default")
    stack.kill("scheduler", signal.SIGKILL)
    time.sleep(0.5)
    stack.start("scheduler")
    assert stack.cli("approvals", "approve", a["id"], "--as", "dave").returncode == 0
    code, result = finish(run)
    assert code == 0 and result["nodes"]["after"]["status"] == "succeeded"


def test_a_decision_after_the_run_ended_is_refused(stack: Stack) -> None:
    run = start(stack, "gate-default")
    a = pending(stack, "gate-default")
    assert a["id"] == f"{a['run_id']}.deploy"
    cancelled = stack.cli("runs", "cancel", a["run_id"], "--reason", "not today")
    assert cancelled.returncode == 0, cancelled.stderr
    code, result = finish(run)
    assert code == 1 and result["status"] == "cancelled"
    for _ in range(100):
        shown = json.loads(stack.cli("approvals", "show", a["id"], "--json").stdout)
        if shown["status"] == "closed":
            break
        time.sleep(0.1)
    assert shown["status"] == "closed" and "the run cancelled" in shown["summary"]
    late = stack.cli("approvals", "approve", a["id"], "--as", "dave")
    assert late.returncode == 1 and "already closed" in late.stderr
    listed = json.loads(stack.cli("approvals", "list", "--json").stdout)
    assert any(x["id"] == a["id"] and x["status"] == "closed" for x in listed)
    waiting = json.loads(stack.cli("approvals", "list", "--pending", "--json").stdout)
    assert all(x["status"] == "pending" for x in waiting)
