"""Why a model call failed, in the words routing decides on (docs/agents.md, "failure reasons")."""

from __future__ import annotations

from typing import Literal

# Routable: another agent may well succeed. Not routable: the request itself is at fault.
Reason = Literal[
    "rate_limited",  # the provider said 429 and retrying within the attempt did not get through
    "provider_unavailable",  # 5xx, overloaded, connection refused or timed out, after retries
    "auth_refused",  # 401/403: the key is wrong, missing or not allowed this model
    "bad_request",  # 400/404/422: the request (model name, parameters) is wrong
    "bad_answer",  # the provider's answer could not be read, or did not match the schema
    "no_provider",  # nothing configured to call
    # The coding CLIs' own (docs/agents.md): none is routable, another agent would fare no better.
    "max_turns",  # it ran out of turns before it finished
    "needs_permission",  # it stopped to ask a person, in a run nobody watches
    "cli_failed",  # it ended without a result
    "timeout",  # it did not finish within the attempt's timeout
    "unstartable",  # the CLI is not installed where the agent ran (routable: another agent may be)
]
ROUTABLE: frozenset[str] = frozenset(
    {"rate_limited", "provider_unavailable", "auth_refused", "no_provider", "unstartable"}
)


class LlmError(Exception):
    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        usage: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.usage = usage  # what was spent before it failed, when the failing side knows

    @property
    def retryable(self) -> bool:
        """Worth another HTTP request within the same attempt."""
        return self.reason in ("rate_limited", "provider_unavailable")


def classify(status: int) -> Reason:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_refused"
    if status in (408, 409) or status >= 500:
        return "provider_unavailable"
    return "bad_request"
