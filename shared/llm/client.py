"""One model call over HTTP, with retries inside a deadline.

httpx is the one client for all three protocols (the vendors' SDKs are both built on it): one
retry policy, one error vocabulary and one way of streaming, whichever provider answers. Retries
follow 429, 5xx and connection errors with exponential back-off and full jitter, honour
``retry-after`` (and ``retry-after-ms``), and never wait past the attempt's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from shared.config.llm import ProviderConfig

from . import protocol
from .errors import LlmError, classify
from .protocol import Answer, Request


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A provider as one call needs it: the config plus its key (never logged, never stored)."""

    name: str
    config: ProviderConfig
    api_key: str | None = None


def _headers(ep: Endpoint) -> dict[str, str]:
    headers = {"content-type": "application/json", "user-agent": "flowyard"}
    if ep.config.kind == "anthropic":
        headers["anthropic-version"] = protocol.ANTHROPIC_VERSION
        if ep.api_key:
            headers["x-api-key"] = ep.api_key
    elif ep.config.kind == "gemini":
        if ep.api_key:
            headers["x-goog-api-key"] = ep.api_key
    elif ep.api_key:
        headers["authorization"] = f"Bearer {ep.api_key}"
    return headers


def build(ep: Endpoint, req: Request) -> tuple[str, dict[str, Any]]:
    if ep.config.kind == "anthropic":
        return protocol.anthropic_request(req)
    if ep.config.api == "responses":
        return protocol.responses_request(req)
    return protocol.chat_request(req, vendor=ep.config.kind == "openai")


def parse(ep: Endpoint, body: Any) -> Answer:
    if ep.config.kind == "anthropic":
        return protocol.anthropic_answer(body)
    if ep.config.api == "responses":
        return protocol.responses_answer(body)
    return protocol.chat_answer(body)


def parse_stream(ep: Endpoint, events: list[tuple[str, Any]]) -> Answer:
    if ep.config.kind == "anthropic":
        return protocol.anthropic_stream(events)
    if ep.config.api == "responses":
        return protocol.responses_stream(events)
    return protocol.chat_stream(events)


def retry_after(headers: httpx.Headers) -> float | None:
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200] or response.reason_phrase
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)[:300]
    return str(err or body)[:300]


async def _events(response: httpx.Response) -> list[tuple[str, Any]]:
    """Server-sent events as (event name, decoded data); ``[DONE]`` ends an OpenAI stream."""
    events: list[tuple[str, Any]] = []
    name, data = "", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                payload = "\n".join(data)
                if payload.strip() == "[DONE]":
                    break
                try:
                    events.append((name or "message", json.loads(payload)))
                except json.JSONDecodeError as exc:
                    raise LlmError(
                        "bad_answer", f"the provider's stream carried data that is not JSON ({exc.msg})"
                    ) from None
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data and "\n".join(data).strip() != "[DONE]":
        # A stream cut off mid-event: the events before it still hold the answer.
        with contextlib.suppress(json.JSONDecodeError):
            events.append((name or "message", json.loads("\n".join(data))))
    return events


async def _once(http: httpx.AsyncClient, ep: Endpoint, req: Request, timeout: float) -> Answer:
    path, body = build(ep, req)
    url = ep.config.url + path
    try:
        async with http.stream("POST", url, json=body, headers=_headers(ep), timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                reason = classify(response.status_code)
                raise LlmError(
                    reason,
                    f"{ep.name} answered HTTP {response.status_code}: {_error_message(response)}",
                    status=response.status_code,
                    retry_after=retry_after(response.headers),
                )
            if req.stream:
                return parse_stream(ep, await _events(response))
            raw = await response.aread()
    except httpx.TimeoutException:
        raise LlmError("provider_unavailable", f"{ep.name} did not answer within {timeout:.0f}s") from None
    except httpx.HTTPError as exc:
        raise LlmError("provider_unavailable", f"{ep.name} could not be reached: {type(exc).__name__}") from None
    try:
        decoded = json.loads(raw)
    except ValueError:
        raise LlmError("bad_answer", f"{ep.name} answered with a body that is not JSON") from None
    return parse(ep, decoded)


Sleep = Callable[[float], Any]


def new_client(ep: Endpoint) -> httpx.AsyncClient:
    """A client for one agent's calls. A plain-http endpoint (a local Ollama, a proxy on the
    pod's network) gets no TLS context: building one (loading the CA bundle) costs ~70 ms of the
    agent's start-up and would never be used; https endpoints verify as always."""
    plain = ep.config.url.startswith("http://")
    return httpx.AsyncClient(trust_env=True, verify=not plain)


async def call(
    ep: Endpoint,
    req: Request,
    *,
    deadline: float,
    http: httpx.AsyncClient | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[LlmError, float], None] | None = None,
) -> Answer:
    """The answer, or :class:`LlmError` once retries are spent or the deadline (monotonic) is near."""
    rng = rng or random.Random()
    own = http is None
    http = http or new_client(ep)
    try:
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0.05:
                raise LlmError("provider_unavailable", f"{ep.name}: no time left in the attempt for a request")
            try:
                return await _once(http, ep, req, min(ep.config.request_timeout, left))
            except LlmError as exc:
                if not exc.retryable or attempt >= ep.config.max_retries:
                    if exc.retryable and attempt:
                        exc.message = f"{exc.message} (after {attempt + 1} tries)"
                    raise
                backoff = min(ep.config.max_backoff, ep.config.backoff * (2**attempt))
                wait = exc.retry_after if exc.retry_after is not None else rng.uniform(0, backoff)
                if time.monotonic() + wait >= deadline - 0.05:
                    exc.message = f"{exc.message}; retrying after {wait:.1f}s would pass the attempt's timeout"
                    raise
                if on_retry is not None:
                    on_retry(exc, wait)
                await asyncio.sleep(wait)
                attempt += 1
    finally:
        if own:
            await http.aclose()


async def probe(ep: Endpoint, *, timeout: float = 5.0, http: httpx.AsyncClient | None = None) -> str | None:
    """None when the provider answers and takes the key (``GET /models``, which costs nothing);
    else what is wrong, in words (for ``flowyard doctor``)."""
    path = {"anthropic": "/v1/models", "gemini": "/v1beta/models"}.get(ep.config.kind, "/models")
    own = http is None
    http = http or new_client(ep)
    try:
        response = await http.get(ep.config.url + path, headers=_headers(ep), timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{ep.config.url} could not be reached: {type(exc).__name__}"
    finally:
        if own:
            await http.aclose()
    if response.status_code in (401, 403):
        return f"{ep.config.url} refused the key (HTTP {response.status_code}): {_error_message(response)}"
    if response.status_code >= 500:
        return f"{ep.config.url} answered HTTP {response.status_code}: {_error_message(response)}"
    return None  # 2xx, or a 404 from a server without the listing: it is there and took the request
