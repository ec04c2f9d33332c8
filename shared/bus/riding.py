"""JetStream API calls that ride a NATS restart: the one place that decides it for every caller.

``Bus.js`` and ``Bus.kv()`` hand out these wrappers around nats-py's ``JetStreamContext``,
``KeyValue`` and ``ObjectStore``: every coroutine method is run through ``Bus.through_outage``,
so a stream lookup, a KV read or a compare-and-set made while the nats-server restarts waits
for it (up to ``bus.publish_retry_for``) instead of failing the step that made it. What they
hand back (a ``KeyValue`` from ``key_value()``, an ``ObjectStore``) rides too.

Retrying is safe for everything flowyard asks JetStream: reads and lookups are idempotent; a
publish carries a de-dup id; a ``create`` or a compare-and-set whose first try landed before
the connection dropped fails its retry with "wrong last sequence", which every caller already
handles as "someone wrote first" — re-read, find its own write, do nothing twice (the same
path a redelivered message takes). Pull subscriptions' ``fetch`` is not a JetStream API call
and is not wrapped: the consumer loop has its own outage handling.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

T = TypeVar("T")
Ride = Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]


class Riding:
    """``target`` with its coroutine methods retried through ``ride`` while NATS is away."""

    def __init__(self, target: Any, ride: Ride, what: str) -> None:
        self.raw = target  # the unwrapped object, for a caller that must fail fast
        self._ride = ride
        self._what = what

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def riding(*args: Any, **kwargs: Any) -> Any:
            result = await self._ride(lambda: attr(*args, **kwargs), f"{self._what} {name}")
            if isinstance(result, KeyValue | ObjectStore):
                # Named by its bucket, so a long outage's message says which one it was reading.
                return Riding(result, self._ride, f"{type(result).__name__} {getattr(result, '_name', '')}".strip())
            return result

        return riding


def riding(target: T, ride: Ride, what: str) -> T:
    """``target``, riding NATS restarts; typed as the object it wraps."""
    return Riding(target, ride, what)  # type: ignore[return-value]


def raw(target: T) -> T:
    """The object a ``riding()`` wrapper holds (or ``target`` itself)."""
    return target.raw if isinstance(target, Riding) else target  # type: ignore[return-value]
