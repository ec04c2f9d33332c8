"""Whether a candidate may run now, and what it is given: the checks routing skips on.

Per attempt and candidate: its image's circuit breaker (a `capability:` node's; a plain node is
refused before it starts, as always), a rate-limit cool-down and ``agents.limits`` (shared by
every replica through NATS KV), and for an agent with ``spec.llm`` the provider it is given —
``llm.providers.<name>`` as JSON in ``FLOWYARD_LLM_PROVIDER`` and its key, a secret, in
``FLOWYARD_LLM_API_KEY``: only the chosen provider's key, and only to that agent.
"""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import structlog

from shared.config.llm import LlmConfig
from shared.config.secrets import SecretSource
from shared.config.settings import Config, seconds
from shared.contract.messages import AgentSnapshot, TaskDispatched
from shared.state.ratelimits import Limit, Limits
from shared.telemetry import metrics

from .breaker import Breaker
from .handlers import Judgement, Prepared, Refusal
from .runtimes import egressrules

log = structlog.get_logger("flowyard.executor")
PROVIDER_ENV = "FLOWYARD_LLM_PROVIDER"
KEY_ENV = "FLOWYARD_LLM_API_KEY"


def provider_for(
    llm: LlmConfig, agent: AgentSnapshot, given: object
) -> tuple[str, dict[str, object], str | None] | str:
    """(provider name, its config as the agent reads it, the key's secret name), or why none."""
    assert agent.llm is not None
    asked = given.get("provider") if isinstance(given, dict) else None
    chosen = llm.choose(asked if isinstance(asked, str) else agent.llm.provider)
    if isinstance(chosen, str):
        return chosen
    name, config = chosen
    if agent.llm.kinds and config.kind not in agent.llm.kinds:
        return (
            f"provider {name!r} is {config.kind}, and agent {agent.name!r} speaks only "
            f"{', '.join(agent.llm.kinds)}; give it a provider of that kind (input `provider` or llm.default_provider)"
        )
    return name, {"name": name, **msgspec.to_builtins(config)}, config.api_key_secret


class Gates:
    def __init__(self, config: Config, secrets: SecretSource, breaker: Breaker, limits: Limits | None) -> None:
        self.config = config
        self.secrets = secrets
        self.breaker = breaker
        self.limits = limits
        self.limit_wait = seconds(config.agents.limit_wait)
        self.cooldown = seconds(config.agents.rate_limit_cooldown)

    async def prepare(self, task: TaskDispatched) -> Prepared | Refusal:
        agent = task.agent
        if task.candidates:  # a plain node's breaker is checked before the attempt starts
            refusal = self.breaker.refusal(agent.image or agent.name)
            if refusal is not None:
                return Refusal("breaker_open", refusal)
        if self.limits is not None:
            # A cool-down steers routing away; a node that names its agent still gets it.
            left = await self.limits.cooling(agent.name) if task.candidates else None
            if left is not None:
                return Refusal(
                    "cooling_down", f"the provider rate-limited {agent.name!r}; passed over for {left:.0f}s more"
                )
            limited = await self._limit(task)
            if limited is not None:
                return limited
        if agent.llm is None:
            return Prepared()
        found = provider_for(self.config.llm, agent, task.input)
        if isinstance(found, str):
            return Refusal("no_provider", found)
        name, provider, secret = found
        env = {PROVIDER_ENV: json.dumps(provider, sort_keys=True)}
        url = self.config.llm.providers[name].url
        egress = (egressrules.provider_entry(url),) if agent.egress_provider else ()
        if secret is None:
            return Prepared(env=env, egress=egress)
        values, missing = await self.secrets.resolve([secret])
        if missing:
            return Refusal(
                "no_provider",
                f"provider {name!r}'s key (secret {secret}) is not available to the executor; "
                f"set {self.secrets.where(secret)}",
            )
        return Prepared(env=env, secrets={KEY_ENV: values[secret]}, egress=egress)

    async def _limit(self, task: TaskDispatched) -> Refusal | None:
        assert self.limits is not None
        configured = self.config.agents.limits.get(task.agent.name)
        if configured is None:
            return None
        limit = Limit(configured.per_minute, configured.per_hour, configured.tokens_per_minute)
        # With another candidate to go to, do not wait: route. Alone, wait a bounded while.
        alone = not task.candidates or task.route == len(task.candidates) - 1
        deadline = time.monotonic() + (self.limit_wait if alone else 0.0)
        while True:
            wait = await self.limits.take(task.agent.name, limit)
            if wait is None:
                return None
            if time.monotonic() + wait > deadline:
                metrics.AGENT_RATE_LIMITED.labels(task.agent.name).inc()
                return Refusal(
                    "limited",
                    f"agents.limits.{task.agent.name} reached (per_minute {limit.per_minute}, per_hour "
                    f"{limit.per_hour}, tokens_per_minute {limit.tokens_per_minute}); room again in {wait:.0f}s",
                )
            await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0.05)))

    async def after(self, agent: str, verdict: Judgement) -> None:
        """Count what one candidate's run used; a provider's rate limit starts its cool-down."""
        usage = verdict.usage
        if usage is not None:
            model = verdict.model or "unknown"
            metrics.AGENT_TOKENS.labels(agent, model, "input").inc(usage.input_tokens)
            metrics.AGENT_TOKENS.labels(agent, model, "output").inc(usage.output_tokens)
            metrics.AGENT_COST.labels(agent, model).inc(usage.cost_usd or 0.0)
        if self.limits is None:
            return
        try:
            if usage is not None:
                await self.limits.add_tokens(agent, usage.tokens)
            if verdict.cause == "rate_limited":
                metrics.AGENT_RATE_LIMITED.labels(agent).inc()
                await self.limits.cool(agent, self.cooldown)
        except Exception as exc:  # counting is best effort: the result is reported all the same
            log.warning("could not update the agent's limits", agent=agent, error=repr(exc))
