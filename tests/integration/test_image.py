"""The service image: built offline by `flowyard images build`, run as its own non-root user on a
read-only root with every capability dropped; the bootstrap step and the services as containers,
each on its own NATS user, run a workflow the CLI starts from the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer
from shared.telemetry.metrics import VERSION
from tests.chaos.harness import WORKFLOWS

from .stack import ROOT
from .test_nats_users import PASSWORDS, as_user, nats_config

pytestmark = pytest.mark.docker
IMAGE = f"flowyard/flowyard:{VERSION}"


def docker_run(name: str, url: str, user: str, *args: str, detach: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**as_user(user), **PASSWORDS, "FLOWYARD_NATS_URL": url, "FLOWYARD_HTTP_PORT": "0"}
    if user == "executor":
        env["FLOWYARD_EXECUTOR_RUNTIME"] = "process"  # agents as processes inside the executor's container
    flags = [f"--env={k}={v}" for k, v in env.items()]
    return subprocess.run(
        [
            "docker",
            "run",
            *(["-d"] if detach else ["--rm"]),
            f"--name={name}",
            "--network=host",
            "--read-only",
            "--tmpfs=/tmp",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            *flags,
            IMAGE,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_the_image_runs_every_service_locked_down_on_its_own_user(
    service_image: str, nats_binary: str, tmp_path: Path, containers: list[str]
) -> None:
    image = service_image
    inspect = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True).stdout)[
        0
    ]
    assert inspect["Config"]["User"] == "10001:10001"
    assert inspect["Config"]["Entrypoint"] == ["python3", "-m", "services.cli"]
    server = NatsServer(tmp_path / "nats", config=nats_config(tmp_path)).start()
    tag = uuid.uuid4().hex[:8]
    try:
        done = docker_run(f"fy-boot-{tag}", server.url, "admin", "nats-bootstrap", detach=False)
        assert done.returncode == 0, done.stderr
        for service in ("planner", "scheduler", "executor"):
            name = f"fy-{service}-{tag}"
            containers.append(name)
            started = docker_run(name, server.url, service, "serve", service)
            assert started.returncode == 0, started.stderr
        for name in containers:
            # Wait on the service's own word that it is up (or its exit).
            logs = subprocess.Popen(
                ["docker", "logs", "-f", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert logs.stdout is not None
            for line in logs.stdout:
                if "service started" in line:
                    break
            logs.kill()
            state = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True).stdout)[0]
            assert state["State"]["Running"], (name, state["State"])
        env = {
            **os.environ,
            **PASSWORDS,
            **as_user("cli"),
            "FLOWYARD_NATS_URL": server.url,
            "FLOWYARD_EXECUTOR_RUNTIME": "process",
        }
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "run",
                str(WORKFLOWS),
                "--workflow",
                "chaos-diamond",
                "-i",
                "dir=/tmp",
                "--json",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["outputs"] == {"total": 8}
        violations = [x for x in server.log_path.read_text().splitlines() if "Permissions Violation" in x]
        assert not violations, violations[:5]
    finally:
        server.stop()
