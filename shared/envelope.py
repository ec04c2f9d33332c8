"""CloudEvents 1.0 binary mode over NATS headers, plus ``Nats-Msg-Id`` and W3C trace context.

nats-py hands headers over as a plain, case-sensitive dict; read them with :func:`header` only.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from shared.contract import Event, event_type

MSG_ID = "Nats-Msg-Id"
SPEC_VERSION = "1.0"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
