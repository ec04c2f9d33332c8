"""`capability:` nodes: which agents may run one, in which order, and what is wrong with a choice.

Pure: the agents and ``agents.priorities`` (config) are passed in. The executor tries the
candidates in this order within each attempt (docs/agents.md, "Routing").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from shared.formats.durations import parse_duration
from shared.workflow.model import AgentDoc

CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# host:port, the host a DNS name (optionally "*." for every subdomain) or an IPv4 address.
ALLOW_RE = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*:\d{1,5}$")
PROVIDER_KINDS = ("anthropic", "openai", "openai-compatible", "gemini")


def on_offer(agents: Mapping[str, AgentDoc]) -> dict[str, list[str]]:
    """Capability -> the agents offering it, by name."""
    offered: dict[str, list[str]] = {}
    for name in sorted(agents):
        for capability in agents[name].spec.capabilities:
            offered.setdefault(capability, []).append(name)
    return offered


def candidates(
    capability: str, agents: Mapping[str, AgentDoc], priorities: Mapping[str, list[str]] | None = None
) -> list[str]:
    """The agents to try for ``capability``, first choice first.

    With ``agents.priorities.<capability>`` the list is that order, kept to the agents that exist
    and offer the capability; without it, every agent offering it, by name.
    """
    offering = on_offer(agents).get(capability, [])
    ordered = (priorities or {}).get(capability)
    if ordered is None:
        return offering
    return [name for name in ordered if name in offering]


def problems(
    capability: str,
    agents: Mapping[str, AgentDoc],
    priorities: Mapping[str, list[str]] | None,
    where: str,
) -> list[str]:
    """Why ``capability`` cannot be routed, as sentences naming the fix; [] when it can."""
    if not CAPABILITY_RE.match(capability):
        return [f"{where}: capability {capability!r} must be lower-case letters, digits and '_' (e.g. code_fixes)"]
    offered = on_offer(agents)
    if capability not in offered:
        known = sorted(offered)
        match = difflib.get_close_matches(capability, known, n=1)
        hint = f" Did you mean {match[0]!r}?" if match else ""
        listing = f"Capabilities on offer: {', '.join(known)}." if known else "No agent offers any capability."
        return [
            f"{where}: no agent offers capability {capability!r}.{hint} {listing} "
            "Add it to an agent's spec.capabilities, or name an agent with `agent:`"
        ]
    ordered = (priorities or {}).get(capability)
    if ordered is not None and not candidates(capability, agents, priorities):
        return [
            f"{where}: agents.priorities.{capability} lists {', '.join(ordered) or 'nothing'}, but none of them "
            f"offers {capability!r} (offered by: {', '.join(offered[capability])}); fix the list in the config"
        ]
    return []


def agent_problems(agent: AgentDoc, where: str) -> list[str]:
    """The routing and sandbox keys of one agent: capabilities, llm, network.allow."""
    spec = agent.spec
    found = []
    for capability in spec.capabilities:
        if not CAPABILITY_RE.match(capability):
            found.append(
                f"{where}: spec.capabilities: {capability!r} must be lower-case letters, digits and '_' "
                "(e.g. code_fixes)"
            )
    if len(set(spec.capabilities)) != len(spec.capabilities):
        found.append(f"{where}: spec.capabilities lists the same capability twice")
    if spec.llm is not None:
        for kind in spec.llm.kinds:
            if kind not in PROVIDER_KINDS:
                found.append(f"{where}: spec.llm.kinds: {kind!r} is not a provider kind ({', '.join(PROVIDER_KINDS)})")
    network = spec.network
    if not isinstance(network, str):
        if not network.allow and not network.provider:
            found.append(
                f"{where}: spec.network.allow is empty; list host:port pairs, set `provider: true` (an agent "
                "with spec.llm), or use `network: none` for no network at all"
            )
        if network.provider and spec.llm is None:
            found.append(
                f"{where}: spec.network.provider: true needs spec.llm (the provider's host is the one the "
                "attempt is given); list the hosts in spec.network.allow instead"
            )
        for entry in network.allow:
            port = entry.rsplit(":", 1)[-1]
            if not ALLOW_RE.match(entry) or not 0 < int(port if port.isdigit() else 0) < 65536:
                found.append(
                    f"{where}: spec.network.allow: {entry!r} must be host:port, e.g. api.anthropic.com:443 "
                    "(a leading *. allows every subdomain)"
                )
    if spec.warm is not None:
        found.extend(_warm_problems(agent, where))
    return found


MAX_WARM = 64


def _warm_problems(agent: AgentDoc, where: str) -> list[str]:
    """A warm pool's numbers, and the agents a started worker cannot serve."""
    spec = agent.spec
    warm = spec.warm
    assert warm is not None
    found = []
    if not 1 <= warm.max <= MAX_WARM:
        found.append(f"{where}: spec.warm.max must be between 1 and {MAX_WARM} (got {warm.max})")
    if not 0 <= warm.min <= warm.max:
        found.append(f"{where}: spec.warm.min must be between 0 and spec.warm.max ({warm.max}); got {warm.min}")
    try:
        if parse_duration(warm.idle) <= 0:
            raise ValueError(warm.idle)
    except ValueError:
        found.append(f"{where}: spec.warm.idle: {warm.idle!r} is not a positive duration; write it like 5m or 30s")
    # A worker is one process (or container) started once: it keeps one command, one working
    # directory and one way of answering, so what varies per attempt cannot be warm.
    if spec.stdout != "json":
        found.append(f"{where}: spec.warm needs stdout: json (a warm worker answers one JSON object per line)")
    if spec.workspace != "none":
        found.append(
            f"{where}: spec.warm cannot be used with workspace: {spec.workspace} (each attempt gets its own copy "
            "of the workspace, which a started worker cannot); drop spec.warm or the workspace"
        )
    for key in ("command_input", "image_input"):
        if getattr(spec, key) is not None:
            found.append(f"{where}: spec.warm cannot be used with spec.{key} (the worker's command is fixed once)")
    return found
