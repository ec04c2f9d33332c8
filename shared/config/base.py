"""The base of every configuration section, and the duration settings' checks."""

from __future__ import annotations

import msgspec

from shared.formats.durations import parse_duration


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A section of the configuration file: unknown fields are errors (typos are caught)."""


def duration(value: str | float, name: str) -> float:
    """``value`` as seconds, or a ValueError naming the setting."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def seconds(value: str) -> float:
    """A validated duration setting in seconds."""
    return parse_duration(value)
