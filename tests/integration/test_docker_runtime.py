"""The Docker runtime against a real daemon: the agent protocol, every escape attempt, adoption."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from services.executor import handlers
from services.executor.runtimes.docker import LABEL, DockerRuntime
from shared.contract.messages import AgentResources, AgentSnapshot, TaskDispatched
from tests.integration.dockerclean import remove_mine

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "flowyard/base:bookworm"


@pytest.fixture
async def runtime(base_image: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(max_output_bytes=1024 * 1024, log_tail_bytes=4096)
    yield rt
    await remove_mine(rt)  # this test's containers only
    await rt.close()


_seq = iter(range(1_000_000))


def task(
    code: str,
    *,
    memory: str | None = None,
    pids: int | None = None,
    timeout: float = 30,
    network: str = "none",
    run_id: str | None = None,
) -> TaskDispatched:
    agent = AgentSnapshot(
        name="probe",
        image=IMAGE,
        command=["python3", "-c", textwrap.dedent(code)],
        resources=AgentResources(memory=memory, pids=pids),
        network=network,
    )  # type: ignore[arg-type]
    return TaskDispatched(
        run_id=run_id or f"rdock{next(_seq)}",
        workflow="w",
        node_id="n",
        attempt=1,
        agent=agent,
        input={"n": 21},
        timeout_s=timeout,
    )


async def verdict(rt: DockerRuntime, t: TaskDispatched) -> handlers.Judgement:
    outcome = await rt.run(t, stdin=b'{"n": 21}', env={}, timeout_s=t.timeout_s)
    return handlers.judge(t, outcome, log_tail_bytes=4096)


async def test_json_in_json_out_stderr_as_log(runtime: DockerRuntime) -> None:
    v = await verdict(
        runtime,
        task("""
        import json, sys
        print("thinking", file=sys.stderr)
        print(json.dumps({"doubled": json.load(sys.stdin)["n"] * 2}))
    """),
    )
    assert v.ok and v.output == {"doubled": 42}


async def test_failures_say_what_happened(runtime: DockerRuntime) -> None:
    v = await verdict(runtime, task("import sys; print('disk full', file=sys.stderr); sys.exit(4)"))
    assert v.error == "exited with code 4: disk full"
    v = await verdict(runtime, task("print('not json')"))
    assert "not JSON" in v.error
    v = await verdict(runtime, task("import time; time.sleep(60)", timeout=1))
    assert v.reason == "timeout" and v.error == "timed out after 1s and was killed"
    # Whatever went wrong, the agent's last words on stderr come with it.
    v = await verdict(
        runtime, task("import sys, time; print('waiting for the lock', file=sys.stderr); time.sleep(60)", timeout=1)
    )
    assert v.error == "timed out after 1s and was killed; last on stderr: waiting for the lock"
    v = await verdict(runtime, task("import sys; print('model loaded', file=sys.stderr); print('Sure! {}')"))
    assert v.reason == "bad_output" and v.error.endswith("; last on stderr: model loaded")


async def test_loud_agents_and_large_inputs(runtime: DockerRuntime) -> None:
    # Megabytes on stderr, then the result: the result is kept, with the last lines as the log.
    chatty = task(
        "import json, sys\n"
        "for i in range(200_000): print('progress', i, file=sys.stderr)\n"
        "print(json.dumps({'done': True}))"
    )
    seen: list[bytes] = []
    outcome = await runtime.run(chatty, stdin=b"{}", env={}, timeout_s=60, on_log=seen.append)
    v = handlers.judge(chatty, outcome, log_tail_bytes=4096)
    assert v.ok and v.output == {"done": True}, v.error
    assert outcome.stderr_tail.rstrip().endswith(b"progress 199999") and b"".join(seen).count(b"\n") == 200_000
    # More on stdout than is kept: said so, whatever came after.
    v = await verdict(runtime, task("import sys; sys.stdout.write('x' * 3_000_000); print('{}')"))
    assert v.reason == "bad_output" and "more on stdout than the executor keeps" in v.error
    # A large input, read only after the agent has printed a lot: no deadlock, all of it arrives.
    big = {"blob": "y" * 2_000_000}
    reader = task(
        "import json, sys\n"
        "print('z' * 1_000_000, file=sys.stderr, flush=True)\n"
        "print(json.dumps({'size': len(json.load(sys.stdin)['blob'])}))"
    )
    outcome = await runtime.run(reader, stdin=json.dumps(big).encode(), env={}, timeout_s=60)
    assert handlers.judge(reader, outcome, log_tail_bytes=4096).output == {"size": 2_000_000}
    # ... and an agent that never reads its input is not held up by it.
    deaf = task("print('{\"ignored\": true}')")
    outcome = await runtime.run(deaf, stdin=json.dumps(big).encode(), env={}, timeout_s=60)
    assert handlers.judge(deaf, outcome, log_tail_bytes=4096).output == {"ignored": True}


ESCAPES = {
    "network": (
        """
        import socket
        interfaces = {line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]}
        assert interfaces == {"lo"}, interfaces
        socket.create_connection(("10.0.0.1", 53), timeout=2)
        print('{"escaped": true}')
    """,
        "Network is unreachable",
    ),
    "root file system": (
        """
        open("/etc/flowyard-was-here", "w").write("x")
        print('{"escaped": true}')
    """,
        "Read-only file system",
    ),
    "host files": (
        """
        import os
        assert not os.path.exists("/var/run/docker.sock"), "docker socket visible"
        assert not os.path.exists("/work"), "host tree visible"
        raise SystemExit("no host mounts")
    """,
        "no host mounts",
    ),
    "capabilities": (
        """
        caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "CapBnd"))]
        assert all(l.split()[1] == "0000000000000000" for l in caps), caps
        raise SystemExit("no capabilities")
    """,
        "no capabilities",
    ),
    "root user": (
        """
        import os
        assert os.getuid() == 10001 and os.geteuid() == 10001, os.getuid()
        raise SystemExit("not root")
    """,
        "not root",
    ),
}


@pytest.mark.parametrize("escape", list(ESCAPES))
async def test_escape_attempts_fail(runtime: DockerRuntime, escape: str) -> None:
    code, expected = ESCAPES[escape]
    v = await verdict(runtime, task(code))
    assert not v.ok and expected in v.error, v.error


async def test_network_egress_is_an_opt_in(runtime: DockerRuntime) -> None:
    code = """
        import json
        interfaces = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
        print(json.dumps({"interfaces": interfaces}))
    """
    closed = await verdict(runtime, task(code))
    opened = await verdict(runtime, task(code, network="egress"))
    assert closed.output == {"interfaces": ["lo"]}
    assert opened.ok and "eth0" in opened.output["interfaces"], opened


async def test_settings_docker_refuses_are_the_agents_fault_not_the_infrastructures(runtime: DockerRuntime) -> None:
    greedy = task("print('{}')")
    greedy = msgspec.structs.replace(
        greedy, agent=msgspec.structs.replace(greedy.agent, resources=AgentResources(cpus=4096))
    )
    v = await verdict(runtime, greedy)
    assert not v.ok and v.error.startswith("Docker refused the agent's container settings: ") and "CPU" in v.error
    assert not v.infrastructure and not v.retryable  # the image's circuit breaker does not count it
    plain = task("print('{}')")
    missing = msgspec.structs.replace(plain, agent=msgspec.structs.replace(plain.agent, image="flowyard/nothing:0"))
    v = await verdict(runtime, missing)
    assert "is not present on this executor" in v.error and v.infrastructure


async def test_eating_memory_is_an_oom_kill(runtime: DockerRuntime) -> None:
    code = "import sys; print('loading the index', file=sys.stderr, flush=True); x = bytearray(300 << 20)"
    v = await verdict(runtime, task(code, memory="64Mi"))
    assert not v.ok and "ran out of memory (its limit of 64 MiB)" in v.error
    assert v.error.endswith("; last on stderr: loading the index")


async def test_a_fork_bomb_is_stopped_by_the_pids_limit(runtime: DockerRuntime) -> None:
    v = await verdict(
        runtime,
        task(
            """
        import os, sys, time
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print(f"stopped after {children} processes: {exc}", file=sys.stderr)
            sys.exit(3)
    """,
            pids=32,
        ),
    )
    assert not v.ok and "stopped after" in v.error and "Resource temporarily unavailable" in v.error


async def test_a_restarted_executor_adopts_the_running_container(base_image: str) -> None:
    t = task("import json, sys, time; time.sleep(2); print(json.dumps({'once': True}))")
    first = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096)
    running = asyncio.create_task(first.run(t, stdin=b"{}", env={}, timeout_s=30))
    await asyncio.sleep(0.8)
    first.detach = True  # the executor goes away; its container must not
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await first.close()
    second = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096)
    try:
        outcome = await second.run(t, stdin=b"{}", env={}, timeout_s=30)
        assert handlers.judge(t, outcome, log_tail_bytes=4096).output == {"once": True}
        mine = await second.docker.containers.list(all=True, filters={"label": [f"{LABEL}.key={t.key}"]})
        assert len(mine) == 1, "a second container was started for the same attempt"
    finally:
        await remove_mine(second)  # this test's containers only
        await second.close()


async def test_an_attempt_that_ended_before_the_redelivery_is_read_not_rerun(base_image: str) -> None:
    # The executor died after its container exited but before it reported: the next delivery
    # must read that exit (status, stdout, stderr), never start the agent a second time.
    rt = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096)
    try:
        ok = task("import json, random; print(json.dumps({'r': random.random()}))")
        bad = task("import sys; print('disk full', file=sys.stderr); sys.exit(3)")
        first_ok, first_bad = await asyncio.gather(
            rt.run(ok, stdin=b"{}", env={}, timeout_s=30), rt.run(bad, stdin=b"{}", env={}, timeout_s=30)
        )
        again_ok = await rt.run(ok, stdin=b"{}", env={}, timeout_s=30)
        again_bad = await rt.run(bad, stdin=b"{}", env={}, timeout_s=30)
        assert again_ok.stdout == first_ok.stdout and again_ok.exit_code == 0
        assert first_bad.exit_code == again_bad.exit_code == 3 and b"disk full" in again_bad.stderr_tail
        v = handlers.judge(bad, again_bad, log_tail_bytes=4096)
        assert not v.ok and v.error == "exited with code 3: disk full"
    finally:
        await remove_mine(rt)  # this test's containers only
        await rt.close()


def test_a_workflow_runs_in_containers_and_secrets_never_leave(
    base_image: str, nats_binary: str, tmp_path: Path
) -> None:
    import json
    import os
    import sys

    secret = "tok-9f8e7d6c5b4a"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env |= {"FLOWYARD_SECRET_DEMO_TOKEN": secret}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "run",
            str(ROOT / "tests/integration/workflows/in-containers.yaml"),
            "--runtime",
            "docker",
            "--json",
            "-v",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outputs"] == {"count": 4}
    assert result["nodes"]["leaky"]["output"] == {"echo": "[redacted]"}
    assert secret not in done.stdout and secret not in done.stderr  # events, record, logs
    subprocess.run(
        f"docker ps -aq --filter label={LABEL}.run={result['run_id']} | xargs -r docker rm -f",
        shell=True,
        check=False,
        capture_output=True,
    )


def test_executor_sigkilled_while_its_container_runs(base_image: str, nats_binary: str, tmp_path: Path) -> None:
    """After a restart, the executor adopts the container: the run completes and the agent ran once."""
    import json
    import signal
    import time

    from shared.bus.server import NatsServer

    from .stack import Stack

    workflow = tmp_path / "slow.yaml"
    workflow.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: c-slow}\nspec:\n"
        f"  image: {IMAGE}\n"
        "  command: [python3, -c, \"import json, sys, time; time.sleep(3); print(json.dumps({'done': True}))\"]\n"
        "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: slow-container}\nspec:\n"
        "  nodes:\n    - {id: work, agent: c-slow}\n"
    )
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(server, tmp_path, FLOWYARD_EXECUTOR_RUNTIME="docker")
    began = str(int(time.time()) - 1)
    try:
        stack.start_all()
        run = stack.cli_background("run", str(workflow), "--json")
        time.sleep(1.5)  # the container is running
        stack.kill("executor", signal.SIGKILL)
        time.sleep(0.5)
        stack.start("executor")
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        result = json.loads(out)
        assert result["nodes"]["work"]["output"] == {"done": True} and result["nodes"]["work"]["attempts"] == 1
        # Containers of an ended run are removed; the daemon's event log still says how many were made.
        created = subprocess.run(
            [
                "docker",
                "events",
                "--since",
                began,
                "--until",
                str(int(time.time()) + 1),
                "--filter",
                "event=create",
                "--filter",
                f"label={LABEL}.run={result['run_id']}",
                "--format",
                "{{.ID}}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert len(created.stdout.split()) == 1, "the attempt got a second container"
        assert "adopting a container started before" in stack.replica_log("executor")
    finally:
        stack.stop_all()
        server.stop()


def test_a_missing_image_fails_clearly_then_trips_the_breaker(
    base_image: str, nats_binary: str, tmp_path: Path
) -> None:
    import json

    from shared.bus.server import NatsServer

    from .stack import Stack

    workflow = tmp_path / "missing.yaml"
    workflow.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: ghost}\nspec:\n"
        "  image: flowyard/does-not-exist:1\n  command: [cat]\n"
        "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: ghost}\nspec:\n"
        "  nodes:\n    - {id: a, agent: ghost}\n"
    )
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(server, tmp_path, FLOWYARD_EXECUTOR_RUNTIME="docker", FLOWYARD_EXECUTOR_BREAKER_THRESHOLD="2")
    try:
        stack.start_all()
        errors = []
        for _ in range(3):
            code, result, _ = stack.run_json(str(workflow))
            assert code == 1
            errors.append(result["nodes"]["a"]["error"])
        assert "image 'flowyard/does-not-exist:1' is not present on this executor" in errors[0]
        assert "stopped taking work for flowyard/does-not-exist:1 after 2 failures in a row" in errors[2]
        assert json.loads(stack.cli("runs", "list", "--json").stdout)
        # What an on-call engineer's dashboard sees of it.
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.http_port('executor')}/metrics") as r:
            metrics = r.read().decode()
        assert 'flowyard_agent_attempts_total{agent="ghost",outcome="runtime"} 2.0' in metrics
        assert 'flowyard_agent_attempts_total{agent="ghost",outcome="refused"} 1.0' in metrics
        assert 'flowyard_executor_breaker_trips_total{image="flowyard/does-not-exist:1"} 1.0' in metrics
        assert 'flowyard_agent_attempt_seconds_count{agent="ghost"} 2.0' in metrics
        assert 'flowyard_executor_slots{state="busy"} 0.0' in metrics
        assert "flowyard_executor_breakers_open 1.0" in metrics
    finally:
        stack.stop_all()
        server.stop()


def test_a_docker_daemon_that_comes_back_within_the_wait_loses_no_run(
    base_image: str, nats_binary: str, tmp_path: Path
) -> None:
    """The daemon is unreachable when the run starts and answers a few seconds later (a restart):
    the executor hands the dispatch back instead of failing the node, and the run succeeds."""
    import json
    import os
    import threading

    from shared.bus.server import NatsServer

    from .stack import Stack

    socket = tmp_path / "docker.sock"  # absent at first; then a link to the real daemon's socket
    real = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    workflow = tmp_path / "hello.yaml"
    workflow.write_text(
        f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: hello}}\nspec:\n  image: {IMAGE}\n"
        "  command: [cat]\n"
        "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: hello}\nspec:\n"
        "  nodes:\n    - {id: a, agent: hello, with: {hello: 1}}\n"
    )
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(server, tmp_path, FLOWYARD_EXECUTOR_RUNTIME="docker", DOCKER_HOST=f"unix://{socket}")
    comes_back = threading.Timer(6.0, lambda: socket.symlink_to(real))
    try:
        stack.start_all()
        comes_back.start()
        code, result, _ = stack.run_json(str(workflow))
        assert code == 0, result["nodes"]
        assert result["nodes"]["a"]["output"] == {"hello": 1} and result["nodes"]["a"]["attempts"] == 1
        assert "handed back: the runtime cannot be reached" in stack.wait_for_log("executor", "handed back")
        assert json.loads(stack.cli("runs", "list", "--json").stdout)
    finally:
        comes_back.cancel()
        stack.stop_all()
        server.stop()


async def test_containers_of_gone_or_ended_runs_are_removed_but_only_this_stacks(base_image: str) -> None:
    import os

    statuses = {f"rkeep{os.getpid()}": "running", f"rdone{os.getpid()}": "succeeded"}

    async def run_status(run_id: str) -> str | None:
        return statuses.get(run_id)  # anything else: no such run

    mine = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096)
    mine.stack_id, mine.run_status = f"stack-a-{os.getpid()}", run_status
    other = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096)
    other.stack_id = f"stack-b-{os.getpid()}"
    sleeper = "import time; time.sleep(60)"
    tasks = {
        "keep": task(sleeper, run_id=f"rkeep{os.getpid()}"),
        "done": task(sleeper, run_id=f"rdone{os.getpid()}"),
        "gone": task(sleeper, run_id=f"rgone{os.getpid()}"),
    }
    running = [asyncio.create_task(mine.run(t, stdin=b"{}", env={}, timeout_s=60)) for t in tasks.values()]
    foreign = asyncio.create_task(
        other.run(task(sleeper, run_id=f"rgone{os.getpid()}b"), stdin=b"{}", env={}, timeout_s=60)
    )
    try:
        await asyncio.sleep(1.5)  # all four containers are running
        assert await mine.sweep() == 2  # "done" (ended) and "gone" (no such run), running or not
        left = {
            c["Labels"][f"{LABEL}.run"]
            for c in await mine.docker.containers.list(all=True, filters={"label": [f"{LABEL}.run"]})
        }
        assert tasks["keep"].run_id in left and f"rgone{os.getpid()}b" in left  # another stack's is untouched
        assert tasks["done"].run_id not in left and tasks["gone"].run_id not in left
    finally:
        for t in [*running, foreign]:
            t.cancel()
        await asyncio.gather(*running, foreign, return_exceptions=True)
        await remove_mine(mine)  # this test's containers only
        await mine.close()
        await other.close()


async def test_the_input_is_in_the_container_before_it_starts(runtime: DockerRuntime) -> None:
    """Small inputs travel in the container's configuration, large ones as a file; either way
    the agent reads them on stdin, sees nothing of how they came, and nothing is left behind."""
    probe = task(
        """
        import json, os, sys
        data = json.load(sys.stdin)
        print(json.dumps({"n": data["n"], "size": len(data.get("blob", "")),
                          "env": "FLOWYARD_INPUT" in os.environ, "left": os.path.exists("/tmp/.flowyard-input")}))
        """
    )
    small = await runtime.run(probe, stdin=b'{"n": 21}', env={}, timeout_s=30)
    assert json.loads(small.stdout) == {"n": 21, "size": 0, "env": False, "left": False}
    big = json.dumps({"n": 1, "blob": "b" * 200_000}).encode()  # over the environment's limit
    large = await runtime.run(task(probe.agent.command[2]), stdin=big, env={}, timeout_s=30)
    assert json.loads(large.stdout) == {"n": 1, "size": 200_000, "env": False, "left": False}


async def test_an_image_without_a_shell_gets_its_input_through_the_attach(runtime: DockerRuntime) -> None:
    image = "flowyard/test-no-shell:1"
    built = await asyncio.to_thread(
        subprocess.run,
        ["docker", "build", "-q", "-t", image, "-"],
        input=f"FROM {IMAGE}\nUSER root\nRUN rm -f /usr/bin/sh /bin/sh /usr/bin/dash /bin/dash\nUSER 10001\n",
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    probe = task("import json, sys; print(json.dumps({'n': json.load(sys.stdin)['n'] * 2}))")
    probe = msgspec.structs.replace(probe, agent=msgspec.structs.replace(probe.agent, image=image))
    for _ in range(2):  # the second attempt knows the image and goes straight to the attach
        v = await verdict(runtime, msgspec.structs.replace(probe, run_id=f"rdock{next(_seq)}"))
        assert v.ok and v.output == {"n": 42}
    assert runtime._no_shell == {image}
