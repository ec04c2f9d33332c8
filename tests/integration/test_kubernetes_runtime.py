"""The kubernetes runtime against a Kubernetes API faked at the HTTP boundary (tests/integration/fakekube.py).

Every Pod and Secret the runtime makes is validated strictly by the fake with kubernetes-validate.
Not proven on a live cluster (none can run here): docs/deploy.md says so.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from lightkube import AsyncClient, KubeConfig

from services.executor.runtimes import podspec
from services.executor.runtimes.base import WorkspaceCopy
from services.executor.runtimes.kubernetes import KubernetesRuntime
from shared.config.settings import KubernetesRuntimeConfig
from shared.contract.messages import AgentResources, AgentSnapshot, TaskDispatched
from shared.state import workspace as ws

from .fakekube import FakeKube

IMAGE = "flowyard/base:bookworm"
NS = "flowyard-agents"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def kube() -> Iterator[FakeKube]:
    fake = FakeKube([IMAGE]).start()
    yield fake
    fake.stop()


@pytest.fixture
async def runtime(kube: FakeKube, tmp_path: Path) -> AsyncIterator[KubernetesRuntime]:
    rt = make(kube, tmp_path)
    yield rt
    await rt.close()


def make(kube: FakeKube, tmp_path: Path, **cfg: object) -> KubernetesRuntime:
    config = KubeConfig.from_file(kube.kubeconfig(tmp_path / "kubeconfig"))
    settings = KubernetesRuntimeConfig(namespace=NS, **cfg)  # type: ignore[arg-type]
    return KubernetesRuntime(
        settings, max_output_bytes=65536, log_tail_bytes=4096, client=AsyncClient(config, namespace=NS)
    )


def task(script: str, *, run_id: str = "r1", node: str = "n", attempt: int = 1, **agent: object) -> TaskDispatched:
    return TaskDispatched(
        run_id=run_id,
        workflow="wf",
        node_id=node,
        attempt=attempt,
        agent=AgentSnapshot(name="a", image=IMAGE, command=["python3", "-c", script], **agent),  # type: ignore[arg-type]
        input={"x": 1},
    )


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for something another process does (a file written, a container started)."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


ECHO = (
    "import json,sys; d=json.load(sys.stdin); print('working on', d, file=sys.stderr, flush=True); "
    "print(json.dumps({'got': d, 'token': __import__('os').environ.get('TOKEN')}))"
)


async def test_an_attempt_is_a_validated_pod_with_its_input_and_secrets_in_a_secret(
    runtime: KubernetesRuntime, kube: FakeKube
) -> None:
    logs: list[bytes] = []
    t = task(ECHO, run_id="r-simple")
    out = await runtime.run(t, stdin=b'{"x": 1}', env={"TOKEN": "s3cret"}, timeout_s=30, on_log=logs.append)
    assert out.start_error is None and out.exit_code == 0, out
    assert json.loads(out.stdout) == {"got": {"x": 1}, "token": "s3cret"}
    assert b"working on" in out.stderr_tail and b"working on" in b"".join(logs)
    assert not kube.invalid
    name = podspec.pod_name(t.key)
    pod = kube.objects["pods"][(NS, name)]
    text = json.dumps(pod)
    # Neither the input nor the secret is in the Pod: only the Secret holds them.
    assert "s3cret" not in text and '"x": 1' not in text
    agent = pod["spec"]["containers"][0]
    sc = agent["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    )
    assert sc["runAsNonRoot"] and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False and pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] >= 30
    labels = pod["metadata"]["labels"]
    assert labels["flowyard.io/run"] == "r-simple" and labels["flowyard.io/node"] == "n"
    assert labels["flowyard.io/attempt"] == "1" and labels["flowyard.io/workflow"] == "wf"
    assert labels["flowyard.io/network"] == "none"
    assert agent["resources"]["limits"] == agent["resources"]["requests"]
    secret = kube.objects["secrets"][(NS, name)]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert base64.b64decode(secret["data"]["env.TOKEN"]) == b"s3cret"
    # The run has ended: its Pod goes, and the Secret with it.
    assert await runtime.forget_run("r-simple") == 1
    assert (NS, name) not in kube.objects["pods"] and (NS, name) not in kube.objects["secrets"]


async def test_stderr_is_streamed_even_when_the_pod_starts_late(runtime: KubernetesRuntime, kube: FakeKube) -> None:
    """The log is asked for before the container runs (a real cluster schedules and pulls first):
    the runtime keeps asking, and passes every line on once, in order."""
    kube.start_delay = 1.5
    try:
        heard: list[bytes] = []
        script = "import sys; [print('line', i, file=sys.stderr, flush=True) for i in range(5)]; print('{}')"
        out = await runtime.run(task(script, run_id="r-late"), stdin=b"{}", env={}, timeout_s=30, on_log=heard.append)
    finally:
        kube.start_delay = 0.0
    assert out.exit_code == 0
    assert b"".join(heard) == b"".join(f"line {i}\n".encode() for i in range(5))


async def test_a_failing_agent_reports_its_exit_and_stderr(runtime: KubernetesRuntime) -> None:
    script = "import sys; print('disk full on /var', file=sys.stderr); sys.exit(3)"
    out = await runtime.run(task(script, run_id="r-fail"), stdin=b"{}", env={}, timeout_s=30)
    assert out.exit_code == 3 and b"disk full on /var" in out.stderr_tail and out.stdout == b""


async def test_stdout_is_exact_even_when_the_agent_prints_no_newline(runtime: KubernetesRuntime) -> None:
    script = "import sys; sys.stderr.write('no newline'); sys.stdout.write('{\"a\": [1, 2]}')"
    out = await runtime.run(task(script, run_id="r-exact"), stdin=b"{}", env={}, timeout_s=30)
    assert out.stdout == b'{"a": [1, 2]}' and out.stderr_tail.endswith(b"no newline")


async def test_an_attempt_outliving_its_timeout_is_stopped_and_its_pod_removed(
    runtime: KubernetesRuntime, kube: FakeKube
) -> None:
    t = task("import time; time.sleep(60)", run_id="r-slow")
    out = await runtime.run(t, stdin=b"{}", env={}, timeout_s=1.5)
    assert out.timed_out and out.exit_code is None
    assert (NS, podspec.pod_name(t.key)) not in kube.objects["pods"]


async def test_an_image_the_cluster_cannot_pull_is_refused_in_words(runtime: KubernetesRuntime) -> None:
    t = msgspec.structs.replace(
        task("print(1)", run_id="r-img"),
        agent=AgentSnapshot(name="a", image="registry.example/nope:1", command=["true"]),
    )
    out = await runtime.run(t, stdin=b"{}", env={}, timeout_s=30)
    assert out.start_error is not None and "registry.example/nope:1" in out.start_error
    assert "ErrImagePull" in out.start_error


async def test_bad_settings_are_refused_before_anything_is_made(runtime: KubernetesRuntime, kube: FakeKube) -> None:
    before = len(kube.created)
    no_command = msgspec.structs.replace(task("1", run_id="r-bad"), agent=AgentSnapshot(name="a", image=IMAGE))
    out = await runtime.run(no_command, stdin=b"{}", env={}, timeout_s=30)
    assert out.start_refused and "command" in (out.start_error or "")
    big = await runtime.run(task("1", run_id="r-big"), stdin=b"x" * (2 * 1024 * 1024), env={}, timeout_s=30)
    assert big.start_refused and "Secret" in (big.start_error or "")
    assert len(kube.created) == before


async def test_a_redelivered_attempt_adopts_the_pod_and_the_agent_runs_once(kube: FakeKube, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = (
        f"import json,sys,time; open({str(marker)!r},'a').write('1\\n'); print('before', file=sys.stderr, flush=True); "
        "time.sleep(1.5); print('after', file=sys.stderr, flush=True); "
        "print(json.dumps({'ok': True}))"
    )
    t = task(script, run_id="r-adopt")
    first = make(kube, tmp_path)
    first.detach = True  # an executor going away leaves its agents running
    started = asyncio.create_task(first.run(t, stdin=b"{}", env={}, timeout_s=30))
    await until(marker.exists)  # the agent is running
    started.cancel()  # the executor dies while the agent runs
    with pytest.raises(asyncio.CancelledError):
        await started
    await first.close()
    second = make(kube, tmp_path)
    heard: list[bytes] = []
    out = await second.run(t, stdin=b"{}", env={}, timeout_s=30, on_log=heard.append)
    await second.close()
    # The adopter streams the agent's stderr from the start: what was written before it came too.
    assert b"".join(heard) == b"before\nafter\n"
    assert out.exit_code == 0 and json.loads(out.stdout) == {"ok": True}
    assert marker.read_text() == "1\n"
    assert f"pods/{podspec.pod_name(t.key)}" in kube.conflicts


async def test_cancelling_an_attempt_removes_its_pod(runtime: KubernetesRuntime, kube: FakeKube) -> None:
    t = task("import time; time.sleep(60)", run_id="r-cancel")
    started = asyncio.create_task(runtime.run(t, stdin=b"{}", env={}, timeout_s=60))
    name = podspec.pod_name(t.key)
    await until(lambda: (NS, name) in kube.running and bool(kube.running[(NS, name)].procs))
    started.cancel()
    with pytest.raises(asyncio.CancelledError):
        await started
    assert (NS, name) not in kube.objects["pods"]


def _packed(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _files(packed: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


async def test_a_workspace_is_copied_in_and_an_rw_one_read_back(runtime: KubernetesRuntime, kube: FakeKube) -> None:
    script = (
        "import json,os; w=os.environ['FLOWYARD_WORKSPACE']; text=open(w+'/notes.txt').read(); "
        "open(w+'/result.txt','w').write(text.upper()); print(json.dumps({'read': text}))"
    )
    given = _packed({"notes.txt": b"hello"})
    copy = WorkspaceCopy(data=given, writable=True, max_bytes=1024 * 1024)
    out = await runtime.run(
        task(script, run_id="r-ws", workspace="rw"), stdin=b"{}", env={}, timeout_s=30, workspace=copy
    )
    assert out.exit_code == 0, out
    assert json.loads(out.stdout) == {"read": "hello"}
    assert out.workspace is not None and _files(out.workspace) == {"notes.txt": b"hello", "result.txt": b"HELLO"}
    assert not kube.invalid
    # Read-only: copied in, mounted read-only; nothing comes back.
    ro = WorkspaceCopy(data=given, writable=False, max_bytes=1024 * 1024)
    reader = "import json,os; print(json.dumps({'read': open(os.environ['FLOWYARD_WORKSPACE']+'/notes.txt').read()}))"
    t = task(reader, run_id="r-ro", workspace="ro")
    out = await runtime.run(t, stdin=b"{}", env={}, timeout_s=30, workspace=ro)
    assert out.exit_code == 0 and json.loads(out.stdout) == {"read": "hello"} and out.workspace is None
    pod = kube.objects["pods"][(NS, podspec.pod_name(t.key))]
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == ws.MOUNT)
    assert mount["readOnly"] is True


async def test_resources_and_network_come_from_the_agent(runtime: KubernetesRuntime, kube: FakeKube) -> None:
    t = task(
        "print('{}')",
        run_id="r-res",
        resources=AgentResources(memory="256Mi", cpus=0.5),
        network="egress",
    )
    out = await runtime.run(t, stdin=b"{}", env={}, timeout_s=30)
    assert out.exit_code == 0
    pod = kube.objects["pods"][(NS, podspec.pod_name(t.key))]
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"memory": str(256 * 1024 * 1024), "cpu": "500m"}
    assert pod["metadata"]["labels"]["flowyard.io/network"] == "egress"


# --- the whole stack, the executor on the kubernetes runtime ------------------------------------

STEP = (
    "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: k-step}\nspec:\n"
    f"  image: {IMAGE}\n"
    '  command: [python3, -c, "import json, sys, time; d = json.load(sys.stdin); '
    "open(d['dir'] + '/' + d['name'], 'a').write('1\\\\n'); print('step', d['name'], 'working', file=sys.stderr, flush=True); "
    "time.sleep(1.0); print(json.dumps({'n': d['n'] + 1}))\"]\n"
    "---\napiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: k-nocommand}\nspec:\n"
    f"  image: {IMAGE}\n"
    "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: k-chain}\nspec:\n"
    "  inputs: {dir: {type: string}}\n"
    "  nodes:\n"
    '    - {id: s1, agent: k-step, with: {n: 0, name: s1, dir: "{{ inputs.dir }}"}}\n'
    '    - {id: s2, agent: k-step, needs: [s1], with: {n: "{{ nodes.s1.output.n }}", name: s2, dir: "{{ inputs.dir }}"}}\n'
    '    - {id: s3, agent: k-step, needs: [s2], with: {n: "{{ nodes.s2.output.n }}", name: s3, dir: "{{ inputs.dir }}"}}\n'
    '  outputs: {n: "{{ nodes.s3.output.n }}"}\n'
    "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: k-nocommand}\nspec:\n"
    "  nodes:\n    - {id: x, agent: k-nocommand}\n"
)


def test_the_stack_runs_agents_as_pods_and_an_executor_killed_mid_run_adopts_them(
    kube: FakeKube, nats_binary: str, tmp_path: Path
) -> None:
    import signal
    import time

    from shared.bus.server import NatsServer

    from .stack import Stack

    doc = tmp_path / "k.yaml"
    doc.write_text(STEP)
    config = tmp_path / "flowyard.yaml"
    config.write_text(
        "executor:\n  runtime: kubernetes\n  kubernetes:\n"
        f"    namespace: {NS}\n    kubeconfig: {kube.kubeconfig(tmp_path / 'kubeconfig')}\n"
    )
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(server, tmp_path, FLOWYARD_CONFIG=str(config), FLOWYARD_EXECUTOR_RUNTIME="kubernetes")
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        stack.start_all()
        run = stack.cli_background("run", str(doc), "--workflow", "k-chain", "-i", f"dir={markers}", "--json")
        # The executor dies while the second step's agent runs, and comes back a moment later.
        deadline = time.monotonic() + 60
        while not (markers / "s2").exists():
            assert time.monotonic() < deadline, "s2 never started"
            time.sleep(0.05)
        stack.kill("executor", signal.SIGKILL)
        time.sleep(0.5)
        stack.start("executor")
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        result = json.loads(out)
        assert result["outputs"] == {"n": 3}
        for step in ("s1", "s2", "s3"):
            assert (markers / step).read_text() == "1\n", f"{step} ran more than once"
        assert all(n["attempts"] == 1 for n in result["nodes"].values()), result["nodes"]
        assert not kube.invalid
        # The agents' stderr reached `flowyard logs`.
        logs = stack.cli("logs", result["run_id"])
        assert logs.returncode == 0 and "step s2 working" in logs.stdout, logs.stdout + logs.stderr
        # An agent without `command` is refused before the run starts, naming the fix.
        refused = stack.cli("run", str(doc), "--workflow", "k-nocommand")
        assert refused.returncode == 2 and "k-nocommand" in refused.stderr and "command" in refused.stderr
    finally:
        stack.stop_all()
        server.stop()


async def test_a_workspace_collector_that_never_ends_does_not_turn_a_success_into_a_timeout(
    runtime: KubernetesRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.executor.runtimes import kubernetes

    made = podspec.pod

    def stuck_collector(*args: object, **kwargs: object) -> dict:
        pod = made(*args, **kwargs)  # type: ignore[arg-type]
        for c in pod["spec"]["containers"]:
            if c["name"] == podspec.COLLECT:
                c["command"] = ["python3", "-c", "import time; time.sleep(600)"]
        return pod

    monkeypatch.setattr(kubernetes.podspec, "pod", stuck_collector)
    monkeypatch.setattr(kubernetes, "COLLECT_GRACE_S", 1.0)
    copy = WorkspaceCopy(data=_packed({"a.txt": b"a"}), writable=True, max_bytes=1024 * 1024)
    out = await runtime.run(
        task("print('{}')", run_id="r-stuck", workspace="rw"), stdin=b"{}", env={}, timeout_s=30, workspace=copy
    )
    assert out.exit_code == 0 and not out.timed_out
    assert out.workspace is None and "workspace-out" in (out.workspace_error or "")
