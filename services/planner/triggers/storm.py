"""Storm control (``max_runs: {count, per}``): a window opens at the first event and lasts ``per``."""

from __future__ import annotations

import msgspec


class Window(msgspec.Struct, kw_only=True):
    start: float  # epoch seconds
    count: int = 0  # runs started in it


def admit(window: Window | None, now: float, count: int, per: float) -> tuple[Window, bool]:
    """The window after this event, and whether the event may start a run."""
    if window is None or now - window.start >= per:
        return Window(start=now, count=1), True
    if window.count >= count:
        return window, False
    return Window(start=window.start, count=window.count + 1), True
