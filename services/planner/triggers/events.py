"""Turning what arrived into ``trigger`` objects: NATS messages and Alertmanager notifications."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from shared.contract.alerts import Alert, Notification, decode_notification
from shared.contract.envelope import header
from shared.workflow.expressions import ExpressionError, evaluate
from shared.workflow.triggers import subject_matches

from .active import Active


class Refused(Exception):
    """The event cannot start a run; the message says why, in words for people."""


def nats_event(subject: str, data: bytes, headers: Mapping[str, str], stream_seq: int) -> tuple[dict[str, Any], str]:
    """The trigger object and the de-duplication key of a captured message; Refused when not JSON."""
    event_id = header(headers, "Nats-Msg-Id") or header(headers, "ce-id") or f"seq:{stream_seq}"
    try:
        body = json.loads(data) if data.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"the message on {subject} is not JSON ({exc}); publish a JSON body") from None
    if body is None:
        raise Refused(f"the message on {subject} is empty; publish a JSON body")
    trigger = {
        "type": "nats",
        "subject": subject,
        "id": event_id,
        "data": body,
        "headers": {k: v for k, v in headers.items() if isinstance(v, str)},
    }
    return trigger, event_id


def nats_matches(active: Active, subject: str) -> bool:
    return active.trigger.nats is not None and subject_matches(active.trigger.nats.subject, subject)


def condition(active: Active, trigger: dict[str, Any]) -> bool:
    """The trigger's `when`, over `trigger`; Refused when it cannot be evaluated on this event."""
    when = active.trigger.nats.when if active.trigger.nats else None
    if when is None:
        return True
    try:
        return evaluate(when, {"trigger": trigger})
    except (ExpressionError, KeyError, TypeError, ValueError) as exc:
        raise Refused(f"when {when!r} could not be evaluated on this event: {exc}") from None


# --- Alertmanager (webhook payload version 4) -------------------------------------------------------

__all__ = ["Notification", "decode_notification"]


def fingerprint(alert: Alert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    body = json.dumps(alert.labels, sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()[:16]


def alert_triggers(note: Notification) -> list[dict[str, Any]]:
    """One trigger object per alert of the group."""
    group = {
        "key": note.groupKey,
        "receiver": note.receiver,
        "labels": note.groupLabels,
        "common_labels": note.commonLabels,
        "common_annotations": note.commonAnnotations,
        "external_url": note.externalURL,
    }
    return [
        {
            "type": "alertmanager",
            "status": a.status,
            "fingerprint": fingerprint(a),
            "labels": a.labels,
            "annotations": a.annotations,
            "starts_at": a.startsAt,
            "ends_at": a.endsAt,
            "generator_url": a.generatorURL,
            "group": group,
        }
        for a in note.alerts
    ]


def alert_matches(active: Active, trigger: dict[str, Any]) -> bool:
    return active.trigger.alertmanager is not None and all(m.matches(trigger["labels"]) for m in active.matchers)


def alert_key(trigger: dict[str, Any]) -> str:
    """One run per (fingerprint, startsAt): repeats and HA duplicates of one firing share it."""
    return f"{trigger['fingerprint']}@{trigger['starts_at']}"
