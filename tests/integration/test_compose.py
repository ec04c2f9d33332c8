"""deploy/compose.yaml with Debian's docker-compose: build the images, `up`, run a workflow of
container agents through the gateway, `down -v`, and nothing of the stack is left running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.telemetry.metrics import VERSION
from tests.chaos.harness import free_port

from .stack import ROOT

pytestmark = pytest.mark.docker
COMPOSE = ROOT / "deploy" / "compose.yaml"
TOKEN = "compose-ops-token-0123456789"
HELLO = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: compose-hello}
spec:
  image: flowyard/base:bookworm
  command: [python3, -c, "import json, sys; n = json.load(sys.stdin)['n']; print(json.dumps({'twice': 2 * n}))"]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: compose-hello}
spec:
  inputs: {n: {type: integer}}
  nodes:
    - {id: a, agent: compose-hello, with: {n: "{{ inputs.n }}"}}
    - {id: b, agent: compose-hello, needs: [a], with: {n: "{{ nodes.a.output.twice }}"}}
  outputs: {result: "{{ nodes.b.output.twice }}"}
"""


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("docker-compose is not installed (apt-get install docker-compose; .ci/run does)")


def api(base: str, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
    request = urllib.request.Request(
        base + path, data=body, method=method, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_compose_stack_runs_a_workflow_and_leaves_nothing_behind(service_image: str, base_image: str) -> None:
    assert f"flowyard/flowyard:{VERSION}" in COMPOSE.read_text(), "compose.yaml's default image is not this version"
    project = f"fy{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        **{
            f"NATS_PASSWORD_{u}": f"compose-{u.lower()}-secret"
            for u in ("PLANNER", "SCHEDULER", "EXECUTOR", "APPROVER", "NOTIFIER", "GATEWAY", "CLI", "ADMIN")
        },
        "FLOWYARD_OPS_TOKEN": TOKEN,
        "FLOWYARD_IMAGE": service_image,
        "NATS_IMAGE": service_image,
        "DOCKER_GID": str(Path("/var/run/docker.sock").stat().st_gid),
        "FLOWYARD_GATEWAY_PORT": str(port),
        "NATS_PORT": str(free_port()),
    }
    compose = [*compose_cmd(), "-f", str(COMPOSE), "-p", project]
    up = subprocess.run([*compose, "up", "-d"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                api(base, "GET", "/v1/workflows")
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline, subprocess.run(
                    [*compose, "logs"], env=env, capture_output=True, text=True
                ).stdout[-5000:]
                time.sleep(0.5)
        applied = api(base, "POST", "/v1/workflows", HELLO.encode(), "application/yaml")
        assert applied["name"] == "compose-hello"
        run_id = api(base, "POST", "/v1/runs", json.dumps({"workflow": "compose-hello", "inputs": {"n": 5}}).encode())[
            "run_id"
        ]
        while (view := api(base, "GET", f"/v1/runs/{run_id}"))["status"] in ("pending", "running"):
            assert time.monotonic() < deadline + 120, view
            time.sleep(0.2)
        assert view["status"] == "succeeded", (
            view,
            subprocess.run([*compose, "logs", "executor"], env=env, capture_output=True, text=True).stdout[-4000:],
        )
        assert view["outputs"] == {"result": 20}
        ps = subprocess.run(
            [*compose, "ps", "--services", "--filter", "status=running"], env=env, capture_output=True, text=True
        )
        assert set(ps.stdout.split()) >= {"nats", "planner", "scheduler", "executor", "approver", "notifier", "gateway"}
    finally:
        down = subprocess.run(
            [*compose, "down", "-v", "--remove-orphans"], env=env, capture_output=True, text=True, timeout=300
        )
    assert down.returncode == 0, down.stderr
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert not left, f"containers of the stack left after down: {left}"
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"name={project}_"], capture_output=True, text=True
    ).stdout.split()
    assert not volumes, volumes
