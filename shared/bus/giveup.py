"""What a consumer does when it gives up on a message.

The poison journal counts deliveries whose handler's process died with the message in hand
(``bus.poison_deliveries``); a message given up on is copied to ``fy.dlq.<service>`` with the
reason, terminated, counted, and the run it belonged to is told to end (``RunAbandoned``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg

from shared.bus.delivery import Delivery
from shared.contract import subjects
from shared.contract.drafts import PLAN_ID
from shared.contract.messages import RunAbandoned, decode_event
from shared.telemetry.metrics import DEAD_LETTERS

if TYPE_CHECKING:
    from shared.bus.connection import Bus

log = structlog.get_logger("flowyard.bus")


async def unanswered(bus: Bus, durable: str, delivery: Delivery) -> tuple[int, str | None]:
    """How many deliveries of this message ended with no answer (the handler's process died).

    Only redeliveries are journalled (a KV entry while the message is in hand, removed when it
    is answered), so the first delivery of every message costs nothing extra.
    """
    if delivery.num_delivered <= 1:
        return 0, None
    key = f"{durable}.{delivery.stream_seq}"
    try:
        kv = await bus.kv(subjects.INFLIGHT_BUCKET)
        try:
            entry = await kv.get(key)
            died = int(entry.value or b"0") if entry.value else 0
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            died = 0
        await kv.put(key, str(died + 1).encode())
    except Exception as exc:  # the journal is a safety net; NATS trouble must not stop work
        log.debug("poison journal unavailable", consumer=durable, error=repr(exc))
        return 0, None
    # A delivery ago the count was written and never cleared: that delivery died too.
    return died, key


async def answered(bus: Bus, key: str | None) -> None:
    if key is None:
        return
    with contextlib.suppress(Exception):
        kv = await bus.kv(subjects.INFLIGHT_BUCKET)
        await kv.delete(key)


async def dead_letter(bus: Bus, stream: str, durable: str, msg: Msg, delivery: Delivery, reason: str) -> None:
    """Copy the message to ``fy.dlq.<service>`` with the reason, then terminate it."""
    log.error(
        "message terminated",
        consumer=durable,
        subject=delivery.subject,
        stream_seq=delivery.stream_seq,
        reason=reason[:2000],
    )
    headers = {k: v for k, v in delivery.headers.items() if k.lower() != "nats-msg-id"} | {
        "Nats-Msg-Id": f"dlq:{stream}:{delivery.stream_seq}",
        "fy-dlq-reason": reason[:2000].replace("\n", " "),
        "fy-dlq-subject": delivery.subject,
        "fy-dlq-consumer": durable,
        "fy-dlq-stream-seq": str(delivery.stream_seq),
        "fy-dlq-deliveries": str(delivery.num_delivered),
    }
    try:
        await bus.publish_raw(subjects.dead_letter(bus.name), msg.data, headers)
    except Exception as exc:
        # Never terminate a message we could not keep: try again later.
        log.error("dead-letter publish failed; nak", consumer=durable, error=repr(exc))
        with contextlib.suppress(Exception):
            await msg.nak(delay=5)
        return
    with contextlib.suppress(Exception):
        await msg.term()
    DEAD_LETTERS.labels(bus.name).inc()
    await _abandon_run(bus, stream, msg, delivery, reason)


async def _abandon_run(bus: Bus, stream: str, msg: Msg, delivery: Delivery, reason: str) -> None:
    """A message of a run was given up on: tell the scheduler, so the run ends saying why
    instead of waiting for something that will never come."""
    run_id, workflow = "", ""
    try:
        event = decode_event(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        event = None
    if isinstance(event, RunAbandoned):
        return  # the scheduler itself could not end the run: the dead letter says why
    if event is not None:
        run_id, workflow = event.run_id, str(getattr(event, "workflow", "") or "")
    else:
        parts = delivery.subject.split(".")
        if parts[:2] == ["fy", "run"] and len(parts) > 2:
            run_id = parts[2]
        elif parts[:3] == ["fy", "timer", "run"] and len(parts) > 3:
            run_id = parts[3]
    if not run_id or not subjects.TOKEN.match(run_id) or PLAN_ID.match(run_id):
        return  # a plan's message: no run to end (the dead letter keeps it and says why)
    abandoned = RunAbandoned(
        run_id=run_id, service=bus.name, subject=delivery.subject, reason=reason[:1000], workflow=workflow
    )
    try:
        await bus.publish(
            subjects.run_abandoned(run_id),
            abandoned,
            msg_id=f"{run_id}:abandoned:{stream}:{delivery.stream_seq}",
        )
    except Exception as exc:
        log.error("could not end the run of a dead-lettered message", run_id=run_id, error=repr(exc))
