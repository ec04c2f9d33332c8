"""The ``llm`` and ``agents`` sections: model providers, and how agents are chosen and limited.

``llm.providers.<name>`` is configured once and used by the ``llm`` agent, the coding-CLI agents
and the planner. A provider's key is a secret like any other: the file names it
(``api_key_secret``), the secret source holds it, and it never reaches an event, a log or the store.
"""

from __future__ import annotations

import re
from typing import Literal

from shared.formats.durations import parse_duration

from .base import Section

# gemini: Google's Gemini API, spoken by the gemini-cli agent only (the llm agent speaks the others).
ProviderKind = Literal["anthropic", "openai", "openai-compatible", "gemini"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_BASE_URLS: dict[str, str] = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com",
}


class Price(Section, kw_only=True):
    """US dollars per million tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if self.input < 0 or self.output < 0:
            raise ValueError("prices: input and output are dollars per million tokens, 0 or more")


class ProviderConfig(Section, kw_only=True):
    kind: ProviderKind
    base_url: str | None = None  # default: the vendor's API; required for openai-compatible
    api_key_secret: str | None = None  # a secret name; None: the endpoint needs no key (a local Ollama)
    default_model: str | None = None
    # OpenAI's two APIs: Chat Completions (every compatible server has it) or Responses.
    api: Literal["chat", "responses"] = "chat"
    stream: bool = False  # ask for a server-sent-event stream (long answers, proxies with idle timeouts)
    prices: dict[str, Price] = {}  # model -> price; a model missing here costs null (unknown)
    # Retries inside one attempt on 429, 5xx and connection errors.
    max_retries: int = 4
    backoff: float = 0.5  # seconds before the first retry; doubled each time, with jitter
    max_backoff: float = 20.0
    request_timeout: float = 120.0  # one HTTP request, seconds

    def __post_init__(self) -> None:
        if self.kind == "openai-compatible" and not self.base_url:
            raise ValueError(
                "an openai-compatible provider needs base_url, e.g. http://localhost:11434/v1 (Ollama) "
                "or http://litellm:4000/v1"
            )
        if self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url: {self.base_url!r} must be an http(s) URL")
        if self.api == "responses" and self.kind == "anthropic":
            raise ValueError("api: responses is OpenAI's; an anthropic provider speaks the Messages API")
        if self.max_retries < 0 or self.backoff < 0 or self.max_backoff < self.backoff:
            raise ValueError("max_retries and backoff must be 0 or more, and max_backoff at least backoff")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout: must be more than 0 seconds")

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.kind]).rstrip("/")

    def price(self, model: str) -> Price | None:
        return self.prices.get(model)


class LlmConfig(Section, kw_only=True):
    providers: dict[str, ProviderConfig] = {}
    default_provider: str | None = None  # default: the only provider, or the first by name

    def __post_init__(self) -> None:
        for name in self.providers:
            if not _NAME.match(name):
                raise ValueError(f"providers: {name!r} is not a usable name (letters, digits, _ . -)")
        if self.default_provider and self.default_provider not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            raise ValueError(f"default_provider: {self.default_provider!r} is not in providers (defined: {known})")

    def choose(self, name: str | None) -> tuple[str, ProviderConfig] | str:
        """The provider a step asked for (or the default), or why there is none."""
        if not self.providers:
            return "no model provider is configured; add one under llm.providers in the config (docs/agents.md)"
        chosen = name or self.default_provider or sorted(self.providers)[0]
        if chosen not in self.providers:
            return f"provider {chosen!r} is not configured; llm.providers has: {', '.join(sorted(self.providers))}"
        return chosen, self.providers[chosen]


class AgentLimit(Section, kw_only=True):
    """Held across every executor replica (NATS KV); 0 or absent: no limit."""

    per_minute: int | None = None
    per_hour: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for field in ("per_minute", "per_hour", "tokens_per_minute"):
            value = getattr(self, field)
            if value is not None and value < 0:
                raise ValueError(f"{field}: must be 0 (no limit) or more")


class AgentsConfig(Section, kw_only=True):
    # capability -> agents in the order they are tried; without an entry: every agent offering it, by name.
    priorities: dict[str, list[str]] = {}
    limits: dict[str, AgentLimit] = {}
    # How long an attempt waits for a limited agent when there is no other candidate.
    limit_wait: str = "30s"
    # After a provider said "rate limited", how long the agent is passed over by routing.
    rate_limit_cooldown: str = "30s"

    def __post_init__(self) -> None:
        for capability, names in self.priorities.items():
            if not names:
                raise ValueError(f"priorities.{capability}: list at least one agent, or leave the capability out")
            if len(set(names)) != len(names):
                raise ValueError(f"priorities.{capability}: an agent is listed twice")
        for field in ("limit_wait", "rate_limit_cooldown"):
            try:
                parse_duration(getattr(self, field))
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from None
