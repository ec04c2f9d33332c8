"""JetStream calls ride through a NATS restart (shared.bus.riding), and say so plainly when it lasts."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import pytest
from nats.js.kv import KeyValue

from shared.bus.connection import Bus
from shared.bus.delivery import NatsUnavailable
from shared.bus.riding import Riding, raw, riding
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


class _Flaky:
    """A stand-in for a nats-py JetStream object: the first calls fail as NATS being away."""

    def __init__(self, failures: int, result: object = "info", on_call=None) -> None:
        self.failures, self.calls, self.result, self.on_call = failures, 0, result, on_call

    async def stream_info(self, name: str) -> object:
        self.calls += 1
        if self.on_call:
            self.on_call()
        if self.calls <= self.failures:
            raise nats.errors.ConnectionReconnectingError
        return self.result

    def plain(self) -> str:
        return "not a coroutine"


def test_every_call_through_the_bus_rides_an_outage_and_what_it_returns_rides_too() -> None:
    bus = _bus("30s")
    js = _Flaky(2, result=KeyValue("b", "KV_b", "", _Flaky(0), True))  # type: ignore[arg-type]
    wrapped = riding(js, bus.through_outage, "JetStream")
    kv = asyncio.run(wrapped.stream_info("RUNS"))
    assert js.calls == 3 and isinstance(kv, Riding) and isinstance(raw(kv), KeyValue)
    assert wrapped.plain() == "not a coroutine" and raw(wrapped) is js
    # The raw object does not ride: a caller that must fail fast gets the error at once.
    with pytest.raises(nats.errors.ConnectionReconnectingError):
        asyncio.run(raw(riding(_Flaky(1), bus.through_outage, "JetStream")).stream_info("RUNS"))


def test_a_closing_bus_or_a_refused_call_stops_riding_at_once() -> None:
    bus = _bus("30s")
    bus._closing = True
    closing = _Flaky(100)
    with pytest.raises(nats.errors.ConnectionReconnectingError):
        asyncio.run(riding(closing, bus.through_outage, "JetStream").stream_info("RUNS"))
    assert closing.calls == 1

    bus = _bus("30s")

    def refused() -> None:  # what Bus._on_error does when the server says "permissions violation"
        bus._refused_count += 1
        bus._refusals.append("nats: permissions violation for publish to '$JS.API.STREAM.INFO.RUNS'")

    denied = _Flaky(100, on_call=refused)
    with pytest.raises(nats.errors.ConnectionReconnectingError):
        asyncio.run(riding(denied, bus.through_outage, "JetStream").stream_info("RUNS"))
    assert denied.calls == 1
