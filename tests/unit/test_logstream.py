"""An attempt's stderr on its way to `flowyard logs`: lines, order, redaction, the cap."""

from __future__ import annotations

import asyncio

from services.executor.logstream import LogStream
from shared.contract.messages import AgentSnapshot, TaskDispatched, TaskLog

TASK = TaskDispatched(run_id="r1", workflow="w", node_id="n", attempt=2, agent=AgentSnapshot(name="a"))


async def collect(chunks: list[bytes], *, max_bytes: int = 1 << 20, secrets: dict | None = None) -> list[TaskLog]:
    sent: list[TaskLog] = []

    async def publish(event: TaskLog) -> None:
        sent.append(event)

    stream = LogStream(TASK, publish, secrets=secrets or {}, max_bytes=max_bytes)
    for chunk in chunks:
        stream.feed(chunk)
        await asyncio.sleep(0)
    await stream.close()
    return sent


async def test_lines_are_joined_across_chunks_in_order() -> None:
    sent = await collect([b"first li", b"ne\nsecond\nthi", b"rd without newline"])
    assert [line for e in sent for line in e.lines] == ["first line", "second", "third without newline"]
    assert [e.seq for e in sent] == list(range(len(sent)))
    assert all(e.attempt == 2 and e.node_id == "n" for e in sent)


async def test_secrets_are_redacted_even_when_split_across_chunks() -> None:
    sent = await collect([b"token=sup", b"er-secret-1\n"], secrets={"T": "super-secret-1"})
    assert sent[0].lines == ["token=[redacted]"]


async def test_the_cap_drops_later_lines_and_says_so() -> None:
    sent = await collect([b"x" * 50 + b"\n"] * 10, max_bytes=200)
    lines = [line for e in sent for line in e.lines]
    assert 1 <= len(lines) <= 4
    assert sent[-1].truncated is True


async def test_publish_failures_never_fail_the_attempt() -> None:
    async def broken(event: TaskLog) -> None:
        raise ConnectionError("nats down")

    stream = LogStream(TASK, broken, secrets={}, max_bytes=1000)
    stream.feed(b"hello\n")
    await stream.close()  # does not raise
