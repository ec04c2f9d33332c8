"""The executor's judgement and the process runtime, with real child processes (no servers)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from services.executor import handlers
from services.executor.runtimes import ProcessRuntime
from shared.config.secrets import SecretSource
from shared.contract.messages import AgentSnapshot, Event, TaskDispatched, TaskFailed, TaskStarted, TaskSucceeded


def task(
    code: str,
    *,
    input: object = None,
    timeout: float = 10,
    outputs: dict | None = None,
    inputs: dict | None = None,
    env: dict | None = None,
    secrets: list[str] | None = None,
) -> TaskDispatched:
    agent = AgentSnapshot(
        name="t",
        command=[sys.executable, "-c", textwrap.dedent(code)],
        outputs=outputs or {},
        inputs=inputs or {},
        env=env or {},
        secrets=secrets or [],
    )
    return TaskDispatched(
        run_id="r1", workflow="w", node_id="n", attempt=1, agent=agent, input=input, timeout_s=timeout
    )


async def run(t: TaskDispatched, environ: dict[str, str] | None = None) -> tuple[handlers.Judgement, list[Event]]:
    sent: list[Event] = []

    async def publish(event: Event, kind: str) -> None:
        sent.append(event)

    runtime = ProcessRuntime(max_output_bytes=1024, log_tail_bytes=512, state_dir=tempfile.mkdtemp(prefix="fy-spool-"))
    verdict = await handlers.execute(
        t,
        runtime=runtime,
        publish=publish,
        executor_id="x",
        log_tail_bytes=512,
        secrets=SecretSource(None, environ or {}),
    )
    await runtime.close()  # waits for the scratch directory's removal
    return verdict, sent


async def test_json_in_json_out_and_stderr_kept_as_log() -> None:
    verdict, sent = await run(
        task(
            """
        import json, sys
        data = json.load(sys.stdin)
        print("working on it", file=sys.stderr)
        print(json.dumps({"doubled": data["n"] * 2}))
    """,
            input={"n": 21},
        )
    )
    assert verdict.ok and verdict.output == {"doubled": 42}
    assert isinstance(sent[0], TaskStarted)
    assert isinstance(sent[1], TaskSucceeded) and sent[1].log == "working on it" and sent[1].output == {"doubled": 42}


async def test_non_zero_exit_reports_code_and_stderr_tail() -> None:
    verdict, sent = await run(task("import sys; print('disk full', file=sys.stderr); sys.exit(3)"))
    assert not verdict.ok and verdict.reason == "exit"
    assert verdict.error == "exited with code 3: disk full"
    assert isinstance(sent[1], TaskFailed) and sent[1].exit_code == 3


async def test_garbage_on_stdout_is_not_json() -> None:
    verdict, _ = await run(task("print('hello, I am not JSON')"))
    assert verdict.reason == "bad_output" and "not JSON" in verdict.error and "hello, I am not JSON" in verdict.error
    assert not verdict.retryable


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("print('[1, 2]')", "printed JSON list"),
        ("pass", "printed nothing"),
        ("print('x' * 5000)", "more on stdout than the executor keeps"),
        ('print(\'{"$flowyard.value": "run/abc", "bytes": 3}\')', "which flowyard reserves"),
    ],
)
async def test_other_bad_outputs(code: str, message: str) -> None:
    verdict, _ = await run(task(code))
    assert not verdict.ok and message in verdict.error


async def test_output_schema_mismatch_is_not_retryable() -> None:
    schema = {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}}
    verdict, _ = await run(task('print(\'{"count": "three"}\')', outputs=schema))
    assert verdict.reason == "output_schema" and not verdict.retryable
    assert "at count: 'three' is not of type 'integer'" in verdict.error


async def test_input_schema_checked_before_running() -> None:
    verdict, sent = await run(
        task(
            "raise SystemExit('must not run')",
            input={"n": "x"},
            inputs={"type": "object", "properties": {"n": {"type": "integer"}}},
        )
    )
    assert verdict.reason == "input_schema" and "at n" in verdict.error
    assert isinstance(sent[-1], TaskFailed)


async def test_timeout_kills_the_agent_and_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    verdict, _ = await run(
        task(
            f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        open({str(marker)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """,
            timeout=1,
        )
    )
    assert verdict.reason == "timeout" and verdict.error == "timed out after 1s and was killed"
    pid = int(marker.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        await asyncio.sleep(0.1)
    assert not _alive(pid), "the agent's child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


async def test_environment_is_scrubbed_and_temp_files_removed(tmp_path: Path) -> None:
    os.environ["FY_TEST_LEAK"] = "leaked"
    try:
        verdict, _ = await run(
            task(
                """
            import json, os
            open("scratch.txt", "w").write("x")
            print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
        """,
                env={"MODE": "fast"},
            )
        )
    finally:
        del os.environ["FY_TEST_LEAK"]
    env = verdict.output["env"]
    assert "FY_TEST_LEAK" not in env and env["MODE"] == "fast" and env["FLOWYARD_NODE_ID"] == "n"
    assert set(env) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "MODE",
        "FLOWYARD_RUN_ID",
        "FLOWYARD_NODE_ID",
        "FLOWYARD_ATTEMPT",
        "FLOWYARD_TIMEOUT_S",
        "LC_CTYPE",
        "PWD",
    }
    assert not Path(verdict.output["cwd"]).exists()


