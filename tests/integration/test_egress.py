"""Egress by allowlist on a real Docker daemon: the agent reaches exactly the listed host:port
pairs, through the attempt's own proxy, and nothing else; refusals are logged and counted."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.executor import handlers
from services.executor.runtimes.docker import DockerRuntime
from services.executor.runtimes.dockeregress import DockerEgress
from shared.contract.messages import AgentSnapshot, TaskDispatched
from shared.telemetry import metrics
from shared.telemetry.metrics import VERSION
from tests.fakellm import docker_bridge_address
from tests.integration.dockerclean import remove_mine
from tests.pages import pages

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
EGRESS = f"flowyard/egress:{VERSION}"


@pytest.fixture(scope="module")
def egress_image(base_image: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "agents", "build", "shell"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return EGRESS


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, int, int]]:
    """Two HTTP servers on the bridge's address: (address, allowed port, another port)."""
    host = docker_bridge_address()
    with pages(host) as (ok, other):
        yield host, ok, other


@pytest.fixture
async def runtime(egress_image: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(max_output_bytes=1024 * 1024, log_tail_bytes=4096, egress_image=egress_image)
    yield rt
    await remove_mine(rt)
    await rt.close()


PROBE = """
import json, os, socket, sys, urllib.error, urllib.request
where = json.load(sys.stdin)
host, ok, other = where["host"], where["ok"], where["other"]
seen = {"proxy": os.environ.get("HTTPS_PROXY")}
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return type(e).__name__ + ": " + str(e)[:120]
seen["allowed"] = get(f"http://{host}:{ok}/hello")
seen["other_port"] = get(f"http://{host}:{other}/hello")
seen["https_elsewhere"] = get("https://example.org/")
try:  # around the proxy: the internal network has no way out
    socket.create_connection((host, ok), timeout=3).close()
    seen["direct"] = "connected"
except OSError as e:
    seen["direct"] = type(e).__name__
print(json.dumps(seen))
"""


def task(allow: list[str], run_id: str) -> TaskDispatched:
    agent = AgentSnapshot(
        name="prober", image="flowyard/base:bookworm", command=["python3", "-c", textwrap.dedent(PROBE)],
        egress_allow=allow,
    )  # fmt: skip
    return TaskDispatched(run_id=run_id, workflow="w", node_id="n", attempt=1, agent=agent, input={}, timeout_s=60)


def denied(agent: str) -> float:
    return metrics.EGRESS_DENIED.labels(agent)._value.get()


async def test_an_allowlisted_agent_reaches_its_hosts_and_nothing_else(
    runtime: DockerRuntime, servers: tuple[str, int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    host, ok, other = servers
    t = task([f"{host}:{ok}"], "rdock-egress1")
    before = denied("prober")
    stdin = json.dumps({"host": host, "ok": ok, "other": other}).encode()
    outcome = await runtime.run(t, stdin=stdin, env={}, timeout_s=60)
    verdict = handlers.judge(t, outcome, log_tail_bytes=4096)
    assert verdict.ok, verdict.error
    seen = verdict.output
    assert seen["proxy"] == "http://egress-proxy:3128"
    assert seen["allowed"] == {"port": ok, "path": "/hello"}
    assert seen["other_port"] == 403  # the same host on a port not listed
    assert isinstance(seen["https_elsewhere"], str) and "403" in seen["https_elsewhere"]  # CONNECT refused
    assert seen["direct"] != "connected"
    # Every refusal is counted for the agent and logged with the host.
    assert denied("prober") - before == 2
    # The attempt's proxy and network are gone with it (removed while the outcome is reported).
    await runtime.egress.drain()
    net, proxy = DockerEgress.names("fy-rdock-egress1_n_1")
    assert not [c for c in await runtime.docker.containers.list(all=True) if f"/{proxy}" in c._container["Names"]]
    assert not await runtime.docker.networks.list(filters={"name": [net]})


async def test_an_unknown_proxy_image_is_a_clear_start_error(base_image: str) -> None:
    rt = DockerRuntime(max_output_bytes=1024, log_tail_bytes=1024, egress_image="flowyard/egress:nowhere")
    try:
        outcome = await rt.run(task(["example.org:443"], "rdock-egress2"), stdin=b"{}", env={}, timeout_s=30)
        assert outcome.start_error is not None and "flowyard/egress:nowhere" in outcome.start_error
        assert "flowyard agents build" in outcome.start_error and not outcome.start_retryable
        await rt.egress.drain()
        assert not await rt.docker.networks.list(filters={"name": ["fy-rdock-egress2_n_1-net"]})
    finally:
        await remove_mine(rt)
        await rt.close()


async def test_doctor_says_when_the_egress_proxy_image_is_missing(egress_image: str) -> None:
    import msgspec

    from services.cli import doctor
    from shared.config.settings import Config
    from shared.workflow.builtin import builtin_agents

    seen: list[tuple[bool, str, str]] = []

    def report(ok: bool, what: str, fix: str = "") -> None:
        seen.append((ok, what, fix))

    agents = list(builtin_agents().values())
    config = Config()
    await doctor._docker_checks(config, agents, report)
    assert (True, f"egress proxy: image {egress_image} present", "") in seen
    seen.clear()
    missing = msgspec.structs.replace(
        config, executor=msgspec.structs.replace(config.executor, egress_image="fy/none:0")
    )
    await doctor._docker_checks(missing, agents, report)
    (line,) = [s for s in seen if s[1].startswith("egress proxy")]
    assert line[0] is False and "flowyard agents build" in line[2] and "claude-code" in line[2]
