import msgspec
import pytest

from shared.contract.envelope import build_headers, header
from shared.contract.messages import (
    EVENT_TYPES,
    AgentSnapshot,
    RunRequested,
    TaskDispatched,
    TaskSucceeded,
    decode_event,
    encode,
    event_type,
)


def test_every_event_round_trips_through_the_union_decoder() -> None:
    task = TaskDispatched(run_id="r1", workflow="w", node_id="a", attempt=2, agent=AgentSnapshot(name="x"), input=[1])
    assert decode_event(encode(task)) == task
    assert task.key == "r1:a:2"
    assert len({t.__struct_config__.tag for t in EVENT_TYPES}) == len(EVENT_TYPES)


def test_wire_types_accept_unknown_fields_from_newer_producers() -> None:
    data = b'{"type": "task.succeeded", "run_id": "r", "node_id": "a", "attempt": 1, "output": {}, "new_field": 7}'
    event = decode_event(data)
    assert isinstance(event, TaskSucceeded) and event.output == {}


@pytest.mark.parametrize(
    "poison",
    [b"not json", b'{"type": "nope", "run_id": "r"}', b'{"type": "task.succeeded", "run_id": 5}', b"[]"],
)
def test_poison_fails_to_decode(poison: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_event(poison)


def test_cloudevents_binary_mode_headers() -> None:
    event = RunRequested(run_id="r1", workflow="w", definition={})
    headers = build_headers(event, source="cli", msg_id="r1:requested")
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == event_type(event) == "io.flowyard.run.requested.v1"
    assert headers["ce-source"] == "flowyard/cli"
    assert headers["ce-subject"] == "r1"
    assert headers["Nats-Msg-Id"] == "r1:requested"
    assert headers["ce-time"].endswith("Z") and headers["ce-id"]


def test_header_lookup_is_case_insensitive() -> None:
    headers = {"Nats-Msg-Id": "x", "TraceParent": "00-abc"}
    assert header(headers, "nats-msg-id") == "x"
    assert header(headers, "traceparent") == "00-abc"
    assert header(headers, "missing") is None
    assert header(None, "x") is None
