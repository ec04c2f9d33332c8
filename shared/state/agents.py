"""The agent registry: ``kind: Agent`` documents kept in the ``fy_agents`` KV bucket by name."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.workflow.model import AgentDoc

_decoder = msgspec.json.Decoder(AgentDoc)
_encoder = msgspec.json.Encoder()


async def register(bus: Bus, agents: Iterable[AgentDoc]) -> list[str]:
    kv = await bus.kv(subjects.AGENTS_BUCKET)
    names = []
    for agent in agents:
        await kv.put(agent.metadata.name, _encoder.encode(agent))
        names.append(agent.metadata.name)
    return names


async def lookup(bus: Bus, names: Iterable[str] | None, *, but: Iterable[str] = ()) -> dict[str, AgentDoc]:
    """The registered agents among ``names`` (None: every one, for `capability:` nodes), leaving
    out those in ``but``; unknown names are simply absent."""
    kv = await bus.kv(subjects.AGENTS_BUCKET)
    if names is None:  # from the stream's subjects: right after a write too (Bus.kv_keys)
        names = await bus.kv_keys(subjects.AGENTS_BUCKET)
    wanted = sorted(n for n in set(names) - set(but) if subjects.TOKEN.match(n))  # others cannot be keys

    async def one(name: str) -> AgentDoc | None:
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return None
        return _decoder.decode(entry.value) if entry.value else None

    # Concurrent direct gets: a capability's plan reads every registered agent, on the planner's
    # path for each run; one round trip's wait instead of one per agent.
    docs = await asyncio.gather(*(one(n) for n in wanted))
    return {name: doc for name, doc in zip(wanted, docs, strict=True) if doc is not None}
