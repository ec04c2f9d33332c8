"""The gateway's pure parts: tokens, roles, rate limits, the run status people see."""

from __future__ import annotations

import pytest

from services.gateway.auth import User, Users, bearer
from services.gateway.ratelimit import RateLimiter, retry_after, spend
from shared.api.views import run_status
from shared.contract.messages import NodeRecord, RunRecord


def test_bearer_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer   abc  ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None and bearer("") is None and bearer(None) is None


def test_users_authenticate_by_token_only() -> None:
    users = Users([(User("ann", frozenset({"viewer"})), "t-ann"), (User("bob", frozenset({"admin"})), "t-bob")])
    assert users.authenticate("t-ann") == User("ann", frozenset({"viewer"}))
    assert users.authenticate("t-bob").name == "bob"  # type: ignore[union-attr]
    assert users.authenticate("t-an") is None and users.authenticate("t-ann ") is None
    assert users.authenticate("\udcff") is None  # undecodable bytes never crash the comparison


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        ({"viewer"}, {"viewer"}),
        ({"operator"}, {"viewer", "operator"}),
        ({"approver"}, {"viewer", "approver"}),
        ({"admin"}, {"viewer", "operator", "approver", "admin"}),
        ({"operator", "approver"}, {"viewer", "operator", "approver"}),
    ],
)
def test_roles(roles: set[str], allowed: set[str]) -> None:
    user = User("u", frozenset(roles))
    assert {r for r in ("viewer", "operator", "approver", "admin") if user.may(r)} == allowed


def test_rate_limiter_burst_then_refill() -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 0.0)
    assert wait == pytest.approx(1.0) and retry_after(wait) == "1"
    assert limiter.take("b", 0.0) == 0.0  # each caller has its own bucket
    assert limiter.take("a", 1.0) == 0.0  # one token back after a second
    assert limiter.take("a", 1.0) > 0
    assert RateLimiter(per_minute=0, burst=1).take("a", 0.0) == 0.0  # off


def test_requests_spent_together_take_the_tokens_there_are() -> None:
    # Five requests of one caller in one update of its shared bucket (burst 3, one token a second).
    state, waits = spend(None, 10.0, 1.0, 3.0, 5)
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3:] == [pytest.approx(1.0)] * 2
    assert state == (0.0, 10.0)
    state, waits = spend(state, 11.5, 1.0, 3.0, 2)  # 1.5 tokens back: one goes, one waits half a second
    assert waits == [0.0, pytest.approx(0.5)] and state == (pytest.approx(0.5), 11.5)
    # A clock behind the stored one (another replica's) refills nothing rather than going negative.
    assert spend((0.0, 20.0), 19.0, 1.0, 3.0)[1] == [pytest.approx(1.0)]


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, max_keys=100)
    for i in range(1000):
        limiter.take(f"addr:{i}", 0.0)
    assert len(limiter._buckets) == 100


def test_run_status_while_it_goes() -> None:
    rec = RunRecord(run_id="r1", workflow="w", nodes={"a": NodeRecord(status="running")})
    assert run_status(rec) == "running"
    assert run_status(RunRecord(run_id="r1", workflow="w", queued=True)) == "pending"
    waiting = RunRecord(run_id="r1", workflow="w", nodes={"a": NodeRecord(approval="pending"), "b": NodeRecord()})
    assert run_status(waiting) == "waiting"
    both = RunRecord(
        run_id="r1", workflow="w", nodes={"a": NodeRecord(approval="pending"), "b": NodeRecord(status="running")}
    )
    assert run_status(both) == "running"
    assert run_status(RunRecord(run_id="r1", workflow="w", status="failed")) == "failed"


def test_a_run_view_carries_the_graph_for_drawing_it() -> None:
    from shared.api.views import pending_view, run_view
    from shared.contract.messages import AgentSnapshot, NodeRecord, Plan, PlannedNode, RunRecord, RunRequested

    plan = Plan(
        nodes=[
            PlannedNode(id="fetch", agent=AgentSnapshot(name="fetcher")),
            PlannedNode(id="check", agent=AgentSnapshot(name="checker"), needs=["fetch"], foreach="{{ x }}"),
        ]
    )
    record = RunRecord(run_id="r1", workflow="w", plan=plan, nodes={"fetch": NodeRecord(), "check": NodeRecord()})
    nodes = run_view(record).nodes
    assert (nodes["fetch"].agent, nodes["fetch"].needs, nodes["fetch"].foreach) == ("fetcher", [], False)
    assert (nodes["check"].agent, nodes["check"].needs, nodes["check"].foreach) == ("checker", ["fetch"], True)
    definition = {
        "spec": {"nodes": [{"id": "a", "agent": "x"}, {"id": "b", "agent": "y", "needs": ["a"], "foreach": [1]}]}
    }
    request = RunRequested(run_id="r2", workflow="w", definition=definition)
    pending = pending_view(request).nodes
    assert pending["b"].needs == ["a"] and pending["b"].foreach and pending["a"].agent == "x"


def test_a_steps_input_is_shown_with_secret_looking_values_masked() -> None:
    from shared.api.views import run_view
    from shared.contract.messages import NodeRecord, RunRecord

    node = NodeRecord(input={"host": "db-3", "api_token": "s3cret", "nested": [{"Password": "x", "port": 5432}]})
    view = run_view(RunRecord(run_id="r1", workflow="w", nodes={"a": node}))
    assert view.nodes["a"].input == {
        "host": "db-3",
        "api_token": "[masked]",
        "nested": [{"Password": "[masked]", "port": 5432}],
    }
