"""Fuzzing what comes from outside: workflow YAML (random text and mutations of valid files), event
bodies on every subject a service consumes, and configuration. The only acceptable failure is the
clear refusal (ValidationFailed, ConfigurationError, msgspec's decode errors) — never another
exception. The seed is printed by hypothesis on failure (`--hypothesis-seed` replays it)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config.settings import load_config
from shared.contract.alerts import decode_notification
from shared.contract.errors import ConfigurationError, ValidationFailed
from shared.contract.messages import decode_approval, decode_event, decode_record
from shared.workflow.check import check_bundle
from shared.workflow.loader import load_bundle

ROOT = Path(__file__).resolve().parents[2]
VALID = [p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml"))] + [
    p.read_text() for p in sorted((ROOT / "tests/integration/workflows").glob("*.yaml"))
]
# 400 examples per property here (2,400 in all); the chaos tier runs them again with 4,000 each.
FUZZ = settings(
    max_examples=int(os.environ.get("FLOWYARD_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def check(text: str) -> None:
    try:
        check_bundle(load_bundle(text, "fuzz.yaml"))
    except ValidationFailed as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@FUZZ
@given(st.text(max_size=400))
def test_random_text_is_refused_clearly(text: str) -> None:
    check(text)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "{{ inputs.x }}",
            "{{ nodes.a.output }}",
            "{{ trigger.data }}",
            "5m",
            "1s",
            "*/5 * * * *",
            "deploys.>",
            'alertname="X"',
            "fy.run.>",
            "docker",
            "approval_required",
        ]
    ),
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8
)


def _paths(doc: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*path, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_paths(v, (*path, i)))
    return out


@FUZZ
@given(st.integers(0, 10**9), values, st.sampled_from(["replace", "delete", "add"]))
def test_mutations_of_valid_workflows_are_refused_clearly(seed: int, value: object, how: str) -> None:
    rng = random.Random(seed)
    docs = [d for d in yaml.safe_load_all(rng.choice(VALID)) if d is not None]
    target = rng.choice(docs)
    path = rng.choice(_paths(target)[1:] or [()])
    if path:
        parent = target
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        if how == "delete" and isinstance(parent, dict):
            del parent[key]
        elif how == "add" and isinstance(parent, dict):
            parent[f"{key}x"] = value
        else:
            parent[key] = value
    check(yaml.safe_dump_all(docs))


EVENT_SAMPLES = [
    {"type": "run.requested", "run_id": "r1", "workflow": "w", "definition": {}},
    {"type": "task.succeeded", "run_id": "r1", "node_id": "a", "attempt": 1, "output": {"x": 1}},
    {"type": "task.failed", "run_id": "r1", "node_id": "a", "attempt": 1, "error": "boom"},
    {
        "type": "approval.requested",
        "run_id": "r1",
        "approval_id": "r1.a",
        "workflow": "w",
        "node_id": "a",
        "agent": "x",
    },
    {"type": "timer", "run_id": "r1", "kind": "retry", "due_at": 1.0},
    {"type": "run.abandoned", "run_id": "r1", "service": "s", "subject": "x", "reason": "y"},
]


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_on_every_subject_are_poison_not_crashes(data: bytes) -> None:
    for decode in (decode_event, decode_record, decode_approval, decode_notification):
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            decode(data)


@FUZZ
@given(
    st.sampled_from(EVENT_SAMPLES), st.sampled_from(["run_id", "type", "attempt", "node_id", "output", "extra"]), values
)
def test_mutated_events_decode_or_are_refused(sample: dict, field: str, value: object) -> None:
    body = json.dumps({**sample, field: value}, default=str).encode()
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        decode_event(body)


sections = st.sampled_from(
    [
        "nats",
        "bus",
        "log",
        "http",
        "executor",
        "scheduler",
        "planner",
        "approver",
        "notifier",
        "telemetry",
        "gateway",
        "nope",
    ]
)


@FUZZ
@given(raw=st.dictionaries(sections, values, max_size=4))
def test_random_configuration_is_refused_clearly(raw: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cfg") / "flowyard.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        load_config(path, env={})
    except ConfigurationError as exc:
        assert str(exc)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "FLOWYARD_GATEWAY_PORT",
                "FLOWYARD_BUS_MAX_DELIVER",
                "FLOWYARD_LOG_LEVEL",
                "FLOWYARD_EXECUTOR_RUNTIME",
                "FLOWYARD_GATEWAY_MAX_BODY",
                "FLOWYARD_BUS_POISON_DELIVERIES",
                "FLOWYARD_NATS_URL",
            ]
        ),
        st.text(max_size=10),
        max_size=3,
    )
)
def test_random_environment_is_refused_clearly(env: dict) -> None:
    try:
        load_config(None, env=env)
    except ConfigurationError as exc:
        assert str(exc)
