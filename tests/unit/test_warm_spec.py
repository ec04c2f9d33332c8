"""spec.warm: what a warm pool may be, what it cannot serve, and what the run's plan carries."""

from __future__ import annotations

import pytest

from services.executor.runtimes.warm import PER_ATTEMPT, pool_key, worker_env
from shared.contract.errors import ValidationFailed
from shared.contract.messages import AgentSnapshot, TaskDispatched, WarmUse
from shared.workflow.loader import load_bundle
from shared.workflow.plan import snapshot
from shared.workflow.routing import agent_problems


def agent(extra: str) -> str:
    return f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: a}}\nspec:\n  command: [cat]\n{extra}"


def problems_of(text: str) -> list[str]:
    return agent_problems(load_bundle(text, "a.yaml").agents["a"], "a.yaml")


def test_a_warm_pool_is_carried_into_the_plan_with_its_defaults() -> None:
    doc = load_bundle(agent("  warm: {min: 1, idle: 30s}\n"), "a.yaml").agents["a"]
    assert problems_of(agent("  warm: {min: 1, idle: 30s}\n")) == []
    assert snapshot(doc).warm == WarmUse(min=1, max=4, idle_s=30.0, reuse="run")
    plain = load_bundle(agent(""), "a.yaml").agents["a"]
    assert snapshot(plain).warm is None


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("  warm: {max: 0}\n", "spec.warm.max must be between 1 and 64"),
        ("  warm: {max: 65}\n", "spec.warm.max must be between 1 and 64"),
        ("  warm: {min: 3, max: 2}\n", "spec.warm.min must be between 0 and spec.warm.max (2)"),
        ("  warm: {idle: soon}\n", "spec.warm.idle: 'soon' is not a positive duration"),
        ("  warm: {idle: 0s}\n", "spec.warm.idle: '0s' is not a positive duration"),
        ("  warm: {}\n  stdout: text\n", "spec.warm needs stdout: json"),
        ("  warm: {}\n  workspace: rw\n", "spec.warm cannot be used with workspace: rw"),
        ("  warm: {}\n  command_input: cmd\n", "spec.warm cannot be used with spec.command_input"),
    ],
)
def test_a_pool_that_cannot_work_is_refused_saying_why(extra: str, words: str) -> None:
    (why,) = problems_of(agent(extra))
    assert words in why and why.startswith("a.yaml: ")


def test_an_unknown_reuse_or_key_is_a_load_error() -> None:
    with pytest.raises(ValidationFailed, match="reuse"):
        load_bundle(agent("  warm: {reuse: everyone}\n"), "a.yaml")
    with pytest.raises(ValidationFailed, match="maxx"):
        load_bundle(agent("  warm: {maxx: 2}\n"), "a.yaml")


def task(env_agent: str = "a") -> TaskDispatched:
    return TaskDispatched(
        run_id="r1",
        workflow="w",
        node_id="n",
        attempt=1,
        agent=AgentSnapshot(name=env_agent, command=["cat"], warm=WarmUse()),
    )


def test_workers_are_shared_only_within_one_environment_and_keep_no_secret_as_text() -> None:
    env = {"TOKEN": "s3cret", "FLOWYARD_NODE_ID": "n", "FLOWYARD_ATTEMPT": "1"}
    key = pool_key(task(), "/bin/cat", env)
    assert "s3cret" not in key
    # Another attempt of the same agent with the same secrets: the same pool.
    assert pool_key(task(), "/bin/cat", {**env, "FLOWYARD_NODE_ID": "m", "FLOWYARD_ATTEMPT": "2"}) == key
    # Another secret value, another agent or another command: never the same worker.
    assert pool_key(task(), "/bin/cat", {**env, "TOKEN": "other"}) != key
    assert pool_key(task("b"), "/bin/cat", env) != key
    assert pool_key(task(), "/usr/bin/cat", env) != key
    started = worker_env(env)
    assert started["FLOWYARD_WARM"] == "1" and not PER_ATTEMPT & set(started)
