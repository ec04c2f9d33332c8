"""``/v1/session``: sign in with an API token (a session cookie and a CSRF token back), read the
session, sign out. The store and the cookie's attributes are :mod:`.sessions`."""

from __future__ import annotations

from aiohttp import web

from shared.api.views import SessionEnded, SessionStart, SessionView, rfc3339
from shared.config.settings import seconds

from . import sessions
from .auth import User
from .context import GATEWAY
from .http import json_body, json_response, user_of
from .problems import HttpProblem


def _view(user: User, session: sessions.Session | None) -> SessionView:
    return SessionView(
        user=user.name,
        roles=sorted(user.roles),
        csrf_token=session.csrf if session else "",
        expires_at=rfc3339(session.expires) if session else "",
    )


async def create_session(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await json_body(request, SessionStart)
    assert body is not None
    user = gw.users.authenticate(body.token) if body.token else None
    if user is None:
        raise HttpProblem(401, "the token is not valid; check it, or ask an admin for one")
    ttl = seconds(gw.cfg.session_ttl)
    session_id, session = await sessions.start(gw.bus, user.name, ttl)
    await gw.audit(request, user, "sign_in", target="session", outcome="ok", status=201)
    response = json_response(_view(user, session), status=201, headers={"Cache-Control": "no-store"})
    sessions.set_cookie(response, request, session_id, int(ttl))
    return response


async def get_session(request: web.Request) -> web.Response:
    found = request.get("session")
    return json_response(_view(user_of(request), found[1] if found else None), headers={"Cache-Control": "no-store"})


async def delete_session(request: web.Request) -> web.Response:
    found = request.get("session")
    if found is not None:
        await sessions.end(request.app[GATEWAY].bus, found[0])
    response = json_response(SessionEnded(ended=found is not None))
    sessions.clear_cookie(response, request)
    return response
