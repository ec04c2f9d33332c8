"""The workflow registry from the CLI, and `flowyard up` with its gateway: what an operator types."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..cli import ROOT, clean_env, flowyard

API_YAML = ROOT / "tests/integration/workflows/api.yaml"


@pytest.fixture
def up(nats_binary: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`flowyard up` as a user starts it; what its banner says."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env({"FLOWYARD_EXECUTOR_RUNTIME": "process", "FLOWYARD_GATEWAY_PORT": "0"}),
    )
    banner: dict[str, str] = {"data": str(tmp_path / "data")}
    try:
        assert proc.stdout is not None
        while "token" not in banner:
            line = proc.stdout.readline()
            assert line, "flowyard up ended before it was up"
            if "export FLOWYARD_NATS_URL=" in line:
                banner["nats"] = line.strip().split("=", 1)[1]
            elif "gateway (REST API)" in line:
                banner["gateway"] = line.split("gateway (REST API)")[1].split()[0]
            elif "export FLOWYARD_TOKEN=" in line:
                banner["token"] = line.strip().split("=", 1)[1]
        yield banner
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_up_prints_the_gateway_and_a_0600_admin_token(up: dict[str, str]) -> None:
    token_file = Path(up["data"]) / "gateway-admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == up["token"]
    req = urllib.request.Request(f"{up['gateway']}/v1/workflows", headers={"Authorization": f"Bearer {up['token']}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.status == 200 and json.loads(response.read()) == []


def test_workflows_apply_list_show_delete_and_run_by_name(up: dict[str, str], tmp_path: Path) -> None:
    env = {"FLOWYARD_NATS_URL": up["nats"]}
    applied = flowyard("workflows", "apply", str(API_YAML), "--as", "carol", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "hello version 1" in applied.stdout and "gated version 1" in applied.stdout
    again = flowyard("workflows", "apply", str(API_YAML), env=env)
    assert again.returncode == 0 and "hello version 1 (unchanged" in again.stdout
    changed = tmp_path / "hello.yaml"
    changed.write_text(API_YAML.read_text().replace("Greets someone", "Greets anyone"))
    assert "hello version 2" in flowyard("workflows", "apply", str(changed), env=env).stdout

    listed = json.loads(flowyard("workflows", "list", "--json", env=env).stdout)
    hello = next(w for w in listed if w["name"] == "hello")
    assert hello["version"] == 2 and hello["description"] == "Greets anyone"
    shown = json.loads(flowyard("workflows", "show", "hello", "--version", "1", "--json", env=env).stdout)
    assert shown["version"] == 1 and shown["applied_by"] == "carol" and "Greets someone" in shown["source"]
    text = flowyard("workflows", "show", "hello", env=env)
    assert text.returncode == 0 and "Greets anyone" in text.stdout
    missing = flowyard("workflows", "show", "hello", "--version", "9", env=env)
    assert missing.returncode == 2 and "no version 9" in missing.stderr

    ran = flowyard("run", "hello", "-i", "who=dee", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["workflow_version"] == 2 and result["outputs"] == {"greeting": "hello dee"}
    assert result["trigger"] == {"type": "manual"} and result["requested_by"]
    from_file = json.loads(
        flowyard("run", str(API_YAML), "--workflow", "hello", "-i", "who=x", "--json", env=env).stdout
    )
    assert from_file["workflow_version"] is None

    bad_inputs = flowyard("run", "hello", "-i", "whom=dee", env=env)
    assert bad_inputs.returncode == 2 and "'whom' is not declared" in bad_inputs.stderr
    unknown = flowyard("run", "nosuch", env=env)
    assert unknown.returncode == 2 and "no workflow 'nosuch' is registered" in unknown.stderr

    deleted = flowyard("workflows", "delete", "hello", env=env)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    assert flowyard("workflows", "delete", "hello", env=env).returncode == 2
    assert flowyard("run", "hello", env=env).returncode == 2

    req = urllib.request.Request(f"{up['gateway']}/v1/audit", headers={"Authorization": f"Bearer {up['token']}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        entries = json.loads(response.read())
    assert {(e["action"], e["via"]) for e in entries} >= {("apply", "cli"), ("start", "cli"), ("delete", "cli")}
    assert any(e["user"] == "carol" and e["action"] == "apply" for e in entries)


def test_apply_refuses_what_validate_refuses_with_the_same_message(up: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: bad}\nspec:\n  nodes:\n"
        "    - {id: one, agent: shell, with: {command: ls}, retyr: {attempts: 2}}\n"
    )
    validated = flowyard("validate", str(bad))
    applied = flowyard("workflows", "apply", str(bad), env={"FLOWYARD_NATS_URL": up["nats"]})
    assert validated.returncode == applied.returncode == 2
    assert applied.stderr == validated.stderr and "retyr" in applied.stderr


def test_run_name_without_a_stack_says_how(tmp_path: Path) -> None:
    done = flowyard("run", "hello", env={"HOME": str(tmp_path)})
    assert done.returncode == 2 and "FLOWYARD_NATS_URL" in done.stderr
    assert "Traceback" not in done.stderr and os.path.exists(tmp_path)
