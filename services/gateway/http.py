"""The request pipeline: request ids, authentication, rate limits, roles, body limits, errors.

Every request passes the middleware once. It answers every refusal as problem+json, audits
every mutating call (whatever its outcome), and turns anything unexpected into a 500 that names
only the request id — the traceback goes to the log under that id.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from shared.bus.delivery import is_outage
from shared.contract.errors import ConfigurationError, MalformedDocument, ValidationFailed
from shared.telemetry import metrics

from . import sessions, ui
from .auth import User, bearer
from .context import GATEWAY, Gateway
from .problems import HttpProblem, problem_response
from .ratelimit import retry_after

log = structlog.get_logger("flowyard.gateway")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ACTIONS = {
    "apply_workflow": "apply",
    "delete_workflow": "delete",
    "start_run": "start",
    "cancel_run": "cancel",
    "retry_run": "retry",
    "approve": "approve",
    "reject": "reject",
    "start_plan": "plan",
    "approve_plan": "approve",
    "reject_plan": "reject",
    "delete_session": "sign_out",
}
_encode = msgspec.json.Encoder().encode
_UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="flowyard"'}


def user_of(request: web.Request) -> User:
    return request["user"]


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encode(value), headers={"Content-Type": "application/json", **(headers or {})}
    )


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    request["request_id"] = rid
    route = request.match_info.route
    op = gw.operations.get(route.name or "") if request.match_info.http_exception is None else None
    started = time.monotonic()
    failure: HttpProblem | None = None
    try:
        if request.method == "OPTIONS" and _allowed_origin(gw, request):
            return _preflight(request)
        if (op is not None and op.role is None) or ui.is_ui(request):
            await _limit(gw, f"addr:{request.remote}")
        else:
            user = await _authenticate(gw, request)
            request["user"] = user
            if request.match_info.http_exception is not None:
                raise _routing_problem(request.match_info.http_exception, request)
            assert op is not None and op.role is not None
            if not user.may(op.role):
                raise HttpProblem(
                    403, f"{user.name} may not {op.summary[0].lower()}{op.summary[1:]}: it needs the {op.role} role"
                )
            if not gw.bus.connected:
                raise HttpProblem(503, "NATS is unreachable; try again shortly", headers={"Retry-After": "5"})
        response = await handler(request)
    except HttpProblem as problem:
        failure = problem
    except web.HTTPException as exc:
        failure = _routing_problem(exc, request)
    except MalformedDocument as exc:
        failure = HttpProblem(400, exc.problems[0], errors=exc.problems)
    except ValidationFailed as exc:
        failure = HttpProblem(422, _summary(exc.problems), errors=exc.problems)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_outage(exc) or isinstance(exc, ConfigurationError):
            log.warning("nats unavailable", request_id=rid, path=request.path, error=str(exc) or type(exc).__name__)
            problem = HttpProblem(503, "NATS is unreachable; try again shortly", headers={"Retry-After": "5"})
        else:
            log.exception("request failed", request_id=rid, method=request.method, path=request.path)
            problem = HttpProblem(500, f"unexpected error; quote request id {rid} to the operators")
        failure = problem
    if failure is not None:
        response = problem_response(failure, rid)
        request["audit_detail"] = failure.detail
    if op is not None and op.operation_id in ACTIONS and "user" in request:
        await _audit(gw, request, op.operation_id, response)
    # The operation id, not the path: bounded labels (a 404 on a made-up path is "unmatched").
    operation = op.operation_id if op is not None else "ui" if ui.is_ui(request) else "unmatched"
    metrics.HTTP_REQUESTS.labels(operation, str(response.status)).inc()
    metrics.HTTP_SECONDS.labels(operation).observe(time.monotonic() - started)
    log.debug(
        "request",
        request_id=rid,
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round((time.monotonic() - started) * 1000, 2),
    )
    return response


def _summary(problems: list[str]) -> str:
    return problems[0] if len(problems) == 1 else f"{len(problems)} problems; see errors"


async def _audit(gw: Gateway, request: web.Request, operation: str, response: web.StreamResponse) -> None:
    status = response.status
    outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
    await gw.audit(
        request,
        user_of(request),
        ACTIONS[operation],  # type: ignore[arg-type]
        target=request.get("audit_target") or request.path,
        outcome=outcome,
        status=status,
        detail=request.get("audit_detail", ""),
    )


async def _authenticate(gw: Gateway, request: web.Request) -> User:
    header = request.headers.get("Authorization")
    session_id = request.cookies.get(sessions.COOKIE)
    if header is None and session_id:
        return await _from_session(gw, request, session_id)
    token = bearer(header)
    user = gw.users.authenticate(token) if token else None
    if user is None:
        # Unauthenticated requests spend their address's budget: guessing tokens is rate limited.
        await _limit(gw, f"addr:{request.remote}")
        if token is None:
            raise HttpProblem(401, "send the API token as `Authorization: Bearer TOKEN`", headers=_UNAUTHENTICATED)
        raise HttpProblem(
            401,
            "the token is not valid; check it, or ask an admin for one",
            headers={"WWW-Authenticate": 'Bearer realm="flowyard", error="invalid_token"'},
        )
    await _limit(gw, f"user:{user.name}")
    return user


async def _from_session(gw: Gateway, request: web.Request, session_id: str) -> User:
    """The web UI's cookie: a live session of a user still configured; a change also needs its CSRF token."""
    session = await sessions.find(gw.bus, session_id)
    user = gw.users.named(session.user) if session is not None else None
    if session is None or user is None:
        await _limit(gw, f"addr:{request.remote}")
        raise HttpProblem(401, "the session has ended or is not valid; sign in again", headers=_UNAUTHENTICATED)
    if request.method not in sessions.SAFE_METHODS and not sessions.csrf_ok(session, request):
        raise HttpProblem(
            403,
            "a change made with the session cookie needs the session's CSRF token: send the X-CSRF-Token "
            "header that sign-in (POST /v1/session) returned",
        )
    request["session"] = (session_id, session)
    await _limit(gw, f"user:{user.name}")
    return user


