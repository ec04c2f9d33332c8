"""``FY_TRIGGERS`` captures the registered workflows' NATS trigger subjects (and alerts).

Kept in step by whoever changes the registry (an apply or a delete, from the CLI or the gateway,
so an event published right after an apply is captured) and by the planner, which re-checks on
every change it sees. Subjects another stream already captures are left out with a log line: NATS
refuses overlapping streams.
"""

from __future__ import annotations

import nats.js.errors
import structlog

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.workflow.triggers import minimal_subjects

log = structlog.get_logger("flowyard.capture")


async def sync(bus: Bus, trigger_subjects: list[str]) -> list[str]:
    """Make the stream capture these subjects (plus alerts); returns what it captures."""
    wanted = [subjects.ALERT_SUBJECTS, *minimal_subjects(trigger_subjects)]
    try:
        info = await bus.js.stream_info(subjects.TRIGGERS_STREAM)
    except nats.js.errors.NotFoundError:
        log.warning("no FY_TRIGGERS stream yet; the planner captures trigger subjects when it starts")
        return []
    config = info.config
    if sorted(config.subjects or []) == sorted(wanted):
        return wanted
    usable = [subjects.ALERT_SUBJECTS]
    for subject in wanted[1:]:
        try:
            owner = await bus.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            owner = None
        if owner not in (None, subjects.TRIGGERS_STREAM):
            log.error(
                "trigger subject already captured by another stream; its events cannot be captured",
                subject=subject,
                stream=owner,
            )
            continue
        usable.append(subject)
    if sorted(config.subjects or []) != sorted(usable):
        config.subjects = usable
        await bus.js.update_stream(config)
        log.info("trigger subjects captured", subjects=usable)
    return usable
