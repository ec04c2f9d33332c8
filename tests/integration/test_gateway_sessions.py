"""Browser sessions (the web UI's sign-in): a token exchanged for an HttpOnly cookie, CSRF on every
change, sign-out ending the session on the server — over real HTTP against a gateway process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest

from .gateway import API_YAML, TOKENS, auth, gateway_stack

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def base(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway_stack(tmp_path_factory.mktemp("sessions")) as (_, url):
        yield url


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them


async def sign_in(s: aiohttp.ClientSession, base: str, user: str) -> dict:
    r = await s.post(f"{base}/v1/session", data=json.dumps({"token": TOKENS[user]}), headers=JSON)
    assert r.status == 201, await r.text()
    return await r.json()


async def test_sign_in_sets_a_strict_http_only_cookie_and_returns_a_csrf_token(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        r = await s.post(f"{base}/v1/session", data=json.dumps({"token": TOKENS["olga"]}), headers=JSON)
        assert r.status == 201
        body = await r.json()
        assert body["user"] == "olga" and body["roles"] == ["operator"] and len(body["csrf_token"]) >= 32
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("fy_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here
        assert TOKENS["olga"] not in cookie and TOKENS["olga"] not in json.dumps(body)
        # The cookie alone reads the API.
        r = await s.get(f"{base}/v1/runs")
        assert r.status == 200
        r = await s.get(f"{base}/v1/session")
        assert (await r.json())["csrf_token"] == body["csrf_token"]


async def test_behind_a_tls_proxy_the_cookie_is_secure(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        r = await s.post(
            f"{base}/v1/session",
            data=json.dumps({"token": TOKENS["vic"]}),
            headers={**JSON, "X-Forwarded-Proto": "https"},
        )
        assert r.status == 201 and "Secure" in r.headers["Set-Cookie"]


async def test_a_change_needs_the_csrf_token_as_well_as_the_cookie(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        r = await s.post(
            f"{base}/v1/workflows",
            data=API_YAML.read_bytes(),
            headers=auth("olga") | {"Content-Type": "application/yaml"},
        )
        assert r.status in (200, 201), await r.text()
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        session = await sign_in(s, base, "olga")
        body = json.dumps({"workflow": "hello", "inputs": {"who": "x"}})
        r = await s.post(f"{base}/v1/runs", data=body, headers=JSON)
        assert r.status == 403
        assert "X-CSRF-Token" in (await r.json())["detail"]
        r = await s.post(f"{base}/v1/runs", data=body, headers=JSON | {"X-CSRF-Token": "not-it"})
        assert r.status == 403
        r = await s.post(f"{base}/v1/runs", data=body, headers=JSON | {"X-CSRF-Token": session["csrf_token"]})
        assert r.status == 202, await r.text()
        # The session carries the user's roles: a viewer's session may not start a run either.
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        session = await sign_in(s, base, "vic")
        r = await s.post(f"{base}/v1/runs", data=body, headers=JSON | {"X-CSRF-Token": session["csrf_token"]})
        assert r.status == 403 and "operator" in (await r.json())["detail"]


async def test_sign_out_ends_the_session_on_the_server(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        session = await sign_in(s, base, "amy")
        stolen = {c.key: c.value for c in s.cookie_jar}["fy_session"]
        r = await s.delete(f"{base}/v1/session", headers={"X-CSRF-Token": session["csrf_token"]})
        assert r.status == 200 and (await r.json()) == {"ended": True}
        assert "fy_session=" in r.headers["Set-Cookie"] and "Max-Age=0" in r.headers["Set-Cookie"]
    # The old id, replayed, is refused: the session is gone on the server, not only in the browser.
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{base}/v1/runs", headers={"Cookie": f"fy_session={stolen}"})
        assert r.status == 401
        # Both are in the audit log, as amy's.
        r = await s.get(f"{base}/v1/audit", headers=auth("admin"))
        mine = [(e["action"], e["outcome"]) for e in await r.json() if e["user"] == "amy"]
        assert ("sign_in", "ok") in mine and ("sign_out", "ok") in mine


async def test_bad_sign_ins_are_refused_in_words(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        r = await s.post(f"{base}/v1/session", data=json.dumps({"token": "wrong"}), headers=JSON)
        assert r.status == 401 and "token" in (await r.json())["detail"]
        assert "Set-Cookie" not in r.headers
        r = await s.post(f"{base}/v1/session", data=json.dumps({"tok": "x"}), headers=JSON)
        assert r.status == 422
        r = await s.post(f"{base}/v1/session", data="{", headers=JSON)
        assert r.status == 400
        # A token in the URL is never read.
        r = await s.post(f"{base}/v1/session?token={TOKENS['olga']}", data="{}", headers=JSON)
        assert r.status == 422
        # A made-up cookie is no session.
        r = await s.get(f"{base}/v1/runs", headers={"Cookie": "fy_session=made-up"})
        assert r.status == 401
