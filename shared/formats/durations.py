"""Durations as people write them in YAML and environment variables: ``500ms``, ``30s``, ``5m``, ``1h30m``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """Return seconds; a bare number is seconds. Raises ValueError with the accepted forms."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}: use a number of seconds or a string like 30s, 5m, 1h30m")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return float(text)
    s = text.strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        try:
            return parse_duration(float(s))
        except ValueError:
            pass
        raise ValueError(f"invalid duration {text!r}: write it like 500ms, 30s, 5m or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:g}s" if secs else f"{int(minutes)}m"
