"""A circuit breaker per agent image: after N infrastructure failures in a row (image missing,
daemon errors), stop taking that image's work for a cool-down and fail its nodes fast."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0
    last_error: str = ""


class Breaker:
    def __init__(self, *, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._states: dict[str, _State] = {}

    def refusal(self, key: str) -> str | None:
        """Why this image's work is refused right now, or None."""
        state = self._states.get(key)
        if state is None or state.open_until <= self.clock():
            return None
        wait = state.open_until - self.clock()
        return (
            f"the executor stopped taking work for {key} after {state.failures} failures in a row to start it "
            f"(last: {state.last_error}); it tries again in {wait:.0f}s — fix the cause (`flowyard doctor`)"
        )

    def open_count(self) -> int:
        """How many images' work is refused right now."""
        now = self.clock()
        return sum(1 for state in self._states.values() if state.open_until > now)

    def record(self, key: str, *, infrastructure_failure: bool, error: str = "") -> bool:
        """Count an attempt's start; True when this failure opened the breaker."""
        if not infrastructure_failure:
            self._states.pop(key, None)
            return False
        state = self._states.setdefault(key, _State())
        state.failures += 1
        state.last_error = error
        if state.failures >= self.threshold:
            state.open_until = self.clock() + self.cooldown
            return True
        return False
