"""The status index of runs: `GET /v1/runs?status=` and `flowyard runs list --status` read only the
runs in that status (and workflow), and a stack whose ended runs predate the index gets them
indexed once by the scheduler, listing every record until it has."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.api.runs import list_records
from shared.bus.connection import Bus
from shared.bus.server import NatsServer
from shared.config.settings import BusConfig, NatsConfig
from shared.contract import subjects

from .stack import Stack

API = Path(__file__).parent / "workflows" / "api.yaml"


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("run-index")
    server = NatsServer(workdir / "nats").start()
    stack = Stack(server, workdir).start_all()
    try:
        for _ in range(3):
            code, body, err = stack.run_json(str(API), "--workflow", "hello", "-i", "who=ann")
            assert code == 0 and body["status"] == "succeeded", err
        for _ in range(2):
            code, body, err = stack.run_json(str(API), "--workflow", "broken")
            assert code == 1 and body["status"] == "failed", err
        yield stack
    finally:
        stack.stop_all()
        server.stop()


class Counted:
    """The runs bucket with its reads counted: what a list costs."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.reads: list[str] = []

    async def __aenter__(self) -> Counted:
        await self.bus.connect()
        kv = await self.bus.kv(subjects.RUNS_BUCKET)
        get = kv.get

        async def counted(key: str, *args: object, **kwargs: object) -> object:
            self.reads.append(key)
            return await get(key, *args, **kwargs)

        kv.get = counted  # type: ignore[method-assign]
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.bus.close()


def bus(stack: Stack) -> Bus:
    return Bus(NatsConfig(url=stack.server.url), BusConfig(), name=f"idx{secrets.token_hex(3)}")


async def wait_indexed(b: Bus) -> None:
    # The scheduler publishes the marker once its backfill is done: wait on that message.
    sub = await b.js.subscribe(subjects.ENDED_INDEXED, ordered_consumer=True)
    try:
        await sub.next_msg(timeout=30)
    finally:
        await sub.unsubscribe()


def test_a_status_list_reads_only_the_runs_in_that_status(stack: Stack) -> None:
    async def go() -> None:
        async with Counted(bus(stack)) as c:
            await asyncio.wait_for(wait_indexed(c.bus), 30)
            failed = await list_records(c.bus, 50, status="failed")
            assert [r.workflow for r in failed] == ["broken", "broken"]
            assert len(c.reads) == 2  # not the five records there are
            c.reads.clear()
            hello = await list_records(c.bus, 50, workflow="hello", status="succeeded")
            assert len(hello) == 3 and len(c.reads) == 3
            c.reads.clear()
            assert await list_records(c.bus, 50, workflow="hello", status="failed") == []
            assert c.reads == []
            assert await list_records(c.bus, 50, status="running") == [] and c.reads == []
            # Of one workflow, any status: its ended runs and its active ones, no other's.
            assert len(await list_records(c.bus, 50, workflow="broken")) == 2 and len(c.reads) == 2
            everything = await list_records(c.bus, 50)
            assert len(everything) == 5
            assert [r.run_id for r in everything] == sorted((r.run_id for r in everything), reverse=True)

    asyncio.run(go())
    listed = stack.cli("runs", "list", "--status", "failed", "--workflow", "broken", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["status"] for r in json.loads(listed.stdout)] == ["failed", "failed"]
    none = stack.cli("runs", "list", "--status", "succeeded", "--workflow", "broken", "--json")
    assert none.returncode == 0 and json.loads(none.stdout) == []


def test_a_bad_status_is_a_usage_error_naming_the_choices(stack: Stack) -> None:
    done = stack.cli("runs", "list", "--status", "sleeping")
    assert done.returncode == 2
    assert "sleeping" in done.stderr and "succeeded" in done.stderr
    assert stack.cli("runs", "list", "--limit", "0").returncode == 2


def test_runs_ended_before_the_index_are_indexed_once_and_listed_meanwhile(stack: Stack) -> None:
    async def go() -> None:
        async with Counted(bus(stack)) as c:
            await asyncio.wait_for(wait_indexed(c.bus), 30)
            # As a stack from before the index: no ended entries, no marker. The scheduler is
            # stopped first so that it cannot index again before the list below.
            stack.kill("scheduler")
            await c.bus.js.purge_stream(subjects.ACTIVE_STREAM, subject=subjects.ENDED_SUBJECTS)
            assert not await c.bus.active(subjects.ENDED_RUNS)
            # Until the scheduler has indexed them, a status list reads every record and is right.
            assert len(await list_records(c.bus, 50, status="failed")) == 2
            assert len(c.reads) == 5
            stack.start("scheduler")
            await asyncio.wait_for(wait_indexed(c.bus), 60)
            ended = await c.bus.active(subjects.ENDED_RUNS)
            assert sorted(s.split(".")[3] for s in ended) == ["failed"] * 2 + ["succeeded"] * 3
            c.reads.clear()
            assert len(await list_records(c.bus, 50, status="succeeded")) == 3 and len(c.reads) == 3

    asyncio.run(go())
    assert "ended runs indexed" in stack.log_path("scheduler").read_text()
