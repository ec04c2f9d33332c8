"""Reading a whole KV bucket: every key's value, read concurrently (one request each, at once)."""

from __future__ import annotations

import asyncio

import nats.js.errors

from shared.bus.connection import Bus


async def values(bus: Bus, bucket: str, *, newest_first: bool = False) -> list[bytes]:
    """The values of every key, in key order (reversed with ``newest_first``: ids that start with
    the time sort by it). A key removed between listing and reading is left out; other errors rise."""
    kv = await bus.kv(bucket)
    keys = sorted(await bus.kv_keys(bucket), reverse=newest_first)
    entries = await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True)
    out = []
    for entry in entries:
        if isinstance(entry, nats.js.errors.KeyNotFoundError):
            continue  # removed between listing and reading (a delete marker reads the same)
        if isinstance(entry, BaseException):
            raise entry
        if entry.value:
            out.append(entry.value)
    return out
