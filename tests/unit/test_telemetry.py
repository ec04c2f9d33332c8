"""One trace per run (ids from the run id, the root span, re-parenting) and span export that never
blocks, counting what it drops."""

from __future__ import annotations

import threading
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from shared.config.settings import ConfigurationError, load_config
from shared.telemetry import metrics
from shared.telemetry import tracing as telemetry
from shared.telemetry.spanexport import BackgroundExport


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider = TracerProvider(id_generator=telemetry._RunIds())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("test"))
    return memory


def test_a_runs_trace_id_is_stable_and_its_own() -> None:
    assert telemetry.run_ids("r1") == telemetry.run_ids("r1")
    assert telemetry.run_ids("r1") != telemetry.run_ids("r2")
    assert len(telemetry.run_trace_id("r1")) == 32 and telemetry.run_trace_id("") == ""


def test_the_root_span_has_the_runs_ids_its_request_time_and_no_parent(spans: InMemorySpanExporter) -> None:
    telemetry.record_run_span(
        run_id="r1", workflow="deploy", start_s=1000.0, end_s=1012.5, status="failed", error="node b failed",
        retry_of="r0",
    )  # fmt: skip
    (root,) = spans.get_finished_spans()
    trace_id, span_id = telemetry.run_ids("r1")
    assert root.name == "run deploy" and root.parent is None
    assert (root.context.trace_id, root.context.span_id) == (trace_id, span_id)
    assert root.start_time == 1000 * 10**9 and root.end_time == 1012.5 * 10**9
    assert root.status.status_code is StatusCode.ERROR and root.status.description == "node b failed"
    assert root.attributes["flowyard.workflow"] == "deploy" and root.attributes["flowyard.status"] == "failed"
    assert root.links[0].context.trace_id == telemetry.run_ids("r0")[0]
    # Only that span gets the run's ids: the next one is random again.
    with telemetry.tracer().start_as_current_span("other") as other:
        assert other.get_span_context().trace_id != trace_id


def test_a_message_of_a_run_goes_into_the_runs_trace_whatever_is_current(spans: InMemorySpanExporter) -> None:
    trace_id, root_id = telemetry.run_ids("r1")
    with telemetry.tracer().start_as_current_span("handling another run"):
        ctx = telemetry.in_run("r1")
        parent = trace.get_current_span(ctx).get_span_context()
        assert (parent.trace_id, parent.span_id) == (trace_id, root_id)
    with telemetry.tracer().start_as_current_span("in the run", context=telemetry.run_root("r1")) as inside:
        ctx = telemetry.in_run("r1")
        assert trace.get_current_span(ctx).get_span_context().span_id == inside.get_span_context().span_id
    assert telemetry.in_run("") is None  # no run: the caller keeps its context


class _Stuck(SpanExporter):
    """A collector that does not answer until released, then answers with ``result``."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.result = result
        self.exported = 0

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(30)
        self.exported += len(spans)
        return self.result

    def shutdown(self) -> None:
        self.release.set()


def _dropped(reason: str) -> float:
    return metrics.SPANS_DROPPED.labels(reason)._value.get()


def test_a_stuck_collector_never_blocks_and_what_does_not_fit_is_counted() -> None:
    stuck = _Stuck()
    processor = BackgroundExport(stuck, queue_size=5)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    before = _dropped("queue_full")
    with tracer.start_as_current_span("first"):
        pass
    assert stuck.entered.wait(10)  # the thread is now held by the collector
    began = time.monotonic()
    for i in range(25):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert time.monotonic() - began < 5  # never waited for the collector (it holds for 30 s)
    assert _dropped("queue_full") - before == 20  # 5 fit in the queue
    stuck.release.set()
    assert processor.force_flush(5000)
    assert stuck.exported == 6
    processor.shutdown()


def test_a_refused_export_is_counted() -> None:
    failing = _Stuck(SpanExportResult.FAILURE)
    failing.release.set()
    processor = BackgroundExport(failing, queue_size=100)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    before = _dropped("export_failed")
    for i in range(3):
        with provider.get_tracer("test").start_as_current_span(f"s{i}"):
            pass
    assert processor.force_flush(5000)
    assert _dropped("export_failed") - before == 3
    processor.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLOWYARD_TELEMETRY_EXPORTER": "jaeger"}, "telemetry.exporter"),
        ({"FLOWYARD_TELEMETRY_ENDPOINT": "tempo:4318"}, "must be an http(s) URL"),
        ({"FLOWYARD_TELEMETRY_TRACE_URL": "https://grafana/explore"}, "must contain {trace_id}"),
        ({"FLOWYARD_TELEMETRY_QUEUE_SIZE": "0"}, "FLOWYARD_TELEMETRY_QUEUE_SIZE: telemetry.queue_size: 0 is too small"),
        (
            {"FLOWYARD_TELEMETRY_EXPORT_TIMEOUT": "0s"},
            "FLOWYARD_TELEMETRY_EXPORT_TIMEOUT: telemetry.export_timeout: must be more than 0",
        ),
        ({"FLOWYARD_TELEMETRY_GAUGE_INTERVAL": "soon"}, "telemetry.gauge_interval"),
    ],
)
def test_bad_telemetry_settings_are_refused_naming_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_config(None, env=env)
    assert message in str(refused.value)


def test_trace_links_are_built_from_the_template() -> None:
    cfg = load_config(None, env={"FLOWYARD_TELEMETRY_TRACE_URL": "http://jaeger:16686/trace/{trace_id}"}).telemetry
    assert cfg.link("abc") == "http://jaeger:16686/trace/abc" and cfg.link("") is None
