"""Counters in fixed windows, held in NATS KV (``fy_limits``) so every replica shares them.

An executor asks before it starts a limited agent (``take``) and adds the tokens the attempt
used afterwards (``add_tokens``); a provider's "rate limited" puts the agent in a cool-down
(``cool``) that routing on every replica respects. Updates are compare-and-set on the entry's
revision, so two replicas counting at once never lose a count. Windows are fixed (this minute,
this hour, in UTC epoch terms): at most twice the rate can pass across a window's edge, the same
trade every fixed-window limiter makes for one KV entry per window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from shared.bus.connection import Bus
from shared.contract import subjects

_TRIES = 20  # compare-and-set rounds before giving up on a busy key (replicas racing)


@dataclass(frozen=True, slots=True)
class Limit:
    per_minute: int | None = None
    per_hour: int | None = None
    tokens_per_minute: int | None = None


def _key(agent: str, kind: str, window: int) -> str:
    return f"{agent}.{kind}.{window}"


class Limits:
    def __init__(self, bus: Bus, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self._now = clock

    async def _kv(self) -> KeyValue:
        return await self.bus.kv(subjects.LIMITS_BUCKET)

    async def _read(self, key: str) -> tuple[float, int | None]:
        kv = await self._kv()
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return 0.0, None
        try:
            return float(entry.value or b"0"), entry.revision
        except ValueError:
            return 0.0, entry.revision

    async def _add(self, key: str, amount: float, ceiling: float | None) -> bool:
        """Add ``amount`` unless that passes ``ceiling``; True when added."""
        kv = await self._kv()
        for _ in range(_TRIES):
            value, revision = await self._read(key)
            if ceiling is not None and value + amount > ceiling:
                return False
            data = f"{value + amount:g}".encode()
            try:
                if revision is None:
                    await kv.create(key, data)
                else:
                    await kv.update(key, data, last=revision)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica counted first: read again
        raise RuntimeError(f"the limit counter {key} stayed too busy to update")

    async def take(self, agent: str, limit: Limit) -> float | None:
        """Count one request now, or the seconds until a window has room (nothing counted)."""
        now = self._now()
        minute, hour = int(now // 60), int(now // 3600)
        if limit.tokens_per_minute:
            used, _ = await self._read(_key(agent, "t", minute))
            if used >= limit.tokens_per_minute:
                return (minute + 1) * 60 - now
        if limit.per_hour and not await self._add(_key(agent, "h", hour), 1, limit.per_hour):
            return (hour + 1) * 3600 - now
        if limit.per_minute and not await self._add(_key(agent, "m", minute), 1, limit.per_minute):
            if limit.per_hour:  # give the hour's count back: this request did not go
                await self._add(_key(agent, "h", hour), -1, None)
            return (minute + 1) * 60 - now
        return None

    async def add_tokens(self, agent: str, tokens: int) -> None:
        if tokens > 0:
            await self._add(_key(agent, "t", int(self._now() // 60)), tokens, None)

    async def cool(self, agent: str, seconds: float) -> None:
        """Pass ``agent`` over for ``seconds`` (a provider said it is rate-limited)."""
        kv = await self._kv()
        await kv.put(f"{agent}.cool", f"{self._now() + seconds:.3f}".encode())

    async def cooling(self, agent: str) -> float | None:
        """Seconds left of ``agent``'s cool-down, or None."""
        until, _ = await self._read(f"{agent}.cool")
        left = until - self._now()
        return left if left > 0 else None
