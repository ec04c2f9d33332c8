"""A protocol-level fake model provider on loopback: Anthropic Messages, OpenAI Chat Completions
and Responses, plain or streamed (server-sent events), answering from a script.

Each request takes the next scripted reply (the last one repeats when the script runs out):
an answer (text or a JSON object), an HTTP error with optional ``retry-after``, a body that is
not JSON, or a delay first. Every request is kept, headers included, for the tests to read.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    text: str = "ok"
    data: dict[str, Any] | None = None  # a structured answer (a tool call, or JSON in the text)
    status: int = 200
    retry_after: str | None = None
    error_type: str = ""
    not_json: bool = False
    delay: float = 0.0
    model: str = ""  # default: the model asked for
    input_tokens: int = 12
    output_tokens: int = 7
    stop_reason: str | None = None
    # A turn of an agent loop (a coding CLI): the tools to call, as (name, input) pairs.
    tool_calls: list[tuple[str, dict[str, Any]]] | None = None


def answer(text: str = "ok", **kw: Any) -> Reply:
    return Reply(text=text, **kw)


def structured(data: dict[str, Any], **kw: Any) -> Reply:
    return Reply(data=data, **kw)


def calls(*tool_calls: tuple[str, dict[str, Any]], **kw: Any) -> Reply:
    return Reply(tool_calls=list(tool_calls), **kw)


def error(status: int, *, retry_after: str | None = None, error_type: str = "") -> Reply:
    return Reply(status=status, retry_after=retry_after, error_type=error_type or _ERROR_TYPES.get(status, "api_error"))


_ERROR_TYPES = {
    429: "rate_limit_error",
    401: "authentication_error",
    400: "invalid_request_error",
    529: "overloaded_error",
}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeProvider:
    script: list[Reply] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def then(self, *replies: Reply) -> FakeProvider:
        self.script.extend(replies)
        return self

    async def start(self, host: str | None = None) -> FakeProvider:
        host = host or self.host
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/responses", self._responses)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1beta/models/{call}", self._gemini)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.port)
        await site.start()
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.path, dict(request.headers), {}))
        reply = self.script[0] if self.script else Reply()
        if reply.status >= 400:
            return web.json_response({"error": {"message": f"scripted {reply.status}"}}, status=reply.status)
        return web.json_response({"data": [{"id": "claude-test", "type": "model"}], "object": "list"})

    # --- the protocols ------------------------------------------------------------------------

    async def _take(self, request: web.Request) -> tuple[Reply, dict[str, Any], web.Response | None]:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.seen.append(Seen(request.path, dict(request.headers), body))
        reply = self.script.pop(0) if len(self.script) > 1 else (self.script[0] if self.script else Reply())
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status >= 400:
            headers = {"retry-after": reply.retry_after} if reply.retry_after is not None else {}
            payload = {"type": "error", "error": {"type": reply.error_type, "message": f"scripted {reply.status}"}}
            return reply, body, web.json_response(payload, status=reply.status, headers=headers)
        if reply.not_json:
            return reply, body, web.Response(text="<html>upstream proxy error</html>", content_type="text/html")
        return reply, body, None

    async def _sse(self, request: web.Request, events: list[tuple[str | None, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for name, data in events:
            chunk = (
                f"event: {name}\n" if name else ""
            ) + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
            await response.write(chunk.encode())
        await response.write_eof()
        return response

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        reply, body, early = await self._take(request)
        if early is not None:
            return early
        model = reply.model or body.get("model", "")
        if reply.tool_calls:
            return await self._anthropic_tools(request, body, reply, model)
        tool = bool(body.get("tools")) and reply.data is not None
        if tool:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": f"toolu_{len(self.seen)}",
                "name": "answer",
                "input": reply.data,
            }
        else:
            text = json.dumps(reply.data) if reply.data is not None else reply.text
            block = {"type": "text", "text": text}
        stop = reply.stop_reason or ("tool_use" if tool else "end_turn")
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [block],
                    "stop_reason": stop,
                    "usage": usage,
                }
            )
        start_block = dict(block, input={}) if tool else dict(block, text="")
        delta = (
            {"type": "input_json_delta", "partial_json": json.dumps(reply.data)}
            if tool
            else {"type": "text_delta", "text": block["text"]}
        )
        return await self._sse(
            request,
            [
                (
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {"model": model, "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1}},
                    },
                ),
                ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start_block}),
                ("ping", {"type": "ping"}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop},
                        "usage": {"output_tokens": reply.output_tokens},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ],
        )

    async def _anthropic_tools(
        self, request: web.Request, body: dict[str, Any], reply: Reply, model: str
    ) -> web.StreamResponse:
        assert reply.tool_calls is not None
        blocks = [
            {"type": "tool_use", "id": f"toolu_{len(self.seen)}_{i}", "name": name, "input": args}
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "msg_t",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": "tool_use",
                    "usage": usage,
                }
            )
        events: list[tuple[str | None, Any]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_t",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
                    },
                },
            ),
        ]
        for i, block in enumerate(blocks):
            events += [
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": dict(block, input={})},
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": i}),
            ]
        events += [
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"output_tokens": reply.output_tokens},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return await self._sse(request, events)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        reply, body, early = await self._take(request)
        if early is not None:
            return early
        model = reply.model or body.get("model", "")
        text = json.dumps(reply.data) if reply.data is not None else reply.text
        stop = reply.stop_reason or "stop"
        usage = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        turn = sum(1 for s in self.seen if s.path.endswith("/chat/completions"))
        tools = [
            {"id": f"call_{turn}_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(reply.tool_calls or [])
        ]
        if tools:
            stop = reply.stop_reason or "tool_calls"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if tools else text}
            if tools:
                message["tool_calls"] = tools
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": stop}],
                    "usage": usage,
                }
            )
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
        if tools:
            # As the API streams them: each call's id and name first, its arguments after.
            deltas = [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"index": i, **{**t, "function": {**t["function"], "arguments": ""}}}],
                }
                for i, t in enumerate(tools)
            ] + [
                {"tool_calls": [{"index": i, "function": {"arguments": t["function"]["arguments"]}}]}
                for i, t in enumerate(tools)
            ]
            events = [(None, {**chunk, "choices": [{"index": 0, "delta": d}]}) for d in deltas]
            events.append((None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": stop}]}))
        else:
            half = len(text) // 2
            events = [
                (None, {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text[:half]}}]}),
                (None, {**chunk, "choices": [{"index": 0, "delta": {"content": text[half:]}, "finish_reason": stop}]}),
            ]
        return await self._sse(request, [*events, (None, {**chunk, "choices": [], "usage": usage}), (None, "[DONE]")])

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        """The Gemini API's generateContent and streamGenerateContent (``alt=sse``)."""
        model, _, method = request.match_info["call"].partition(":")
        if method == "countTokens":
            self.seen.append(Seen(request.path, dict(request.headers), await request.json()))
            return web.json_response({"totalTokens": 12})
        reply, _body, early = await self._take(request)
        if early is not None:
            status = {429: "RESOURCE_EXHAUSTED", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
            code = early.status
            message = f"scripted {code}"
            payload = {"error": {"code": code, "message": message, "status": status.get(code, "INTERNAL")}}
            retry = {"retry-after": reply.retry_after} if reply.retry_after is not None else {}
            return web.json_response(payload, status=code, headers=retry)
        text = json.dumps(reply.data) if reply.data is not None else reply.text
        if reply.tool_calls:
            parts: list[dict[str, Any]] = [{"functionCall": {"name": n, "args": a}} for n, a in reply.tool_calls]
        else:
            parts = [{"text": text}]
        usage = {
            "promptTokenCount": reply.input_tokens,
            "candidatesTokenCount": reply.output_tokens,
            "totalTokenCount": reply.input_tokens + reply.output_tokens,
        }
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        answer_body = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": reply.model or model}
        if method != "streamGenerateContent":
            return web.json_response(answer_body)
        return await self._sse(request, [(None, answer_body)])

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        reply, body, early = await self._take(request)
        if early is not None:
            return early
        model = reply.model or body.get("model", "")
        text = json.dumps(reply.data) if reply.data is not None else reply.text
        turn = len(self.seen)
        output = _response_items(reply, text, turn)
        usage = {
            "input_tokens": reply.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": reply.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        response = {
            "id": f"resp_{turn}",
            "object": "response",
            "status": "completed",
            "model": model,
            "output": output,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(response)
        started = {**response, "status": "in_progress", "output": []}
        events: list[tuple[str | None, Any]] = [("response.created", {"type": "response.created", "response": started})]
        for index, item in enumerate(output):
            events += _item_events(index, item)
        events.append(("response.completed", {"type": "response.completed", "response": response}))
        return await self._sse(request, events)


def _response_items(reply: Reply, text: str, turn: int) -> list[dict[str, Any]]:
    """A Responses answer's output: function calls (an agent loop's turn) or one message."""
    if reply.tool_calls:
        return [
            {
                "type": "function_call",
                "id": f"fc_{turn}_{i}",
                "call_id": f"call_{turn}_{i}",
                "name": name,
                "arguments": json.dumps(args),
                "status": "completed",
            }
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
    part = {"type": "output_text", "text": text, "annotations": []}
    return [{"type": "message", "id": f"msg_{turn}", "role": "assistant", "status": "completed", "content": [part]}]


def _item_events(index: int, item: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """The real API's events for one output item: added, its deltas, done."""
    if item["type"] != "message":
        opened = {**item, "arguments": "", "status": "in_progress"}
        return [
            (
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": index, "item": opened},
            ),
            ("response.output_item.done", {"type": "response.output_item.done", "output_index": index, "item": item}),
        ]
    text = item["content"][0]["text"]
    ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": []}
    opened = {**item, "status": "in_progress", "content": []}
    return [
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": index, "item": opened}),
        ("response.content_part.added", {"type": "response.content_part.added", **ids, "part": empty}),
        ("response.output_text.delta", {"type": "response.output_text.delta", **ids, "delta": text}),
        ("response.output_text.done", {"type": "response.output_text.done", **ids, "text": text}),
        ("response.content_part.done", {"type": "response.content_part.done", **ids, "part": item["content"][0]}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": index, "item": item}),
    ]


def docker_bridge_address() -> str:
    """The default Docker bridge's gateway: this machine, as the containers on it reach it.

    Docker reports it in the network's IPAM config, except where the daemon left it to the
    bridge interface (seen with Docker 28: the config holds only the subnet); then it is the
    address of that interface (``docker0`` unless the network names another).
    """

    def inspect(template: str) -> str:
        done = subprocess.run(
            ["docker", "network", "inspect", "bridge", "-f", template], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    gateway = inspect("{{range .IPAM.Config}}{{.Gateway}}{{end}}")
    if gateway:
        return gateway
    name = inspect('{{index .Options "com.docker.network.bridge.name"}}') or "docker0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        siocgifaddr = 0x8915  # the interface's IPv4 address (netdevice(7))
        packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


class Threaded:
    """Fake providers served from a thread of their own, for tests that drive processes; on
    ``host`` (default loopback; ``docker_bridge_address()`` for agents in containers)."""

    def __init__(self, count: int = 1, host: str = "127.0.0.1") -> None:
        self.fakes = [FakeProvider(host=host) for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> list[FakeProvider]:
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-llm", daemon=True)
        self._thread.start()
        for fake in self.fakes:
            asyncio.run_coroutine_threadsafe(fake.start(), self._loop).result(10)
        return self.fakes

    def __exit__(self, *exc: object) -> None:
        for fake in self.fakes:
            asyncio.run_coroutine_threadsafe(fake.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
