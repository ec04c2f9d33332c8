"""Token buckets per caller: ``per_minute`` refill, ``burst`` capacity. Pure; the clock is passed in."""

from __future__ import annotations

import math
from collections import OrderedDict


class RateLimiter:
    def __init__(self, per_minute: int, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """0 when the request may go ahead; otherwise the seconds until it may (Retry-After)."""
        if not self.enabled:
            return 0.0
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        # Bounded memory however many addresses call: the least recently seen are forgotten
        # (a forgotten caller starts with a full bucket, which is what a new caller gets anyway).
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