async def test_secrets_reach_the_agent_but_never_the_log_or_error() -> None:
    code = """
        import os, sys
        print("token is " + os.environ["API_TOKEN"], file=sys.stderr)
        sys.exit(1)
    """
    verdict, sent = await run(task(code, secrets=["API_TOKEN"]), environ={"FLOWYARD_SECRET_API_TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in verdict.error
    failed = sent[-1]
    assert isinstance(failed, TaskFailed)
    assert "s3cr3t-value" not in failed.log and "[redacted]" in failed.log and "s3cr3t-value" not in failed.error


async def test_a_secret_printed_on_stdout_is_redacted_from_the_output() -> None:
    code = """
        import json, os
        print(json.dumps({"leak": os.environ["API_TOKEN"], "ok": True}))
    """
    verdict, sent = await run(task(code, secrets=["API_TOKEN"]), environ={"FLOWYARD_SECRET_API_TOKEN": "s3cr3t-value"})
    assert verdict.ok and verdict.output == {"leak": "[redacted]", "ok": True}
    assert "s3cr3t-value" not in repr(sent)


async def test_missing_secret_fails_clearly_without_running() -> None:
    verdict, _ = await run(task("raise SystemExit(9)", secrets=["DB_PASSWORD"]))
    assert verdict.reason == "runtime" and "FLOWYARD_SECRET_DB_PASSWORD" in verdict.error


async def test_missing_command() -> None:
    t = TaskDispatched(
        run_id="r",
        workflow="w",
        node_id="n",
        attempt=1,
        agent=AgentSnapshot(name="t", command=["no-such-binary-xyz"]),
        input={},
    )
    verdict, _ = await run(t)
    assert verdict.reason == "runtime" and "not on the executor's PATH" in verdict.error


def test_the_breaker_opens_after_consecutive_infrastructure_failures_and_closes_after_cooldown() -> None:
    from services.executor.breaker import Breaker

    now = [100.0]
    breaker = Breaker(threshold=3, cooldown=60, clock=lambda: now[0])
    for _ in range(2):
        breaker.record("img:1", infrastructure_failure=True, error="image missing")
    assert breaker.refusal("img:1") is None
    breaker.record("img:1", infrastructure_failure=False)  # a success resets the count
    opened = [breaker.record("img:1", infrastructure_failure=True, error="image missing") for _ in range(3)]
    assert opened == [False, False, True]  # the third failure trips it (and is counted as a trip)
    refusal = breaker.refusal("img:1")
    assert refusal is not None and "3 failures in a row" in refusal and "image missing" in refusal
    assert breaker.refusal("other:1") is None
    now[0] += 61
    assert breaker.refusal("img:1") is None


async def test_an_output_too_large_to_report_fails_the_node_instead_of_vanishing() -> None:
    from shared.contract.errors import PermanentError

    sent: list[Event] = []

    async def publish(event: Event, kind: str) -> None:
        if isinstance(event, TaskSucceeded):
            raise PermanentError("TaskSucceeded for run r1 is 2000000 bytes, over the 1048576-byte limit")
        sent.append(event)

    runtime = ProcessRuntime(max_output_bytes=1024, log_tail_bytes=512, state_dir=tempfile.mkdtemp(prefix="fy-spool-"))
    verdict = await handlers.execute(
        task("print('{}')"),
        runtime=runtime,
        publish=publish,
        executor_id="x",
        log_tail_bytes=512,
        secrets=SecretSource(None, {}),
    )
    await runtime.close()
    assert not verdict.ok and "could not be reported" in verdict.error
    assert isinstance(sent[-1], TaskFailed) and sent[-1].reason == "bad_output" and not sent[-1].retryable


async def test_each_attempt_is_a_span_saying_how_it_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr("shared.telemetry.tracing.tracer", lambda: provider.get_tracer("test"))
    await run(task("print('{}')"))
    await run(
        task("import sys; print('token=hunter22', file=sys.stderr); sys.exit(5)", secrets=["TOKEN"]),
        {"FLOWYARD_SECRET_TOKEN": "hunter22"},
    )
    ok, failed = exporter.get_finished_spans()
    assert ok.name == failed.name == "agent t"
    assert ok.attributes["flowyard.outcome"] == "succeeded" and ok.attributes["flowyard.run_id"] == "r1"
    assert failed.attributes["flowyard.outcome"] == "exit" and failed.attributes["process.exit.code"] == 5
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "exited with code 5: token=[redacted]"
