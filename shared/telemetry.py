"""OpenTelemetry tracing over NATS: W3C trace context travels in message headers.

Spans follow the messaging conventions: ``send <subject>`` (PRODUCER) around a publish and
``process <subject>`` (CONSUMER) around a handler, ``messaging.system = "nats"``. Injection and
extraction happen in the bus only, so one run is one trace across every service.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from shared.config import TelemetryConfig

_configured = False


def configure_tracing(cfg: TelemetryConfig, service: str) -> None:
    global _configured
    if _configured:  # the embedded stack hosts several services in one process
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"flowyard-{service}"}))
    if cfg.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


@functools.cache
def tracer() -> trace.Tracer:
    # One tracer per process: a proxy until configure_tracing sets the provider, then its tracer.
    return trace.get_tracer("flowyard")


def inject(headers: MutableMapping[str, str]) -> None:
    propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
