"""The audit log: who did what through the gateway and the CLI, in a stream of its own (FY_AUDIT).

Entries name the user, the action, its target, the time, the client and the outcome. They never
carry a secret, a token or a run's inputs: the target is a name or an id, the detail a sentence.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Literal

import msgspec
import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.envelope import MSG_ID, now_rfc3339

Action = Literal["apply", "delete", "start", "cancel", "retry", "approve", "reject", "sign_in", "sign_out", "plan"]
ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    time: str  # RFC 3339, when it was done
    user: str
    action: Action
    target: str  # workflow/NAME, run/ID, approval/ID
    outcome: Literal["ok", "refused", "failed"]
    status: int | None = None  # the HTTP status the gateway answered
    detail: str = ""  # e.g. "version 3", "started run r…", or why it was refused
    via: Literal["gateway", "cli"] = "cli"
    client: str = ""  # the client's address (gateway) or host name (CLI)
    request_id: str = ""
    seq: int = 0  # its position in the audit stream (filled in when read)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(AuditEntry).decode


def entry(
    *,
    user: str,
    action: Action,
    target: str,
    outcome: Literal["ok", "refused", "failed"],
    via: Literal["gateway", "cli"],
    client: str = "",
    status: int | None = None,
    detail: str = "",
    request_id: str = "",
) -> AuditEntry:
    return AuditEntry(
        time=now_rfc3339(),
        user=user,
        action=action,
        target=target,
        outcome=outcome,
        status=status,
        detail=detail[:500],
        via=via,
        client=client,
        request_id=request_id,
    )


async def record(bus: Bus, item: AuditEntry) -> None:
    headers = {MSG_ID: f"audit:{uuid.uuid4().hex}", "content-type": "application/json"}
    await bus.publish_raw(subjects.audit(item.action), _encode(item), headers)


async def newest(bus: Bus, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first."""
    try:
        info = await bus.js.stream_info(subjects.AUDIT_STREAM)
    except nats.js.errors.NotFoundError:
        return []
    last, first = info.state.last_seq, info.state.first_seq
    if info.state.messages == 0 or last < first:
        return []
    seqs = list(range(last, max(first, last - limit + 1) - 1, -1))
    got = await asyncio.gather(
        *(bus.js.get_msg(subjects.AUDIT_STREAM, seq=s, direct=True) for s in seqs), return_exceptions=True
    )
    out = []
    for seq, msg in zip(seqs, got, strict=True):
        if isinstance(msg, BaseException) or not msg.data:
            continue  # aged out or deleted
        try:
            out.append(msgspec.structs.replace(_decode(msg.data), seq=seq))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return out
