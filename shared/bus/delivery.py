"""What a consumer's handler gets besides the message, and what counts as NATS being away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors

from shared.contract.errors import RetryableError

TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler may want to know about the message besides its body."""

    subject: str
    num_delivered: int
    stream_seq: int
    headers: dict[str, str]


Handler = Callable[[Any, Delivery], Awaitable[None]]
Decoder = Callable[[bytes], Any]


class NatsUnavailable(RetryableError):
    """NATS could not be reached for longer than ``bus.publish_retry_for``."""


def is_outage(exc: BaseException) -> bool:
    """NATS down or restarting: nothing to do with the message being handled."""
    return isinstance(exc, (*TRANSIENT, NatsUnavailable))
