"""OpenTelemetry tracing over NATS: W3C trace context travels in message headers.

Spans follow the messaging conventions: ``send <subject>`` (PRODUCER) around a publish and
``process <subject>`` (CONSUMER) around a handler, ``messaging.system = "nats"``. Injection and
extraction happen in the bus only.

One run is one trace. Its trace id and the span id of its root span ``run <workflow>`` are derived
from the run id (:func:`run_ids`), so every service can put what it does for a run into that
trace without being told: a message that arrives without a trace context, a timer re-sent after
a restart, a decision taken over HTTP, the run admitted when another one leaves its workflow's
concurrency queue. The root span itself is recorded by the scheduler when the run ends, with the
time the run was requested as its start (it cannot stay open across processes); every span of the
run hangs under it. See docs/observability.md.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shared.config.settings import TelemetryConfig, seconds

_configured = False
_trace_url = ""  # telemetry.trace_url of this process: where a trace id becomes a link
# Set only around the start of a run's root span: the ids it must have (see run_ids).
_forced_ids: ContextVar[tuple[int, int] | None] = ContextVar("flowyard_forced_ids", default=None)


class _RunIds(IdGenerator):
    """Random ids, except for a run's root span, whose ids come from the run id."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced_ids.get()
        return forced[1] if forced else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced_ids.get()
        return forced[0] if forced else self._random.generate_trace_id()


def configure_tracing(cfg: TelemetryConfig, service: str) -> None:
    global _configured, _trace_url
    _trace_url = cfg.trace_url
    if _configured:  # the embedded stack hosts several services in one process
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"flowyard-{service}"}),
        id_generator=_RunIds(),
    )
    if cfg.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif cfg.exporter == "otlp":
        from shared.telemetry.spanexport import BackgroundExport, otlp_exporter

        provider.add_span_processor(
            BackgroundExport(
                otlp_exporter(cfg.endpoint, timeout=seconds(cfg.export_timeout)),
                queue_size=cfg.queue_size,
            )
        )
    trace.set_tracer_provider(provider)
    _configured = True


def shutdown_tracing(timeout_s: float = 2.0) -> None:
    """Send what is queued, waiting at most ``timeout_s``: a dead collector never holds up an exit."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(int(timeout_s * 1000))


@functools.cache
def tracer() -> trace.Tracer:
    # One tracer per process: a proxy until configure_tracing sets the provider, then its tracer.
    return trace.get_tracer("flowyard")


def inject(headers: MutableMapping[str, str]) -> None:
    propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


# --- one run, one trace ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def run_ids(run_id: str) -> tuple[int, int]:
    """(trace id, root span id) of a run: stable, so any service can find the run's trace."""
    digest = hashlib.sha256(b"flowyard-run\x00" + run_id.encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def run_trace_id(run_id: str) -> str:
    """The run's trace id as 32 hex digits (what tracing UIs search for)."""
    return f"{run_ids(run_id)[0]:032x}" if run_id else ""


def trace_link(trace_id: str) -> str | None:
    """The trace in the user's tracing UI (``telemetry.trace_url``), or None when not set."""
    return _trace_url.replace("{trace_id}", trace_id) if _trace_url and trace_id else None


def run_root(run_id: str) -> context.Context:
    """A context whose parent is the run's root span."""
    trace_id, span_id = run_ids(run_id)
    root = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(root))


def in_run(run_id: str, ctx: context.Context | None = None) -> context.Context | None:
    """``ctx`` (default: the current context) if it is in the run's trace, else the run's root.

    None when there is no run (trigger events): the caller keeps its own context.
    """
    if not run_id:
        return ctx
    current = trace.get_current_span(ctx).get_span_context()
    if current.is_valid and current.trace_id == run_ids(run_id)[0]:
        return ctx if ctx is not None else context.get_current()
    return run_root(run_id)


def record_run_span(
    *,
    run_id: str,
    workflow: str,
    start_s: float,
    end_s: float,
    status: str,
    error: str | None = None,
    retry_of: str | None = None,
    attributes: Mapping[str, str | int] | None = None,
    name: str | None = None,
) -> None:
    """The run's root span ``run <workflow>`` (or ``name``: a plan's is ``plan``), from the request
    to the end, with the run's ids."""
    links = [Link(trace.get_current_span(run_root(retry_of)).get_span_context())] if retry_of else []
    token = _forced_ids.set(run_ids(run_id))
    try:
        span = tracer().start_span(
            name or f"run {workflow}",
            context=context.Context(),  # no parent: this is the root
            kind=SpanKind.INTERNAL,
            start_time=int(start_s * 1e9),
            links=links,
            attributes={
                "flowyard.run_id": run_id,
                "flowyard.workflow": workflow,
                "flowyard.status": status,
                **(attributes or {}),
            },
        )
    finally:
        _forced_ids.reset(token)
    if status != "succeeded":
        span.set_status(Status(StatusCode.ERROR, error or status))
    span.end(end_time=int(max(end_s, start_s) * 1e9))


@contextmanager
def span_in_run(
    name: str, run_id: str, *, start_s: float | None = None, **attributes: str | int
) -> Iterator[trace.Span]:
    """A span in the run's trace (under the current span if that is in the run, else the root)."""
    with tracer().start_as_current_span(
        name,
        context=in_run(run_id),
        start_time=int(start_s * 1e9) if start_s else None,
        attributes={"flowyard.run_id": run_id, **attributes},
    ) as span:
        yield span
