"""A Docker daemon that is not there is a plain sentence, never an assertion or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.executor import handlers
from services.executor.runtimes import DockerRuntime
from shared.contract.messages import AgentSnapshot, TaskDispatched
from shared.docker import client as dockerclient


async def test_a_missing_daemon_is_a_retryable_start_failure_naming_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = tmp_path / "docker.sock"  # never created
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    runtime = DockerRuntime(max_output_bytes=1024, log_tail_bytes=512)
    task = TaskDispatched(
        run_id="r1", workflow="w", node_id="n", attempt=1, agent=AgentSnapshot(name="a", image="flowyard/base:bookworm")
    )
    try:
        outcome = await runtime.run(task, stdin=b"{}", env={}, timeout_s=5)
    finally:
        await runtime.close()
    verdict = handlers.judge(task, outcome, log_tail_bytes=512)
    assert not verdict.ok and verdict.retryable and verdict.infrastructure and verdict.reason == "runtime"
    assert verdict.error.startswith(f"cannot reach the Docker daemon at unix://{socket} (No such file or directory);")
    assert "DOCKER_HOST" in verdict.error


async def test_no_socket_anywhere_falls_back_to_the_standard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiodocker

    def nothing_found(*args: object, **kwargs: object) -> aiodocker.Docker:
        if "url" not in kwargs:
            raise AssertionError  # what aiodocker does when it finds no daemon
        return real(*args, **kwargs)

    real = aiodocker.Docker
    monkeypatch.setattr(aiodocker, "Docker", nothing_found)
    docker = dockerclient.client()
    try:
        assert "unix:///var/run/docker.sock" in dockerclient.unreachable(
            docker, ConnectionRefusedError(111, "Connection refused")
        )
    finally:
        await docker.close()


async def test_an_outage_hands_the_dispatch_back_until_the_last_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.contract.errors import RetryableError
    from shared.contract.messages import Event, TaskFailed

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    task = TaskDispatched(
        run_id="r1", workflow="w", node_id="n", attempt=1, agent=AgentSnapshot(name="a", image="flowyard/base:bookworm")
    )
    sent: list[Event] = []

    async def publish(event: Event, kind: str) -> None:
        sent.append(event)

    runtime = DockerRuntime(max_output_bytes=1024, log_tail_bytes=512)
    try:
        kwargs = {"runtime": runtime, "publish": publish, "executor_id": "x", "log_tail_bytes": 512}
        with pytest.raises(RetryableError, match="cannot reach the Docker daemon") as handed_back:
            await handlers.execute(task, **kwargs, hand_back_outages=True)
        assert handed_back.value.delay == handlers.OUTAGE_RETRY_S
        assert not any(isinstance(e, TaskFailed) for e in sent)  # nothing decided yet
        verdict = await handlers.execute(task, **kwargs, hand_back_outages=False)
    finally:
        await runtime.close()
    assert not verdict.ok and isinstance(sent[-1], TaskFailed) and sent[-1].retryable
    assert sent[-1].error.startswith("cannot reach the Docker daemon at unix://")
