"""Spans leave the process in the background, and a slow or dead collector costs only spans.

The SDK's ``BatchSpanProcessor`` already exports off the request path, but it drops spans from a
full queue without telling anyone but a log line; operators need the count as a metric
(``flowyard_spans_dropped_total``), so this processor owns the queue. One daemon thread sends
batches with the OTLP/HTTP exporter; ``on_end`` never blocks.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from shared.telemetry.metrics import SPANS_DROPPED, SPANS_EXPORTED

log = logging.getLogger("flowyard.telemetry")
_BATCH = 512
_DELAY_S = 1.0  # how long a lone span waits for company before it is sent
_WARN_EVERY_S = 60.0
_EXIT_FLUSH_MS = 500
_FLUSH: Any = object()  # queued by force_flush: send the batch being gathered now


def otlp_exporter(endpoint: str, *, timeout: float) -> SpanExporter:
    """OTLP over HTTP/protobuf. With no endpoint the standard ``OTEL_EXPORTER_OTLP_*`` variables
    apply (and their defaults); headers, certificates and compression always come from them."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # A dead collector would log a stack trace per batch; flowyard counts them instead.
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
    url = endpoint.rstrip("/") + "/v1/traces" if endpoint else None
    return OTLPSpanExporter(endpoint=url, timeout=timeout)


class BackgroundExport(SpanProcessor):
    def __init__(self, exporter: SpanExporter, *, queue_size: int) -> None:
        self._exporter = exporter
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._flushed = threading.Condition()
        self._sent_upto = 0  # spans taken off the queue and handled (sent or dropped)
        self._queued = 0
        self._stopping = False
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="flowyard-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping or not span.context.trace_flags.sampled:
            return
        try:
            self._queue.put_nowait(span)
        except queue.Full:
            SPANS_DROPPED.labels("queue_full").inc()
            self._warn("the span queue is full (collector slow or down): dropping spans")
            return
        with self._flushed:
            self._queued += 1

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [] if first is _FLUSH else [first]
            deadline = time.monotonic() + _DELAY_S
            while len(batch) < _BATCH and first is not _FLUSH:
                try:
                    span = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if span is None:
                    self._send(batch)
                    return
                if span is _FLUSH:
                    break  # someone waits for what is queued: send now
                batch.append(span)
            if batch:
                self._send(batch)

    def _send(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            result = self._exporter.export(batch)
        except Exception:  # an exporter bug must not kill the thread
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            SPANS_EXPORTED.inc(len(batch))
        else:
            SPANS_DROPPED.labels("export_failed").inc(len(batch))
            self._warn(f"could not send {len(batch)} spans to the collector; they are dropped")
        with self._flushed:
            self._sent_upto += len(batch)
            self._flushed.notify_all()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning("%s (counted in flowyard_spans_dropped_total)", message)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until what was queued so far has been handled, at most ``timeout_millis``."""
        deadline = time.monotonic() + timeout_millis / 1000
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_FLUSH)
        with self._flushed:
            target = self._queued
            while self._sent_upto < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._flushed.wait(left)
        return True

    def shutdown(self) -> None:
        # At exit (a CLI command ending), what is queued gets a moment to leave; a collector that
        # does not answer costs at most this much.
        self.force_flush(_EXIT_FLUSH_MS)
        self._stopping = True
        # When the queue is full the thread is left to die with the process (it is a daemon).
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._exporter.shutdown()
