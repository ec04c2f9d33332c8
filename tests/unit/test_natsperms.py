"""The NATS permission table: each user may do what its service does and nothing another owns."""

from __future__ import annotations

import pytest

from shared.contract import permissions as natsperms
from shared.contract import subjects
from shared.contract.catalog import CONSUMERS

TABLE = natsperms.table()


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` one token, `>` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def may_publish(user: str, subject: str) -> bool:
    rules = TABLE[user]["publish"]
    allowed = any(matches(p, subject) for p in rules["allow"])
    denied = any(matches(p, subject) for p in rules.get("deny", []))
    return allowed and not denied


def test_the_matcher() -> None:
    assert matches("fy.run.*.started", "fy.run.r1.started") and not matches("fy.run.*.started", "fy.run.r1.x.started")
    assert matches("$KV.fy_runs.>", "$KV.fy_runs.r1") and not matches("$KV.fy_runs.>", "$KV.fy_runs")


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("scheduler", subjects.dispatch("default")),
        ("scheduler", subjects.run_started("r1")),
        ("scheduler", subjects.run_finished("r1", "failed")),
        ("scheduler", "$KV.fy_runs.r1"),
        ("scheduler", "$KV.fy_items.r1.each.7"),
        ("executor", subjects.task_event("r1", "each#3", "succeeded")),
        ("executor", "$JS.API.CONSUMER.MSG.NEXT.FY_TASKS.executor-default"),
        ("approver", subjects.approval_decided("r1", "deploy", "granted")),
        ("approver", "$KV.fy_approvals.r1.deploy"),
        ("planner", subjects.run_planned("r1")),
        ("notifier", subjects.notification_failed("r1")),
        ("gateway", subjects.run_requested("r1")),
        ("gateway", subjects.ALERTMANAGER),
        ("cli", subjects.run_cancel("r1")),
        ("cli", subjects.DECIDE),
    ],
)
def test_each_user_may_do_its_own_work(user: str, subject: str) -> None:
    assert may_publish(user, subject), f"{user} may not publish {subject}"


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("notifier", subjects.task_event("r1", "a", "succeeded")),  # only the executor reports tasks
        ("gateway", subjects.dispatch("default")),  # only the scheduler dispatches
        ("cli", subjects.dispatch("default")),
        ("executor", subjects.approval_decided("r1", "deploy", "granted")),  # only the approver decides
        ("executor", "$JS.API.DIRECT.GET.KV_fy_approvals.$KV.fy_approvals.r1.deploy"),  # reads no approvals
        ("gateway", "$KV.fy_runs.r1"),  # only the scheduler writes run records
        ("cli", "$KV.fy_approvals.x"),  # decisions go through the approver
        ("planner", subjects.run_started("r1")),
        ("scheduler", subjects.approval_decided("r1", "deploy", "granted")),
        ("gateway", "$JS.API.STREAM.DELETE.FY_RUNS"),
        ("cli", "$JS.API.STREAM.CREATE.FY_RUNS"),
        # Reading a stream with ordered consumers must not reach another service's durable.
        ("gateway", "$JS.API.CONSUMER.DELETE.FY_RUNS.scheduler"),
        ("cli", "$JS.API.CONSUMER.CREATE.FY_RUNS.scheduler"),
        ("cli", "$JS.API.CONSUMER.MSG.NEXT.FY_RUNS.scheduler"),
        ("approver", "$JS.ACK.FY_RUNS.scheduler.1.2.3.4.5"),
        ("planner", "$JS.API.CONSUMER.DELETE.FY_TASKS.executor-default"),
    ],
)
def test_no_user_may_do_what_another_owns(user: str, subject: str) -> None:
    assert not may_publish(user, subject), f"{user} may publish {subject}"


def test_every_durable_consumer_belongs_to_exactly_one_service() -> None:
    for durable, spec in CONSUMERS.items():
        name = durable.replace("{pool}", "default")
        owners = [
            u
            for u in natsperms.USERS
            if u != "admin" and may_publish(u, f"$JS.API.CONSUMER.MSG.NEXT.{spec['stream']}.{name}")
        ]
        assert owners == [durable.split("-")[0]], (durable, owners)


def test_replies_come_to_each_users_own_inbox_and_only_admin_has_everything() -> None:
    for user, perms in TABLE.items():
        assert f"_INBOX_{user}.>" in perms["subscribe"]["allow"]
        others = [p for p in perms["subscribe"]["allow"] if p.startswith("_INBOX") and p != f"_INBOX_{user}.>"]
        assert not others, (user, others)
        assert (">" in perms["publish"]["allow"]) == (user == "admin")
    assert TABLE["approver"].get("allow_responses") is True
    assert not any(TABLE[u].get("allow_responses") for u in natsperms.USERS if u not in ("approver", "admin"))


def test_every_pool_gets_its_own_executor_consumer() -> None:
    table = natsperms.table(("default", "gpu"))
    allow = table["executor"]["publish"]["allow"]
    assert (
        "$JS.API.CONSUMER.MSG.NEXT.FY_TASKS.executor-gpu" in allow
        and "fy.task.dispatch.gpu" in table["scheduler"]["publish"]["allow"]
    )
