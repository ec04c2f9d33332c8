"""Shared fixtures: tiers by folder, a real nats-server per session, and skips that fail in CI.

Set FLOWYARD_REQUIRE_SERVERS=1 (``.ci/run`` does) and a missing nats-server or Docker daemon is
a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer, find_binary
from shared.config.settings import TelemetryConfig
from shared.contract.errors import ConfigurationError
from shared.telemetry.tracing import configure_tracing

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("FLOWYARD_REQUIRE_SERVERS") == "1"
# Engine tests use process agents (fast, no images); Docker tests ask for docker explicitly. Set
# here so that services started as child processes inherit it.
os.environ["FLOWYARD_EXECUTOR_RUNTIME"] = "process"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in ("unit", "integration", "e2e", "chaos", "browser"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def missing(what: str) -> None:
    """Skip on a laptop; fail in CI, where every server must be there."""
    if REQUIRE:
        pytest.fail(f"{what} (FLOWYARD_REQUIRE_SERVERS=1 makes this a failure)")
    pytest.skip(what)


@pytest.fixture(scope="session", autouse=True)
def tracing() -> None:
    """As every service does at start-up: spans are real, so trace context flows in headers."""
    configure_tracing(TelemetryConfig(), "tests")


@pytest.fixture(scope="session")
def nats_binary() -> str:
    try:
        return find_binary()
    except ConfigurationError as exc:
        missing(str(exc))
        raise


@pytest.fixture(scope="session")
def nats_server(nats_binary: str) -> Iterator[NatsServer]:
    store = Path(tempfile.mkdtemp(prefix="fy-test-nats-"))
    server = NatsServer(store).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def fresh_nats(nats_binary: str, tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that restart or break it."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def flowyard_cmd() -> list[str]:
    return [sys.executable, "-m", "services.cli"]


@pytest.fixture(scope="session")
def docker_available() -> bool:
    if shutil.which("docker") is None:
        missing("docker CLI not installed")
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        missing("Docker daemon not reachable")
    return True


BASE_IMAGE = "flowyard/base:bookworm"


@pytest.fixture(scope="session")
def base_image(docker_available: bool) -> str:
    """The offline base image (debootstrap + docker import); built once, reused after."""
    done = subprocess.run(
        [str(ROOT / "deploy/base-image/build.sh"), BASE_IMAGE], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    return BASE_IMAGE


@pytest.fixture(scope="session")
def agent_images(base_image: str, service_image: str) -> None:
    """Every built-in agent's image, through `flowyard agents build` (reuses what is up to date);
    the coding CLIs' build on the service image, so that comes first."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "agents", "build"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def service_image(base_image: str) -> str:
    """flowyard/flowyard:<version>, through `flowyard images build` (the agents' images aside)."""
    from shared.telemetry.metrics import VERSION

    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "images", "build", "--no-agents"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tag = f"flowyard/flowyard:{VERSION}"
    assert done.returncode == 0 and f"{tag}: built" in done.stdout, done.stdout + done.stderr
    return tag
