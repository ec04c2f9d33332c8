"""The OpenAPI 3.1 document of the gateway, made from the operations table
(:mod:`shared.api.operations`) and the msgspec types the handlers encode."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.api.operations import AUTH_ERRORS, OPERATIONS, ApplyResult, Operation, Param
from shared.api.views import Problem

__all__ = ["OPERATIONS", "ApplyResult", "Operation", "Param", "document"]


_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}


def _types() -> list[Any]:
    found: list[Any] = [Problem]
    for op in OPERATIONS:
        for t in (op.response, op.body):
            if t is None or t == "yaml":
                continue
            if isinstance(t, dict):
                for media in t.values():
                    if "schema" in media and not isinstance(media["schema"], dict):
                        found.append(media["schema"])
            else:
                found.append(t)
    return found


def document(version: str = "0.1.0") -> dict[str, Any]:
    types = _types()
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas, strict=True))
    problem = {"application/problem+json": {"schema": by_type[Problem]}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        if isinstance(op.response, dict):
            content = {
                media: (
                    {"schema": by_type[spec["schema"]]}
                    if "schema" in spec and not isinstance(spec["schema"], dict)
                    else spec
                )
                for media, spec in op.response.items()
            }
        else:
            content = {"application/json": {"schema": by_type[op.response]}}
        responses[str(op.ok)] = {"description": op.summary, "content": content}
        if op.operation_id == "apply_workflow":
            responses["200"] = {"description": "Identical to the latest version, which was kept", "content": content}
        codes = set(op.errors) | ({*AUTH_ERRORS, 403} if op.role else set())
        codes |= {500} if op.path != "/healthz" else set()
        for code in sorted(codes):
            entry: dict[str, Any] = {"description": _TITLES[code], "content": problem}
            if code == 401:
                entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
            if code == 429:
                entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
            responses[str(code)] = entry
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": responses,
        }
        if op.role:
            item["description"] = f"Needs the {op.role} role (or admin)."
        else:
            item["security"] = []
        params = [
            {
                "name": p.name,
                "in": p.where,
                "description": p.description,
                "required": p.required or p.where == "path",
                "schema": p.schema,
            }
            for p in op.params
        ]
        if params:
            item["parameters"] = params
        if op.body == "yaml":
            item["requestBody"] = {
                "required": True,
                "description": "A YAML file of `kind: Workflow` (and `kind: Agent`) documents",
                "content": {"application/yaml": {"schema": {"type": "string"}}},
            }
        elif op.body is not None:
            item["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": by_type[op.body]}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flowyard gateway",
            "version": version,
            "description": "The REST API of flowyard. Errors are application/problem+json (RFC 9457). "
            "Every /v1 request needs `Authorization: Bearer TOKEN`, or the session cookie that "
            "`POST /v1/session` sets (the web UI); with the cookie, every POST and DELETE also needs "
            "the session's `X-CSRF-Token` header.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "fy_session"},
            },
        },
    }
