"""structlog set-up: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from shared.config.settings import LogConfig

_SECRET_KEYS = ("password", "token", "secret", "creds", "authorization")


def _redact(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    # Belt and braces: secrets must never reach a log line, even if a caller passes one by mistake.
    for key in event:
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "[redacted]"
    return event


def configure_logging(cfg: LogConfig, *, stream: object = None) -> None:
    out = stream or sys.stderr
    fmt = cfg.format
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if fmt == "console" else structlog.processors.JSONRenderer()
    )
    level = getattr(logging, cfg.level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # nats-py logs through the standard library; keep its warnings, in the same stream.
    logging.basicConfig(level=max(level, logging.WARNING), stream=out, format="%(levelname)s %(name)s: %(message)s")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
