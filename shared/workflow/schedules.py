"""When a cron trigger fires: five-field expressions (cronsim, Debian cron's daylight-saving rules)
or fixed intervals, in the trigger's timezone. Pure; the planner, the CLI and the gateway all ask.

Daylight saving, as Debian's cron does it: a time that does not exist (spring forward) fires
once, at the first moment after the jump; a fixed time in a repeated hour (fall back) fires once.
Intervals (``every``) are aligned to multiples of the interval since the epoch, so every planner
replica computes the same times.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

from cronsim import CronSim

from shared.formats.durations import parse_duration
from shared.workflow.model import CronTrigger
from shared.workflow.triggers import zone


def next_time(cron: CronTrigger, after: datetime) -> datetime:
    """The first scheduled time strictly after ``after`` (aware), in UTC."""
    if cron.every is not None:
        step = parse_duration(cron.every)
        t = (math.floor(after.timestamp() / step) + 1) * step
        return datetime.fromtimestamp(t, UTC)
    assert cron.schedule is not None
    local = after.astimezone(zone(cron.timezone))
    return next(iter(CronSim(cron.schedule, local))).astimezone(UTC)


def last_time(cron: CronTrigger, at: datetime) -> datetime:
    """The latest scheduled time at or before ``at`` (aware), in UTC."""
    if cron.every is not None:
        step = parse_duration(cron.every)
        return datetime.fromtimestamp(math.floor(at.timestamp() / step) * step, UTC)
    assert cron.schedule is not None
    local = (at.replace(microsecond=0) + timedelta(seconds=1)).astimezone(zone(cron.timezone))
    return next(iter(CronSim(cron.schedule, local, reverse=True))).astimezone(UTC)


def jitter_s(cron: CronTrigger, trigger_id: str, scheduled: datetime) -> float:
    """A delay in [0, jitter): the same on every replica (derived, not random), different per time."""
    spread = parse_duration(cron.jitter)
    if spread <= 0:
        return 0.0
    digest = hashlib.sha256(f"{trigger_id}@{scheduled.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * spread


def catchup(cron: CronTrigger, last_fired: datetime | None, now: datetime) -> datetime | None:
    """After downtime: the most recent missed time, if it is within ``catchup_window`` of now."""
    if last_fired is None:
        return None
    window = parse_duration(cron.catchup_window)
    if window <= 0:
        return None
    missed = last_time(cron, now)
    if missed <= last_fired or (now - missed).total_seconds() > window:
        return None
    return missed
