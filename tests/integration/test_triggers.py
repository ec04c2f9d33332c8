"""Triggers with real processes: NATS events (durable while the planner is down, de-duplicated,
filtered, refused) and schedules (once per time across two planners, overlap, catch-up)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from shared.bus.server import NatsServer

from .stack import Stack

TRIGGERED = Path(__file__).parent / "workflows" / "triggered.yaml"


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("triggers")
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir)
    try:
        s.start_all()
        done = s.cli("workflows", "apply", str(TRIGGERED))
        assert done.returncode == 0, done.stderr
        yield s
    finally:
        s.stop_all()
        server.stop()


def runs_of(stack: Stack, workflow: str) -> list[dict]:
    listed = json.loads(stack.cli("runs", "list", "--limit", "1000", "--json").stdout)
    return [r for r in listed if r["workflow"] == workflow]


def wait_for(check, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def publish(url: str, subject: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    nc = await nats.connect(url)
    try:
        await nc.publish(subject, body, headers=headers)
        await nc.flush()
    finally:
        await nc.close()


async def triggers_idle(url: str) -> None:
    """Every captured event has been handled (the planner's trigger consumer has nothing pending)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for _ in range(600):
            info = await js.consumer_info("FY_TRIGGERS", "planner-triggers")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("trigger events still pending")
    finally:
        await nc.close()


def counts(stack: Stack, tid: str) -> dict:
    listed = json.loads(stack.cli("triggers", "list", "--json").stdout)
    return next(t for t in listed if t["id"] == tid)["counts"]


def test_an_event_published_while_the_planner_is_down_starts_its_run(stack: Stack) -> None:
    stack.kill("planner")
    body = json.dumps({"service": "billing", "env": "prod"}).encode()
    asyncio.run(publish(stack.server.url, "deploys.billing", body, {"Nats-Msg-Id": f"down-{time.time_ns()}"}))
    stack.start("planner")
    found = wait_for(
        lambda: [r for r in runs_of(stack, "on-deploy") if r["trigger"].get("data", {}).get("service") == "billing"],
        what="the run",
    )
    run = found[0]
    assert run["trigger"]["type"] == "nats" and run["trigger"]["subject"] == "deploys.billing"
    assert run["requested_by"] == "trigger:nats" and run["workflow_version"] == 1
    done = json.loads(stack.cli("runs", "show", run["run_id"], "--json").stdout)
    wait_for(
        lambda: json.loads(stack.cli("runs", "show", run["run_id"], "--json").stdout)["status"] == "succeeded",
        what="success",
    )
    assert done["workflow"] == "on-deploy"


def test_duplicates_filters_refusals_and_a_hundred_events(stack: Stack) -> None:
    url = stack.server.url
    before = len(runs_of(stack, "on-deploy"))

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            same = {"ce-id": f"dup-{time.time_ns()}"}
            # The same event twice (same CloudEvents id): one run.
            await nc.publish("deploys.dup", json.dumps({"service": "dup", "env": "prod"}).encode(), headers=same)
            await nc.publish("deploys.dup", json.dumps({"service": "dup", "env": "prod"}).encode(), headers=same)
            # Filtered out by `when`, and a body that is not JSON.
            await nc.publish("deploys.dev", json.dumps({"service": "devsvc", "env": "dev"}).encode())
            await nc.publish("deploys.bad", b"not json at all")
            # JetStream publishes are captured too; 100 distinct events start 100 runs.
            for i in range(100):
                await js.publish("deploys.many", json.dumps({"service": f"s{i}", "env": "prod"}).encode())
            await nc.flush()
        finally:
            await nc.close()
        await triggers_idle(url)

    asyncio.run(go())
    mine = runs_of(stack, "on-deploy")[: len(runs_of(stack, "on-deploy")) - before]
    services = [r["trigger"]["data"]["service"] for r in mine]
    assert services.count("dup") == 1
    assert "devsvc" not in services
    assert sorted(s for s in services if s.startswith("s") and s[1:].isdigit()) == sorted(f"s{i}" for i in range(100))
    c = counts(stack, "on-deploy#0")
    assert c["refused"] >= 1 and c["deduplicated"] >= 1 and c["fired"] >= 102
    # The same, as the planner's metrics (names are a contract).
    port = stack.http_port("planner")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for name in ("fired", "deduplicated", "refused"):
        assert f'flowyard_triggers_{name}_total{{kind="nats",workflow="on-deploy"}}' in metrics, name


def test_deleting_a_workflow_switches_its_trigger_off(stack: Stack, tmp_path: Path) -> None:
    doc = tmp_path / "gone.yaml"
    doc.write_text(
        TRIGGERED.read_text().split("---\napiVersion: flowyard/v1\nkind: Workflow")[0]
        + "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: gone}\nspec:\n"
        "  triggers: [{nats: {subject: gone.now}}]\n  nodes: [{id: a, agent: tnote}]\n"
    )
    assert stack.cli("workflows", "apply", str(doc)).returncode == 0
    listed = wait_for(
        lambda: [t for t in json.loads(stack.cli("triggers", "list", "--json").stdout) if t["workflow"] == "gone"],
        what="trigger listed",
    )
    assert listed[0]["kind"] == "nats" and "gone.now" in listed[0]["description"]
    asyncio.run(publish(stack.server.url, "gone.now", b"{}"))
    wait_for(lambda: runs_of(stack, "gone"), what="a run of gone")
    assert stack.cli("workflows", "delete", "gone").returncode == 0
    asyncio.run(publish(stack.server.url, "gone.now", b"{}"))
    asyncio.run(triggers_idle(stack.server.url))
    assert len(runs_of(stack, "gone")) == 1


def test_an_event_published_right_after_the_apply_is_captured(stack: Stack, tmp_path: Path) -> None:
    doc = tmp_path / "quick.yaml"
    doc.write_text(
        TRIGGERED.read_text().split("---\napiVersion: flowyard/v1\nkind: Workflow")[0]
        + "---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: quick}\nspec:\n"
        "  triggers: [{nats: {subject: quick.events}}]\n  nodes: [{id: a, agent: tnote}]\n"
    )
    assert stack.cli("workflows", "apply", str(doc)).returncode == 0
    asyncio.run(publish(stack.server.url, "quick.events", b'{"n": 1}'))  # no waiting in between
    run = wait_for(lambda: runs_of(stack, "quick"), what="the run")[0]
    assert run["trigger"]["data"] == {"n": 1}
    assert stack.cli("workflows", "delete", "quick").returncode == 0
