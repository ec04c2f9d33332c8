"""A client's idempotent steps ride through a NATS restart, and say so plainly when it lasts."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import pytest

from shared.bus.connection import Bus
from shared.bus.delivery import NatsUnavailable
from shared.config.settings import BusConfig, NatsConfig


def _bus(retry_for: str) -> Bus:
    return Bus(NatsConfig(), msgspec.structs.replace(BusConfig(), publish_retry_for=retry_for), name="test")


def test_a_step_is_tried_again_while_nats_is_away() -> None:
    calls = []

    async def step() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.errors.TimeoutError
        return "read"

    assert asyncio.run(_bus("30s").through_outage(step, "reading the run")) == "read"
    assert len(calls) == 3


def test_a_long_outage_names_the_step() -> None:
    async def step() -> None:
        raise nats.errors.ConnectionReconnectingError

    with pytest.raises(NatsUnavailable, match="reading the run failed: NATS unreachable for 0s"):
        asyncio.run(_bus("0s").through_outage(step, "reading the run"))


def test_other_errors_are_not_retried() -> None:
    calls = []

    async def step() -> None:
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        asyncio.run(_bus("30s").through_outage(step, "reading the run"))
    assert calls == [1]
