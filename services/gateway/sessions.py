"""Browser sessions for the web UI: an API token exchanged once for an HttpOnly cookie.

The token is sent once, in the body of ``POST /v1/session`` — never in a URL, never kept by the
page. The gateway answers with a random session id in a cookie (``HttpOnly``, ``SameSite=Strict``,
``Secure`` when the request came over TLS, directly or through a proxy that says so) and a CSRF
token in the body, which the page sends back as ``X-CSRF-Token`` on every mutating request (a
cookie alone never authorises a change). Sessions live in the KV bucket ``fy_sessions`` under
the SHA-256 of their id, so every gateway replica knows them and a stolen bucket holds no usable
id; ``DELETE /v1/session`` removes the entry, which ends the session on every replica at once.
The user is looked up by name at each request: a user removed from the configuration loses its
sessions with its token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import msgspec
import nats.js.errors
from aiohttp import web

from shared.bus.connection import Bus
from shared.contract import subjects

COOKIE = "fy_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Session(msgspec.Struct, kw_only=True):
    user: str
    csrf: str
    created: float
    expires: float


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def start(bus: Bus, user: str, ttl_s: float) -> tuple[str, Session]:
    session_id = secrets.token_urlsafe(32)
    now = time.time()
    session = Session(user=user, csrf=secrets.token_urlsafe(32), created=now, expires=now + ttl_s)
    kv = await bus.kv(subjects.SESSIONS_BUCKET)
    await kv.create(_key(session_id), msgspec.json.encode(session))
    return session_id, session


async def find(bus: Bus, session_id: str) -> Session | None:
    if not session_id or len(session_id) > 128:
        return None
    kv = await bus.kv(subjects.SESSIONS_BUCKET)
    try:
        entry = await kv.get(_key(session_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    try:
        session = msgspec.json.decode(entry.value, type=Session)
    except msgspec.ValidationError:
        return None
    if session.expires <= time.time():
        await end(bus, session_id)
        return None
    return session


async def end(bus: Bus, session_id: str) -> None:
    kv = await bus.kv(subjects.SESSIONS_BUCKET)
    await kv.purge(_key(session_id))


def csrf_ok(session: Session, request: web.Request) -> bool:
    given = request.headers.get(CSRF_HEADER, "")
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())


def over_tls(request: web.Request) -> bool:
    """Served over TLS: directly, or behind a proxy that says so (only ever adds ``Secure``)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: web.StreamResponse, request: web.Request, session_id: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=over_tls(request),
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/", secure=over_tls(request), httponly=True, samesite="Strict")
