"""Deciding an approval: a NATS request on ``fy.decide.approval`` that the approver answers.

The CLI, the gateway and chat bots all decide through it; the approver alone applies the rules
(who may decide, no self-approval, N of M), so every client refuses in the same words.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import nats.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.errors import RetryableError
from shared.contract.messages import ApprovalRecord

# Why a decision was refused, for clients that map it (the gateway: 404, 409, 403, 422).
RefusalCode = Literal[
    "ok",
    "unknown",  # no such approval
    "decided",  # already granted, rejected, expired or closed
    "expired",  # past its deadline, not yet marked expired
    "not_allowed",  # the user is not among the approvers
    "self_approval",  # the run's requester may not approve its steps
    "duplicate",  # the user has already approved (N of M needs different people)
    "invalid",  # malformed, no user, a rejection without a reason
]


class DecisionRequest(msgspec.Struct, kw_only=True):
    """The body of a request on ``fy.decide.approval``."""

    approval_id: str
    decision: Literal["approve", "reject"]
    user: str
    comment: str = ""
    reason: str = ""  # required to reject


class DecisionReply(msgspec.Struct, kw_only=True):
    ok: bool
    status: str  # the request's status after this decision (or unchanged, when refused)
    message: str
    code: RefusalCode = "ok"
    approval: ApprovalRecord | None = None


class NoApprover(RetryableError):
    """No approver answered: none is running, or it did not answer in time."""


_encode = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(DecisionReply).decode


async def request_decision(bus: Bus, request: DecisionRequest, *, timeout: float = 10.0) -> DecisionReply:
    assert bus.nc is not None
    try:
        msg = await bus.nc.request(subjects.DECIDE, _encode(request), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise NoApprover("no approver is running to take the decision; start one (`flowyard serve approver`)") from None
    except nats.errors.TimeoutError:
        raise NoApprover(f"the approver did not answer within {timeout:g}s; try again") from None
    return _decode_reply(msg.data)
