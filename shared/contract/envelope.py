"""CloudEvents 1.0 binary mode over NATS headers, plus ``Nats-Msg-Id`` and W3C trace context.

nats-py hands headers over as a plain, case-sensitive dict; read them with :func:`header` only.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from shared.contract.messages import Event, event_type

MSG_ID = "Nats-Msg-Id"
SPEC_VERSION = "1.0"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(rfc3339: str | None) -> float:
    """Unix seconds of a time written by :func:`now_rfc3339`; 0.0 when absent or unreadable."""
    if not rfc3339:
        return 0.0
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def build_headers(event: Event, *, source: str, msg_id: str, subject: str | None = None) -> dict[str, str]:
    return {
        "ce-specversion": SPEC_VERSION,
        "ce-id": str(uuid.uuid4()),
        "ce-source": f"flowyard/{source}",
        "ce-type": event_type(event),
        "ce-time": now_rfc3339(),
        "ce-subject": subject or event.run_id,
        "content-type": "application/json",
        MSG_ID: msg_id,
    }


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive header lookup."""
    if not headers:
        return None
    if name in headers:
        return headers[name]
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def run_attributes(event: object) -> dict[str, str | int]:
    """``flowyard.run_id``, ``.workflow``, ``.node``, ``.attempt``, ``.item``: what a message is about, for
    spans and log lines (whichever of them the message has)."""
    out: dict[str, str | int] = {}
    for attribute, key in (("run_id", "run_id"), ("workflow", "workflow"), ("node_id", "node"), ("attempt", "attempt")):
        value = getattr(event, attribute, None)
        if value not in (None, "") and isinstance(value, str | int):
            out[f"flowyard.{key}"] = value
    item = getattr(event, "item", None)
    if isinstance(item, int) and not isinstance(item, bool):
        out["flowyard.item"] = item  # a foreach item's index
    return out
