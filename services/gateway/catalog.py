"""Agents, the audit log, health and the OpenAPI document."""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
from aiohttp import web

from shared.api.openapi import document
from shared.api.views import AgentView, Health
from shared.contract import subjects
from shared.state import audit
from shared.workflow.builtin import builtin_agents
from shared.workflow.model import AgentDoc

from .context import GATEWAY
from .http import int_param, json_response

_agent = msgspec.json.Decoder(AgentDoc)
_openapi: bytes | None = None


def agent_view(agent: AgentDoc, source: str) -> AgentView:
    spec = agent.spec
    return AgentView(
        name=agent.metadata.name,
        source=source,  # type: ignore[arg-type]
        description=agent.metadata.description or spec.description,
        image=spec.image,
        command=spec.command,
        risk=spec.risk,
        inputs=spec.inputs,
        outputs=spec.outputs,
        timeout=spec.timeout,
        resources=msgspec.to_builtins(spec.resources),
        network=spec.network if isinstance(spec.network, str) else "allow",
        network_allow=[] if isinstance(spec.network, str) else list(spec.network.allow),
        secrets=spec.secrets,
        workspace=spec.workspace,
        capabilities=list(spec.capabilities),
        autonomous=spec.autonomous,
        llm=spec.llm is not None,
    )


async def list_agents(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    views = {name: agent_view(a, "builtin") for name, a in (await asyncio.to_thread(builtin_agents)).items()}
    kv = await gw.bus.kv(subjects.AGENTS_BUCKET)
    keys = await gw.bus.kv_keys(subjects.AGENTS_BUCKET)
    for key in keys:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            views[key] = agent_view(_agent.decode(entry.value), "registered")
    return json_response([views[k] for k in sorted(views)])


async def audit_log(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    limit = int_param(request, "limit", 100, low=1, high=1000)
    return json_response(await audit.newest(gw.bus, limit))


async def health(request: web.Request) -> web.Response:
    return json_response(Health(status="ok", services=["gateway"]))


async def ready(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if not gw.bus.connected:
        return json_response(Health(status="not ready", services={"gateway": "not connected to NATS"}), status=503)
    return json_response(Health(status="ready", services={"gateway": "ok"}))


async def openapi(request: web.Request) -> web.Response:
    global _openapi
    if _openapi is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("flowyard")
        except PackageNotFoundError:
            release = "0.1.0"
        _openapi = msgspec.json.encode(document(release))
    return web.Response(body=_openapi, headers={"Content-Type": "application/json"})
