"""Egress by allowlist on the kubernetes runtime, against the fake API server and kubelet: the
attempt's proxy Pod (the real tinyproxy, run by the fake kubelet) and its NetworkPolicy are made
and validated, the agent goes through the proxy, refusals are counted, and both are removed.

The fake enforces no NetworkPolicy (no cluster can run here): what the policies allow is checked
as objects here and in tests/integration/test_k8s_manifests.py, not as packets.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient, KubeConfig

from services.cli import vendor
from services.executor.runtimes import podegress, podspec
from services.executor.runtimes.kubernetes import KubernetesRuntime
from shared.config.settings import KubernetesRuntimeConfig
from shared.contract.messages import AgentSnapshot, TaskDispatched
from shared.telemetry import metrics
from tests.pages import pages

from .fakekube import FakeKube

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "flowyard/base:bookworm"
EGRESS = "flowyard/egress:test"
NS = "flowyard-agents"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Debian's tinyproxy, fetched as `flowyard agents build` fetches it for the image."""
    staged, problem = asyncio.run(vendor.stage(vendor.read(ROOT / "deploy/egress")))  # type: ignore[arg-type]
    assert problem is None, problem
    yield staged / "vendor"
    shutil.rmtree(staged, ignore_errors=True)


@pytest.fixture(scope="module")
def kube(tinyproxy: Path) -> Iterator[FakeKube]:
    fake = FakeKube(
        [IMAGE, EGRESS],
        commands={"/usr/local/bin/egress-proxy": ["sh", str(ROOT / "deploy/egress/egress-proxy")]},
        path=[str(tinyproxy)],
    ).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    with pages("127.0.0.1") as (ok, other):
        yield ok, other


@pytest.fixture
async def runtime(kube: FakeKube, tmp_path: Path) -> AsyncIterator[KubernetesRuntime]:
    config = KubeConfig.from_file(kube.kubeconfig(tmp_path / "kubeconfig"))
    rt = KubernetesRuntime(
        KubernetesRuntimeConfig(namespace=NS, start_timeout="20s"),
        max_output_bytes=65536,
        log_tail_bytes=4096,
        client=AsyncClient(config, namespace=NS),
        egress_image=EGRESS,
    )
    yield rt
    await rt.close()


PROBE = (
    "import json, os, sys, urllib.error, urllib.request\n"
    "ports = json.load(sys.stdin)\n"
    "def get(port):\n"
    "    try:\n"
    "        return json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=10).read())\n"
    "    except urllib.error.HTTPError as e:\n"
    "        return e.code\n"
    "print(json.dumps({'proxy': os.environ['HTTPS_PROXY'], 'ok': get(ports['ok']), 'other': get(ports['other'])}))\n"
)


def task(allow: list[str], run_id: str, image: str = IMAGE) -> TaskDispatched:
    agent = AgentSnapshot(name="prober", image=image, command=["python3", "-c", PROBE], egress_allow=allow)
    return TaskDispatched(run_id=run_id, workflow="wf", node_id="n", attempt=1, agent=agent, input={}, timeout_s=60)


async def test_the_agent_goes_through_its_own_proxy_and_only_to_its_list(
    runtime: KubernetesRuntime, kube: FakeKube, servers: tuple[int, int]
) -> None:
    ok, other = servers
    t = task([f"127.0.0.1:{ok}"], "r-egress")
    before = metrics.EGRESS_DENIED.labels("prober")._value.get()
    out = await runtime.run(t, stdin=json.dumps({"ok": ok, "other": other}).encode(), env={}, timeout_s=60)
    assert out.start_error is None and out.exit_code == 0, (out, out.stderr_tail)
    seen = json.loads(out.stdout)
    assert seen["ok"] == {"port": ok, "path": "/"} and seen["other"] == 403
    assert seen["proxy"].startswith("http://127.0.0.") and seen["proxy"].endswith(":3128")
    assert metrics.EGRESS_DENIED.labels("prober")._value.get() - before == 1
    assert not kube.invalid, kube.invalid
    name, proxy = podspec.pod_name(t.key), podegress.proxy_name(t)
    # Made in order: the policy and the proxy before the agent's Pod, which names the proxy's address.
    made = [c for c in kube.created if c.endswith((name, proxy))]
    assert made.index(f"pods/{proxy}") < made.index(f"pods/{name}")
    agent_pod = kube.objects["pods"][(NS, name)]
    assert agent_pod["metadata"]["labels"][f"{podspec.LABEL}/network"] == "allow"
    assert agent_pod["metadata"]["labels"][podegress.ATTEMPT] == name
    # The proxy and its policy are gone with the attempt; the policy let in this attempt's Pod only.
    assert (NS, proxy) not in kube.objects["pods"] and (NS, proxy) not in kube.objects["networkpolicies"]
    policy = podegress.proxy_policy(t, runtime.settings)
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {podegress.ATTEMPT: name}}}]


async def test_a_proxy_image_the_cluster_cannot_pull_fails_the_start_saying_so(tmp_path: Path, tinyproxy: Path) -> None:
    fake = FakeKube([IMAGE]).start()  # no egress image here
    try:
        config = KubeConfig.from_file(fake.kubeconfig(tmp_path / "kubeconfig"))
        rt = KubernetesRuntime(
            KubernetesRuntimeConfig(namespace=NS), max_output_bytes=1024, log_tail_bytes=1024,
            client=AsyncClient(config, namespace=NS), egress_image="flowyard/egress:nowhere",
        )  # fmt: skip
        try:
            out = await rt.run(task(["example.org:443"], "r-egress-nopull"), stdin=b"{}", env={}, timeout_s=30)
        finally:
            await rt.close()
        assert (
            out.start_error is not None and "flowyard/egress:nowhere" in out.start_error and "pulled" in out.start_error
        )
        assert not out.start_retryable
        assert not fake.objects["pods"] and not fake.objects["networkpolicies"]
    finally:
        fake.stop()
