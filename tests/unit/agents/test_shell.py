"""The shell agent is the executor's command_input / image_input / stdout: text, used by agents/shell."""

from __future__ import annotations

import msgspec
import pytest

from services.executor import handlers
from services.executor.runtimes.base import Outcome
from shared.contract.messages import TaskDispatched
from shared.workflow.builtin import builtin_agents
from shared.workflow.validate import snapshot


def shell_task(given: object) -> TaskDispatched:
    agent = snapshot(builtin_agents()["shell"])
    return TaskDispatched(run_id="r1", workflow="w", node_id="n", attempt=1, agent=agent, input=given)


def test_the_shipped_shell_agent_is_risky_and_text() -> None:
    agent = builtin_agents()["shell"].spec
    assert agent.risk == "approval_required" and agent.stdout == "text"
    assert agent.command_input == "command" and agent.image_input == "image"


@pytest.mark.parametrize(
    ("given", "command", "image"),
    [
        ({"command": "ls -l | wc -l"}, ["sh", "-c", "ls -l | wc -l"], "flowyard/agent-shell:1"),
        ({"command": ["git", "status"], "image": "python:3.12-slim"}, ["git", "status"], "python:3.12-slim"),
    ],
)
def test_command_and_image_come_from_the_input(given: object, command: list[str], image: str) -> None:
    task = handlers.resolve_overrides(shell_task(given))
    assert isinstance(task, TaskDispatched)
    assert task.agent.command == command and task.agent.image == image


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"command": ""}, "command line"),
        ({"command": [1, 2]}, "command line"),
        ({"command": "ls", "image": "two words"}, "image name"),
    ],
)
def test_bad_commands_and_images_are_named(given: object, problem: str) -> None:
    assert problem in handlers.resolve_overrides(shell_task(given))  # type: ignore[operator]


def test_text_output_is_stdout_and_exit_code() -> None:
    task = shell_task({"command": "echo hi"})
    ok = handlers.judge(task, Outcome(0, b"hi\nthere\n", b"", 0.1), log_tail_bytes=100)
    assert ok.ok and ok.output == {"stdout": "hi\nthere", "exit_code": 0}
    failed = handlers.judge(task, Outcome(3, b"", b"no such file\n", 0.1), log_tail_bytes=100)
    assert not failed.ok and "exited with code 3: no such file" in failed.error


def test_shell_input_schema_requires_a_command() -> None:
    from shared.formats.schemas import first_error

    schema = builtin_agents()["shell"].spec.inputs
    assert first_error(schema, {}) is not None
    assert first_error(schema, {"command": "ls", "rm": "-rf"}) is not None  # unknown keys refused
    assert first_error(schema, msgspec.to_builtins({"command": ["ls"]})) is None
