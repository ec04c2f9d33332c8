"""The services as separate processes over a real nats-server: they share nothing but NATS."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer

from .stack import ROOT, Stack

WORKFLOWS = Path(__file__).parent / "workflows"


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir)
    try:
        yield s.start_all()
    finally:
        s.stop_all()
        server.stop()


def test_diamond_passes_data_between_nodes_across_processes(stack: Stack) -> None:
    code, result, err = stack.run_json(
        str(ROOT / "examples/incident-digest.yaml"), "-i", "service=payments", "-i", "threshold_ms=100"
    )
    assert code == 0, err
    assert result["status"] == "succeeded" and result["workflow"] == "incident-digest"
    assert set(result["nodes"]) == {"parse", "errors", "latency", "top", "digest"}
    assert all(
        n["status"] == "succeeded" and n["attempts"] == 1 and n["error"] is None for n in result["nodes"].values()
    )
    assert result["nodes"]["latency"]["output"] == {"service": "payments", "p50_ms": 610, "p95_ms": 610, "slow": 1}
    assert result["outputs"]["errors_by_service"] == {"checkout": 2, "payments": 1}
    assert result["outputs"]["severity"] == "high"
    assert result["outputs"]["summary"].startswith("checkout latency alert: 3 errors in 8 lines; payments p95 610 ms")


def test_a_failing_node_fails_the_run_and_skips_its_dependants(stack: Stack) -> None:
    code, result, _ = stack.run_json(str(WORKFLOWS / "failing.yaml"))
    assert code == 1
    nodes = result["nodes"]
    assert result["status"] == "failed"
    assert nodes["a"]["status"] == "succeeded" and nodes["d"]["status"] == "succeeded"
    assert nodes["d"]["output"] == {"from_a": 1}
    assert nodes["b"]["status"] == "failed" and nodes["b"]["attempts"] == 1
    assert nodes["b"]["error"] == "exited with code 3: connecting to db | FATAL: db unreachable"
    assert nodes["c"]["status"] == "skipped" and nodes["c"]["attempts"] == 0
    assert "node 'b' failed" in result["error"]


def test_an_agent_that_prints_garbage(stack: Stack) -> None:
    code, result, _ = stack.run_json(str(WORKFLOWS / "garbage.yaml"))
    assert code == 1
    error = result["nodes"]["talk"]["error"]
    assert "printed output that is not JSON" in error and "Hello! Here is your result: 42" in error


def test_an_agent_that_hangs_past_its_timeout_is_killed(stack: Stack) -> None:
    code, result, _ = stack.run_json(str(WORKFLOWS / "hang.yaml"))
    assert code == 1
    assert result["nodes"]["wait"]["status"] == "failed"
    assert result["nodes"]["wait"]["error"] == "timed out after 1s and was killed"
    assert result["nodes"]["after"]["status"] == "skipped"


def test_human_output_shows_progress_and_outputs(stack: Stack) -> None:
    done = stack.cli("run", str(ROOT / "examples/incident-digest.yaml"))
    assert done.returncode == 0, done.stderr
    assert "✓ digest" in done.stdout and "run succeeded" in done.stdout
    assert "outputs:\n  summary: checkout latency alert" in done.stdout


def test_invalid_input_exits_2_naming_file_node_and_field(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (WORKFLOWS / "failing.yaml").read_text().replace("needs: [b]}", "needs: [bb]}")
    bad.write_text(text)
    done = stack.cli("run", str(bad), "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert f"{bad}:" in done.stderr and "node 'c'" in done.stderr and "unknown node 'bb'" in done.stderr
    done = stack.cli("run", str(ROOT / "examples/incident-digest.yaml"), "-i", "threshold_ms=fast")
    assert done.returncode == 2 and "input 'threshold_ms' must be of type integer" in done.stderr


def test_runs_list_and_show(stack: Stack) -> None:
    code, result, _ = stack.run_json(str(WORKFLOWS / "failing.yaml"))
    assert code == 1
    listed = stack.cli("runs", "list", "--json")
    assert listed.returncode == 0
    runs = json.loads(listed.stdout)
    assert result["run_id"] in [r["run_id"] for r in runs]
    shown = stack.cli("runs", "show", result["run_id"], "--json")
    assert json.loads(shown.stdout)["nodes"]["b"]["status"] == "failed"
    human = stack.cli("runs", "show", result["run_id"])
    assert "✗ b" in human.stdout and "attempt 1: exited with code 3" in human.stdout
    table = stack.cli("runs", "list")
    assert result["run_id"] in table.stdout and "failing" in table.stdout
    missing = stack.cli("runs", "show", "rnope")
    assert missing.returncode == 2 and "no run 'rnope'" in missing.stderr


def test_health_readiness_and_metrics(stack: Stack) -> None:
    for name in ("planner", "scheduler", "executor"):
        port = stack.http_port(name)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:
            assert json.load(r)["status"] == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
            assert json.load(r) == {"status": "ready", "services": {name: "ok"}}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
            text = r.read().decode()
            assert f'flowyard_service_up{{service="{name}"}} 1.0' in text


def test_scheduler_killed_mid_run_restarts_and_the_run_finishes_once(stack: Stack, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    run = stack.cli_background("run", str(WORKFLOWS / "slow-diamond.yaml"), "-i", f"dir={markers}", "--json")
    # Kill once a is done and b, c, d are running: their results arrive while no scheduler lives.
    for _ in range(200):
        if all((markers / n).exists() for n in "bcd"):
            break
        time.sleep(0.05)
    assert not (markers / "e").exists()
    stack.kill("scheduler")
    time.sleep(1.5)
    stack.start("scheduler")
    out, err = run.communicate(timeout=90)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded" and result["outputs"] == {"total": 7}
    for node in "abcde":
        assert (markers / node).read_text() == "1\n", f"node {node} ran more than once"
        assert result["nodes"][node]["attempts"] == 1


def test_doctor_checks_nats_agents_and_secrets(stack: Stack) -> None:
    stack.run_json(str(ROOT / "examples/incident-digest.yaml"))
    done = stack.cli("doctor")
    assert done.returncode == 0, done.stdout
    assert "ok   NATS reachable" in done.stdout and "registered agent(s)" in done.stdout
    import subprocess
    import sys

    env = {**stack.env, "FLOWYARD_NATS_URL": "nats://127.0.0.1:1", "FLOWYARD_NATS_CONNECT_TIMEOUT": "1s"}
    gone = subprocess.run(
        [sys.executable, "-m", "services.cli", "doctor"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert gone.returncode == 1 and "FIX  NATS reachable at nats://127.0.0.1:1" in gone.stdout
    assert "cannot reach NATS" in gone.stdout
