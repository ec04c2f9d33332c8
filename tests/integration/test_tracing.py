"""One run, one trace: spans from every service reach a real OTLP/HTTP receiver, logs join them.

The services run as separate processes exporting to :class:`tests.otlp.Collector`, which decodes
the ``ExportTraceServiceRequest`` protobufs they send.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer
from tests.otlp import Collector, ReceivedSpan

from .stack import Stack

OBSERVED = str(Path(__file__).parent / "workflows" / "observed.yaml")
SERVICES = ("planner", "scheduler", "executor")


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def traced(nats_binary: str, tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("traced")
    server = NatsServer(workdir / "nats").start()
    s = Stack(
        server,
        workdir,
        FLOWYARD_TELEMETRY_EXPORTER="otlp",
        FLOWYARD_TELEMETRY_ENDPOINT=collector.url,
        FLOWYARD_TELEMETRY_TRACE_URL="https://grafana.example/explore?traceId={trace_id}",
    )
    try:
        for name in (*SERVICES, "approver"):
            s.start(name)
        yield s
    finally:
        s.stop_all()
        server.stop()


def _root_arrived(trace_id: str, workflow: str):
    return lambda spans: any(s.trace_id == trace_id and s.name == f"run {workflow}" for s in spans)


def test_a_diamond_run_is_one_trace_across_the_services(traced: Stack, collector: Collector) -> None:
    code, result, err = traced.run_json(OBSERVED, "--workflow", "obs-diamond")
    assert code == 0, err
    trace_id = result["trace_id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    assert result["trace_url"] == f"https://grafana.example/explore?traceId={trace_id}"
    collector.wait_for(_root_arrived(trace_id, "obs-diamond"))
    # Spans arrive in batches from each process; wait until every parent has arrived.
    with contextlib.suppress(AssertionError):
        collector.wait_for(lambda _: _complete(collector.trace(trace_id)), timeout=20)
    spans = collector.trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    orphans = [(s.name, s.service) for s in spans if s.parent_id and s.parent_id not in by_id]
    assert not orphans, f"spans whose parent never arrived: {orphans}"
    mine = [s for s in collector.spans if s.attributes.get("flowyard.run_id") == result["run_id"]]
    assert mine and all(s.trace_id == trace_id for s in mine), "a span of the run is in another trace"

    roots = [s for s in spans if not s.parent_id]
    assert [r.name for r in roots] == ["run obs-diamond"]
    root = roots[0]
    assert root.attributes["flowyard.workflow"] == "obs-diamond" and root.attributes["flowyard.status"] == "succeeded"
    assert root.end_ns > root.start_ns

    services = {s.service for s in spans}
    assert {"flowyard-planner", "flowyard-scheduler", "flowyard-executor"} <= services, services

    agents = [s for s in spans if s.name.startswith("agent ")]
    assert sorted(s.attributes["flowyard.node"] for s in agents) == ["a", "b", "c", "d"]  # one per attempt
    for s in agents:
        assert s.name == "agent step" and s.attributes["flowyard.attempt"] == 1
        assert s.attributes["flowyard.workflow"] == "obs-diamond"
        parent = by_id[s.parent_id]
        assert parent.name.startswith("process fy.task.dispatch.") and parent.service == "flowyard-executor"

    sends = [s for s in spans if s.name.startswith("send ")]
    processes = [s for s in spans if s.name.startswith("process ")]
    assert sends and processes
    for s in sends:
        assert s.kind == 4  # PRODUCER
        assert s.attributes["messaging.system"] == "nats" and s.attributes["messaging.operation.name"] == "send"
        assert s.attributes["messaging.destination.name"] == s.name.removeprefix("send ")
        assert s.attributes["messaging.message.id"]
    for s in processes:
        assert s.kind == 5  # CONSUMER
        assert s.attributes["messaging.operation.name"] == "process"
        assert s.attributes["messaging.consumer.group.name"]
        assert s.attributes["flowyard.run_id"] == result["run_id"]
        # A process span hangs under the send span of the message it handled.
        assert by_id[s.parent_id].name == "send " + s.attributes["messaging.destination.name"]
    # The run was asked for by the CLI, in the same trace, right under the root.
    request = next(s for s in sends if s.name.endswith(".requested"))
    assert request.parent_id == root.span_id and request.service == "flowyard-cli"


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once it is closed


def _complete(spans: list[ReceivedSpan]) -> bool:
    ids = {s.span_id for s in spans}
    services = {s.service for s in spans}
    return (
        all(not s.parent_id or s.parent_id in ids for s in spans)
        and {f"flowyard-{n}" for n in (*SERVICES, "cli")} <= services
    )


def test_log_lines_of_a_run_carry_its_trace(traced: Stack, collector: Collector) -> None:
    code, result, err = traced.run_json(OBSERVED, "--workflow", "obs-diamond")
    assert code == 0, err
    collector.wait_for(_root_arrived(result["trace_id"], "obs-diamond"))
    for name in SERVICES:
        lines = [json.loads(line) for line in traced.log_path(name).read_text().splitlines() if line.startswith("{")]
        ours = [line for line in lines if line.get("run_id") == result["run_id"]]
        assert ours, f"{name} wrote no log line about the run"
        for line in ours:
            assert line["trace_id"] == result["trace_id"], (name, line)
            assert len(line["span_id"]) == 16
    # The executor logs an attempt as finished once its result is stored, which may be after the
    # run's end reached the CLI: wait for the last line rather than read the log once.
    expected = {("a", 1), ("b", 1), ("c", 1), ("d", 1)}
    deadline = time.monotonic() + 30
    while (finished := _finished_attempts(traced, result["run_id"])) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert finished == expected


def _finished_attempts(stack: Stack, run_id: str) -> set[tuple[str, int]]:
    lines = [json.loads(x) for x in stack.log_path("executor").read_text().splitlines() if x.startswith("{")]
    return {
        (x["node"], x["attempt"]) for x in lines if x.get("run_id") == run_id and x.get("event") == "attempt finished"
    }


def test_retries_keep_the_trace_and_runs_show_links_it(traced: Stack, collector: Collector, tmp_path: Path) -> None:
    code, result, err = traced.run_json(OBSERVED, "--workflow", "obs-retry", "-i", f"dir={tmp_path}", "-i", "key=k1")
    assert code == 0, err
    trace_id = result["trace_id"]
    collector.wait_for(_root_arrived(trace_id, "obs-retry"))
    # Each process exports its own batches: wait for the executor's two attempts as well, not
    # only for the root (which another process sends, and may send first).
    collector.wait_for(lambda spans: sum(s.trace_id == trace_id and s.name == "agent flaky" for s in spans) >= 2)
    spans = collector.trace(trace_id)
    attempts = sorted(s.attributes["flowyard.attempt"] for s in spans if s.name == "agent flaky")
    assert attempts == [1, 2]
    # The back-off timer went through NATS and came back in the same trace.
    assert any(s.name.startswith("process fy.timer.") for s in spans)
    shown = traced.cli("runs", "show", result["run_id"])
    assert f"https://grafana.example/explore?traceId={trace_id}" in shown.stdout
    human = traced.cli("runs", "show", result["run_id"], "--json")
    assert json.loads(human.stdout)["trace_id"] == trace_id


def test_a_slow_collector_never_slows_a_run_and_dropped_spans_are_counted(nats_binary: str, tmp_path: Path) -> None:
    """The collector holds every request for 60 s: exporting must not be on any run's path."""
    hold = 60.0
    slow = Collector(hold_s=hold)
    server = NatsServer(tmp_path / "nats").start()
    timings: dict[str, float] = {}
    try:
        for label, env in (
            ("without", {}),
            (
                "slow collector",
                {
                    "FLOWYARD_TELEMETRY_EXPORTER": "otlp",
                    "FLOWYARD_TELEMETRY_ENDPOINT": slow.url,
                    "FLOWYARD_TELEMETRY_QUEUE_SIZE": "8",
                    "FLOWYARD_TELEMETRY_EXPORT_TIMEOUT": "120s",
                },
            ),
            (
                "dead collector",
                {
                    "FLOWYARD_TELEMETRY_EXPORTER": "otlp",
                    "FLOWYARD_TELEMETRY_ENDPOINT": _closed_port(),
                    # The exporter retries a refused export with back-off for this long: a run
                    # that waited on it even once would take longer than the hold below.
                    "FLOWYARD_TELEMETRY_EXPORT_TIMEOUT": "120s",
                },
            ),
        ):
            s = Stack(server, tmp_path / label.replace(" ", "-"), **env)
            (tmp_path / label.replace(" ", "-")).mkdir()
            try:
                for name in SERVICES:
                    s.start(name)
                began = time.monotonic()
                for _ in range(3):
                    code, _, err = s.run_json(OBSERVED, "--workflow", "obs-diamond")
                    assert code == 0, err
                timings[label] = time.monotonic() - began
                if label == "dead collector":
                    port = s.http_port("scheduler")
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                        text = r.read().decode()
                    # Every batch refused; counted once the exporter has given each up.
                    assert 'flowyard_spans_dropped_total{reason="export_failed"}' in text
                elif env:
                    port = s.http_port("scheduler")
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                        text = r.read().decode()
                    assert 'flowyard_spans_dropped_total{reason="queue_full"}' in text
                    dropped = float(text.split('flowyard_spans_dropped_total{reason="queue_full"} ')[1].split()[0])
                    assert dropped > 0
                    assert slow.requests >= 1  # it was being sent to, and held
            finally:
                s.stop_all()
        print(
            f"three diamond runs: without exporter {timings['without']:.2f}s, "
            f"with a collector that holds each request {hold:.0f}s: {timings['slow collector']:.2f}s, "
            f"with a collector that is down: {timings['dead collector']:.2f}s"
        )
        # Had any run waited for the collector even once, it would have taken the hold time.
        assert timings["slow collector"] < hold
        assert timings["dead collector"] < hold
    finally:
        slow.close()
        server.stop()


