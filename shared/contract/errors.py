"""The one error hierarchy every service maps onto its consumer loop.

* :class:`RetryableError` — try again later: the message is nak'ed with a delay.
* :class:`PermanentError` — retrying cannot help: the message is terminated and copied to the
  dead-letter subject with the reason.
* :class:`ConfigurationError` — the service cannot work as configured: it refuses to start.
"""

from __future__ import annotations


class FlowyardError(Exception):
    """Base of every error flowyard raises on purpose."""


class RetryableError(FlowyardError):
    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class NotYet(FlowyardError):
    """Not an error: the message (a timer) is not due; hand it back for ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"not due for {delay:.3f}s")
        self.delay = delay


class PermanentError(FlowyardError):
    """The input can never be handled; the message goes to the dead-letter subject."""


class ConfigurationError(FlowyardError):
    """A bad setting; the message names the setting and how to fix it."""


class ValidationFailed(FlowyardError):
    """A workflow or agent document is invalid; ``problems`` holds one line per finding."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MalformedDocument(ValidationFailed):
    """The text is not YAML (or JSON) at all, as opposed to a document that breaks a rule."""
