"""Errors as RFC 9457 problem details: every refusal says what is wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from aiohttp import web

from shared.api.views import Problem

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}
_encode = msgspec.json.Encoder().encode


class HttpProblem(Exception):
    """Raised by handlers; the middleware answers it as problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[str] | None = None,
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = dict(headers or {})
        self.title = title or _TITLES.get(status, "Error")


def problem_response(problem: HttpProblem, request_id: str) -> web.Response:
    body = Problem(
        type="about:blank",
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        errors=problem.errors,
        request_id=request_id,
    )
    return web.Response(
        status=problem.status,
        body=_encode(body),
        headers={"Content-Type": PROBLEM_JSON, **problem.headers},
    )
