"""Which runtimes the stack's executors run agents with, as the executors advertise them.

Each executor keeps ``fy_executors/POOL.INSTANCE`` = ``{pool, runtime}`` fresh while it runs (the
bucket forgets an entry 30 s after its last refresh). The planner reads them to refuse a run whose
agents cannot run there — an agent with no image on executors that run Docker containers — before
anything starts, rather than failing its nodes one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import msgspec
import nats.errors
import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects

REFRESH_S = 10.0


class ExecutorInfo(msgspec.Struct, kw_only=True):
    pool: str
    runtime: str
    instance: str = ""


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(ExecutorInfo)


def key(pool: str, instance: str) -> str:
    return f"{pool}.{re.sub(r'[^A-Za-z0-9_-]', '-', instance)}"


async def announce(bus: Bus, info: ExecutorInfo) -> None:
    """The first entry, before the executor takes work (so a run planned right after sees it)."""
    kv = await bus.kv(subjects.EXECUTORS_BUCKET)
    await kv.put(key(info.pool, info.instance), _enc.encode(info))


async def advertise(bus: Bus, info: ExecutorInfo) -> None:
    """Keep this executor's entry fresh until cancelled; remove it on the way out."""
    kv = await bus.kv(subjects.EXECUTORS_BUCKET)
    name = key(info.pool, info.instance)
    try:
        while True:
            await asyncio.sleep(REFRESH_S)
            # NATS away for a moment: the next refresh puts it back.
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
                await kv.put(name, _enc.encode(info))
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError, asyncio.CancelledError):
            await asyncio.shield(kv.delete(name))


async def live(bus: Bus) -> list[ExecutorInfo]:
    kv = await bus.kv(subjects.EXECUTORS_BUCKET)
    keys = await bus.kv_keys(subjects.EXECUTORS_BUCKET)
    found = []
    for entry in await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True):
        if isinstance(entry, BaseException) or not entry.value:
            continue
        try:
            found.append(_dec.decode(entry.value))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return found
