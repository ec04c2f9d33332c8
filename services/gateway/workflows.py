"""``/v1/workflows``: the registry over HTTP, validated exactly as ``flowyard validate`` does."""

from __future__ import annotations

from aiohttp import web

from shared.api.openapi import ApplyResult
from shared.state import registry
from shared.workflow.model import NAME_RE

from .context import GATEWAY
from .http import int_param, json_response, read_body, user_of
from .problems import HttpProblem

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_RE.match(name):
        raise HttpProblem(404, f"no workflow {name!r}: names are lowercase letters, digits and '-'")
    return name


async def list_workflows(request: web.Request) -> web.Response:
    return json_response(await registry.listing(request.app[GATEWAY].bus))


async def get_workflow(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = _name(request)
    version = int_param(request, "version", 0, low=0, high=2**31) or None
    found = await registry.get(gw.bus, name, version)
    if found is None:
        head = await registry.head(gw.bus, name)
        if head is None:
            raise HttpProblem(404, f"no workflow {name!r}; GET /v1/workflows lists them")
        raise HttpProblem(404, f"workflow {name!r} has no version {version}; its latest is {head.version}")
    return json_response(found)


async def apply_workflow(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = await read_body(request, YAML_TYPES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpProblem(400, "the body is not UTF-8 text; send the YAML file as UTF-8") from None
    label = request.headers.get("X-Flowyard-Filename", "") or "workflow.yaml"
    label = label if len(label) < 200 and label.isprintable() else "workflow.yaml"
    bundle = await registry.check_text(gw.bus, text, label, gw.config.agents.priorities)
    applied = await registry.apply(gw.bus, bundle, text, user=user_of(request).name)
    first = applied[0]
    request["audit_target"] = ", ".join(f"workflow/{a.name}" for a in applied)
    request["audit_detail"] = ", ".join(
        f"{a.name} version {a.version}" + ("" if a.changed else " (unchanged)") for a in applied
    )
    result = ApplyResult(name=first.name, version=first.version, changed=first.changed, applied=applied)
    changed = any(a.changed for a in applied)
    return json_response(result, status=201 if changed else 200, headers={"Location": f"/v1/workflows/{first.name}"})


async def delete_workflow(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = _name(request)
    request["audit_target"] = f"workflow/{name}"
    removed = await registry.delete(gw.bus, name)
    if removed is None:
        raise HttpProblem(404, f"no workflow {name!r}; GET /v1/workflows lists them")
    request["audit_detail"] = f"deleted with {removed.version} version(s)"
    return json_response(removed)
