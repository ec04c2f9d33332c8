"""Logs (``log``), the metrics/health port (``http``) and traces (``telemetry``)."""

from __future__ import annotations

from typing import Literal

from .base import Section, duration


class LogConfig(Section, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable on a terminal, JSON otherwise (containers, CI, files).
    format: Literal["auto", "json", "console"] = "auto"


class HttpConfig(Section, kw_only=True):
    host: str = "127.0.0.1"
    # Port for /healthz, /readyz and /metrics; 0 picks a free port, -1 disables the endpoint.
    port: int = 0

    def __post_init__(self) -> None:
        if not -1 <= self.port <= 65535:
            raise ValueError("port must be -1 (off), 0 (any free port) or 1-65535")


class TelemetryConfig(Section, kw_only=True):
    # none: spans are created (trace context still flows through NATS headers) but not exported.
    exporter: Literal["none", "console", "otlp"] = "none"
    # OTLP over HTTP/protobuf, the collector's base URL (http://tempo:4318); empty: the standard
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.
    endpoint: str = ""
    # A link to one trace in the user's tracing UI, e.g. https://grafana.example.com/explore?...{trace_id}
    trace_url: str = ""
    # Spans wait here for the background exporter; when it is full (a slow or dead collector)
    # new spans are dropped and counted (flowyard_spans_dropped_total), never waited for.
    queue_size: int = 4096
    export_timeout: str = "5s"
    # How often gauges read from JetStream (consumer lag, active runs, pending approvals) refresh.
    gauge_interval: str = "5s"

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: {self.endpoint!r} must be an http(s) URL like http://tempo:4318")
        if self.trace_url and "{trace_id}" not in self.trace_url:
            raise ValueError(
                f"trace_url: {self.trace_url!r} must contain {{trace_id}} where the trace id goes, "
                "e.g. http://jaeger:16686/trace/{trace_id}"
            )
        if self.queue_size < 1:
            raise ValueError(f"queue_size: {self.queue_size} is too small; at least 1 (the default is 4096)")
        for name in ("export_timeout", "gauge_interval"):
            if duration(getattr(self, name), name) <= 0:
                raise ValueError(f"{name}: must be more than 0, e.g. 5s")

    def link(self, trace_id: str) -> str | None:
        """The trace's address in the user's tracing UI, when ``trace_url`` is set."""
        return self.trace_url.replace("{trace_id}", trace_id) if self.trace_url and trace_id else None
