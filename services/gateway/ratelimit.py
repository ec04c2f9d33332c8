"""Token buckets per caller: ``per_minute`` refill, ``burst`` capacity, shared by every replica.

The arithmetic (``spend``) is pure, the clock passed in. ``SharedLimiter`` keeps each caller's
bucket in NATS KV (``fy_limits``, key ``_gateway.<sha256 of the caller>``: no user name or
address in a key) with compare-and-set, so N gateways allow the configured rate, not N times
it. A replica remembers the last state it wrote: in the steady state a request costs one KV
update (no read), and a caller already over the limit costs no NATS round trip at all (others
can only have spent more since). While NATS is unreachable, each replica limits on its own
(``RateLimiter``) rather than refusing everyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog

from shared.bus.connection import Bus
from shared.bus.riding import raw
from shared.contract import subjects
from shared.contract.errors import ConfigurationError

log = structlog.get_logger("flowyard.gateway")

State = tuple[float, float]  # (tokens, at): the bucket's tokens at time ``at`` (epoch seconds)
_TRIES = 10  # compare-and-set rounds before the request goes ahead on this replica's count


def spend(state: State | None, now: float, rate: float, burst: float, n: int = 1) -> tuple[State, list[float]]:
    """``n`` requests at ``now``: the bucket after them, and per request 0 (it may go) or the
    seconds until it may (the first ones take the tokens there are)."""
    tokens, at = state if state is not None else (burst, now)
    tokens = min(burst, tokens + max(0.0, now - at) * rate)
    granted = min(n, int(tokens))
    left = tokens - granted
    wait = (1.0 - left) / rate
    return (left, now), [0.0] * granted + [wait] * (n - granted)


class RateLimiter:
    """The buckets of one process, bounded in memory."""

    def __init__(self, per_minute: int, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, State] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """0 when the request may go ahead; otherwise the seconds until it may (Retry-After)."""
        if not self.enabled:
            return 0.0
        self._buckets[key], (wait,) = spend(self._buckets.pop(key, None), now, self.rate, self.burst)
        # Bounded memory however many addresses call: the least recently seen are forgotten
        # (a forgotten caller starts with a full bucket, which is what a new caller gets anyway).
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class SharedLimiter:
    def __init__(
        self, bus: Bus, per_minute: int, burst: int, *, clock: Callable[[], float] = time.time, max_keys: int = 100_000
    ) -> None:
        self.bus = bus
        self.local = RateLimiter(per_minute, burst, max_keys=max_keys)
        self.max_keys = max_keys
        self._now = clock
        # The last state this replica read or wrote per bucket, with the entry's revision.
        self._seen: OrderedDict[str, tuple[State | None, int]] = OrderedDict()
        self._waiting: dict[str, list[asyncio.Future[float]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._degraded = False

    @property
    def enabled(self) -> bool:
        return self.local.enabled

    async def take(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        now = self._now()
        if not self.bus.connected:
            return self._alone(key, now)
        try:
            wait = await self._shared(_kv_key(key))
        except (TimeoutError, nats.errors.Error, ConfigurationError) as exc:
            return self._alone(key, now, exc)
        if self._degraded:
            self._degraded = False
            log.info("rate limits shared again across gateway replicas")
        return wait

    def _alone(self, key: str, now: float, exc: BaseException | None = None) -> float:
        if not self._degraded:
            self._degraded = True
            log.warning(
                "rate limits held by this gateway alone until NATS answers again",
                error=type(exc).__name__ if exc else "disconnected",
            )
        return self.local.take(key, now)

    async def _shared(self, key: str) -> float:
        """This request's wait. Requests for one bucket that arrive while its update is on its
        way go together in the next one: one compare-and-set for all, not one each racing
        (a busy token, e.g. a CI bot's, would otherwise lose most of its rounds)."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(done)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                if not done.done():
                    batch = self._waiting.pop(key, [])
                    try:
                        waits = await self._spend(key, len(batch), self._now())
                    except BaseException as exc:
                        for fut in batch:
                            if fut is not done and not fut.done():
                                fut.set_exception(exc)
                        raise
                    for fut, wait in zip(batch, waits, strict=True):
                        if not fut.done():
                            fut.set_result(wait)
        finally:
            if not self._waiting.get(key):
                self._locks.pop(key, None)
                self._waiting.pop(key, None)
        return done.result()

    async def _spend(self, key: str, n: int, now: float) -> list[float]:
        # Not riding a NATS restart (shared.bus.riding): a limit never holds a request up; the
        # replica counts alone instead.
        kv = raw(await self.bus.kv(subjects.LIMITS_BUCKET))
        rate, burst = self.local.rate, self.local.burst
        seen = self._seen.pop(key, None)
        for _ in range(_TRIES):
            state, revision = seen if seen is not None else await self._read(kv, key)
            after, waits = spend(state, now, rate, burst, n)
            if waits[0] > 0:
                # Refused by this replica's count (others can only have spent more since): no
                # round trip. After a fresh read it is the shared count that refuses.
                self._remember(key, (after, revision))
                return waits
            data = f"{after[0]:.6f} {after[1]:.6f}".encode()
            try:
                written = await kv.update(key, data, last=revision) if revision else await kv.create(key, data)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                seen = None  # another replica spent meanwhile (or the entry expired): read it
                continue
            self._remember(key, (after, written))
            return waits
        return [0.0] * n  # a bucket this contended is being spent on every replica at once: let it go

    async def _read(self, kv, key: str) -> tuple[State | None, int]:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        try:
            tokens, at = (float(x) for x in (entry.value or b"").split())
        except ValueError:
            return None, entry.revision or 0  # not ours to read: start it afresh
        return (tokens, at), entry.revision or 0

    def _remember(self, key: str, seen: tuple[State | None, int]) -> None:
        self._seen[key] = seen
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)


def _kv_key(key: str) -> str:
    # Agents' counters are "<agent>.<kind>.<window>"; an agent name cannot start with "_".
    return "_gateway." + hashlib.sha256(key.encode()).hexdigest()[:40]


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