async def _limit(gw: Gateway, key: str) -> None:
    wait = await gw.limiter.take(key)
    if wait > 0:
        raise HttpProblem(
            429,
            f"too many requests; at most {gw.cfg.rate_limit.per_minute} a minute (burst {gw.cfg.rate_limit.burst})",
            headers={"Retry-After": retry_after(wait)},
        )


def _routing_problem(exc: web.HTTPException, request: web.Request) -> HttpProblem:
    if exc.status == 405:
        allow = exc.headers.get("Allow", "") if exc.headers else ""
        return HttpProblem(405, f"{request.method} is not allowed on {request.path}", headers={"Allow": allow})
    if exc.status == 404:
        return HttpProblem(404, f"no such endpoint: {request.path}; /openapi.json lists them")
    return HttpProblem(exc.status, exc.reason or "request refused")


def _allowed_origin(gw: Gateway, request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if not origin or not gw.cfg.cors_origins:
        return None
    if "*" in gw.cfg.cors_origins or origin in gw.cfg.cors_origins:
        return origin
    return None


def _preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, DELETE",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id",
            "Access-Control-Max-Age": "600",
        },
    )


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers on every response, streams included."""
    response.headers["X-Request-Id"] = request.get("request_id", "")
    for name, value in ui.SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    origin = _allowed_origin(request.app[GATEWAY], request)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After, Location"
        response.headers["Vary"] = "Origin"


# --- bodies and parameters ------------------------------------------------------------------------


def media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


async def read_body(request: web.Request, allowed: tuple[str, ...], *, required: bool = True) -> bytes:
    """The body, refused before it is read whole when over ``max_body``; b"" when optional and absent."""
    limit = request.app[GATEWAY].cfg.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise HttpProblem(413, f"the body is {length} bytes, over the {limit}-byte limit (gateway.max_body)")
    if not request.body_exists:
        if required:
            raise HttpProblem(
                400 if media_type(request) in allowed else 415,
                f"send the body as {allowed[0]}",
            )
        return b""
    if media_type(request) not in allowed:
        raise HttpProblem(
            415,
            f"Content-Type {media_type(request) or 'missing'!r} is not accepted here; send {' or '.join(allowed)}",
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise HttpProblem(413, f"the body is over the {limit}-byte limit (gateway.max_body)")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: web.Request, typ: type[T], *, required: bool = True) -> T | None:
    data = await read_body(request, ("application/json",), required=required)
    if not data.strip():
        if required:
            raise HttpProblem(400, "the body is empty; send a JSON object")
        return None
    try:
        return msgspec.json.decode(data, type=typ)
    except msgspec.ValidationError as exc:
        raise HttpProblem(422, f"body: {exc}", errors=[f"body: {exc}"]) from None
    except msgspec.DecodeError as exc:
        raise HttpProblem(400, f"malformed JSON: {exc}") from None


def int_param(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpProblem(400, f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise HttpProblem(400, f"{name}={value} is out of range; use {low} to {high}")
    return value


def choice_param(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise HttpProblem(400, f"{name}={raw!r} is not one of: {', '.join(choices)}")
    return raw


def bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise HttpProblem(400, f"{name}={raw!r}: use true or false")