def test_a_run_admitted_from_the_concurrency_queue_stays_in_its_own_trace(traced: Stack, collector: Collector) -> None:
    """The second run is admitted while the first one's end is handled: in the first's trace context."""
    workflow = str(Path(__file__).parent / "workflows" / "one-at-a-time.yaml")
    runs = [traced.cli_background("run", workflow, "-i", "sleep=0.5", "--json") for _ in range(2)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        results.append(json.loads(out))
    for result in results:
        collector.wait_for(_root_arrived(result["trace_id"], "one-at-a-time"))
    ids = {r["trace_id"] for r in results}
    assert len(ids) == 2
    for result in results:
        mine = [s for s in collector.spans if s.attributes.get("flowyard.run_id") == result["run_id"]]
        assert {s.trace_id for s in mine} == {result["trace_id"]}
    # One of them waited in the queue and was admitted by a timer, in its own trace.
    admits = [s for s in collector.spans if s.name.startswith("process fy.timer.") and s.trace_id in ids]
    assert admits, "no admission timer was handled"


def test_the_wait_for_an_approval_is_a_span_from_request_to_decision(traced: Stack, collector: Collector) -> None:
    run = traced.cli_background("run", OBSERVED, "--workflow", "obs-gate", "--as", "carol", "--json")
    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(traced.cli("approvals", "list", "--json").stdout or "[]")
        waiting = [a for a in listed if a["workflow"] == "obs-gate" and a["status"] == "pending"]
        if waiting:
            break
        assert time.monotonic() < deadline, "no approval was requested"
        time.sleep(0.1)
    decided = traced.cli("approvals", "approve", waiting[0]["id"], "--as", "dave")
    assert decided.returncode == 0, decided.stderr
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    result = json.loads(out)
    trace_id = result["trace_id"]
    collector.wait_for(_root_arrived(trace_id, "obs-gate"))
    collector.wait_for(lambda _: any(s.name == "approval change" for s in collector.trace(trace_id)))
    spans = collector.trace(trace_id)
    root = next(s for s in spans if s.name == "run obs-gate")
    wait = next(s for s in spans if s.name == "approval change")
    assert wait.service == "flowyard-approver" and wait.parent_id == root.span_id
    assert wait.attributes["flowyard.approval.outcome"] == "granted" and wait.attributes["flowyard.node"] == "change"
    # It starts when the approval was asked for and ends at the decision, inside the run.
    request = next(s for s in spans if s.name.endswith(".approval.change.requested") and s.name.startswith("send"))
    assert request.start_ns - 1_000_000_000 <= wait.start_ns <= request.end_ns
    assert root.start_ns <= wait.start_ns < wait.end_ns <= root.end_ns
    # The decision is sent inside the wait, and the scheduler handles it in the same trace.
    granted = next(s for s in spans if s.name == f"send fy.run.{result['run_id']}.approval.change.granted")
    assert granted.parent_id == wait.span_id
    assert any(s.name == granted.name.replace("send", "process", 1) for s in spans)
