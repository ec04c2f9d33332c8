"""The gateway over real HTTP: every endpoint, every error status, events, idempotency, audit.

The planner, scheduler, executor, approver and gateway run as separate processes against a real
nats-server; requests are real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from shared.bus.server import NatsServer

from .gateway import API_YAML, TOKENS, auth, gateway_config, sse, start_gateway
from .stack import Stack

YAML = {"Content-Type": "application/yaml"}
JSON = {"Content-Type": "application/json"}
FINAL = ("run.succeeded", "run.failed", "run.cancelled")


@pytest.fixture(scope="module")
def gw(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    workdir = tmp_path_factory.mktemp("gateway")
    server = NatsServer(workdir / "nats").start()
    stack = Stack(server, workdir, **gateway_config(workdir))
    try:
        for name in ("planner", "scheduler", "executor", "approver"):
            stack.start(name)
        url = start_gateway(stack)
        yield stack, url
    finally:
        stack.stop_all()
        server.stop()


@pytest.fixture(scope="module")
def base(gw: tuple[Stack, str]) -> str:
    return gw[1]


@pytest.fixture(scope="module", autouse=True)
def applied(base: str) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{base}/v1/workflows", data=API_YAML.read_bytes(), headers=YAML | auth("olga"))
            assert r.status in (200, 201), await r.text()

    asyncio.run(go())


async def start(s: aiohttp.ClientSession, base: str, workflow: str, user: str = "olga", **inputs: Any) -> dict:
    r = await s.post(f"{base}/v1/runs", json={"workflow": workflow, "inputs": inputs}, headers=auth(user))
    assert r.status == 202, await r.text()
    return await r.json()


async def wait_end(s: aiohttp.ClientSession, base: str, run_id: str) -> list[dict]:
    """Every event of the run, read from /v1/events until its final one."""
    seen = []
    async with s.get(f"{base}/v1/events", params={"run_id": run_id}, headers=auth("vic")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        async for event in sse(r):
            seen.append(event)
            if event["event"] in FINAL:
                return seen
    raise AssertionError("the stream ended before the run")


async def problem(r: aiohttp.ClientResponse, status: int) -> dict:
    body = await r.text()
    assert r.status == status, body
    assert r.headers["Content-Type"].startswith("application/problem+json")
    doc = json.loads(body)
    assert doc["status"] == status and doc["title"] and doc["detail"]
    assert "Traceback" not in body
    return doc


# --- authentication and roles -----------------------------------------------------------------


async def test_no_token_and_wrong_token_are_401(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{base}/v1/runs")
        await problem(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = await s.get(f"{base}/v1/runs", headers={"Authorization": "Bearer not-a-token"})
        doc = await problem(r, 401)
        assert "invalid_token" in r.headers["WWW-Authenticate"] and "not-a-token" not in json.dumps(doc)
        r = await s.get(f"{base}/v1/runs", headers={"Authorization": f"Basic {TOKENS['admin']}"})
        await problem(r, 401)
        # Unknown paths need a token too: no route is revealed to a stranger.
        await problem(await s.get(f"{base}/v1/secret-things"), 401)
        await problem(await s.get(f"{base}/v1/secret-things", headers=auth("vic")), 404)


async def test_public_endpoints_and_response_headers(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/healthz", "/readyz", "/openapi.json"):
            r = await s.get(f"{base}{path}", headers={"X-Request-Id": "my-req-1"})
            assert r.status == 200, path
            assert r.headers["X-Request-Id"] == "my-req-1"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-store"
            assert "Access-Control-Allow-Origin" not in r.headers
        doc = await (await s.get(f"{base}/openapi.json")).json()
        assert doc["openapi"] == "3.1.0" and "/v1/runs" in doc["paths"]
        r = await s.get(f"{base}/v1/agents", headers=auth("vic") | {"Origin": "https://evil.example"})
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        assert len(r.headers["X-Request-Id"]) >= 16


async def test_viewer_may_read_but_not_start_apply_or_decide(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        assert (await s.get(f"{base}/v1/workflows", headers=auth("vic"))).status == 200
        r = await s.post(f"{base}/v1/runs", json={"workflow": "hello", "inputs": {"who": "x"}}, headers=auth("vic"))
        doc = await problem(r, 403)
        assert "operator" in doc["detail"]
        r = await s.post(f"{base}/v1/workflows", data=API_YAML.read_bytes(), headers=YAML | auth("vic"))
        await problem(r, 403)
        r = await s.post(f"{base}/v1/approvals/x.y/approve", json={}, headers=auth("olga"))
        await problem(r, 403)  # an operator is not an approver


# --- the workflow registry ----------------------------------------------------------------------


async def test_apply_versions_show_and_delete(base: str) -> None:
    doc = (
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata:\n  name: copy\n  description: greets twice\n"
        "spec:\n  inputs:\n    who: {type: string}\n    times: {type: integer, default: 1}\n"
        "  nodes:\n    - {id: greet, agent: greeter, with: {who: '{{ inputs.who }}'}}\n"
    )
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/workflows", data=API_YAML.read_bytes(), headers=YAML | auth("olga"))
        same = await r.json()
        assert r.status == 200 and same["changed"] is False  # identical: the version is kept
        r = await s.post(f"{base}/v1/workflows", data=doc.encode(), headers=YAML | auth("olga"))
        first = await r.json()
        assert r.status == 201 and first == {
            "name": "copy",
            "version": 1,
            "changed": True,
            "applied": [{"name": "copy", "version": 1, "changed": True}],
        }
        r = await s.post(
            f"{base}/v1/workflows", data=doc.replace("twice", "thrice").encode(), headers=YAML | auth("olga")
        )
        assert r.status == 201 and (await r.json())["version"] == 2
        listed = await (await s.get(f"{base}/v1/workflows", headers=auth("vic"))).json()
        copy = next(w for w in listed if w["name"] == "copy")
        assert copy["version"] == 2 and copy["applied_by"] == "olga" and "thrice" in copy["description"]
        assert copy["inputs"]["who"]["required"] is True and copy["inputs"]["times"]["default"] == 1
        v1 = await (await s.get(f"{base}/v1/workflows/copy", params={"version": "1"}, headers=auth("vic"))).json()
        assert v1["version"] == 1 and "twice" in v1["source"] and v1["definition"]["metadata"]["name"] == "copy"
        latest = await (await s.get(f"{base}/v1/workflows/copy", headers=auth("vic"))).json()
        assert latest["version"] == 2 and "thrice" in latest["source"]
        await problem(await s.get(f"{base}/v1/workflows/copy", params={"version": "7"}, headers=auth("vic")), 404)
        r = await s.delete(f"{base}/v1/workflows/copy", headers=auth("olga"))
        assert r.status == 200
        await problem(await s.get(f"{base}/v1/workflows/copy", headers=auth("vic")), 404)
        await problem(await s.delete(f"{base}/v1/workflows/copy", headers=auth("olga")), 404)
        # A later apply goes on from the last number: version 1 never names two documents.
        r = await s.post(f"{base}/v1/workflows", data=doc.encode(), headers=YAML | auth("olga"))
        assert (await r.json())["version"] == 3


async def test_invalid_workflow_is_422_naming_node_and_field(base: str) -> None:
    bad = (
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: bad}\nspec:\n  nodes:\n"
        "    - {id: one, agent: greeter, with: {who: x}, retyr: {attempts: 2}}\n"
    )
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/workflows", data=bad.encode(), headers=YAML | auth("olga"))
        doc = await problem(r, 422)
        assert any("node 'one'" in e and "retyr" in e and "retry" in e for e in doc["errors"]), doc
        unknown = bad.replace(", retyr: {attempts: 2}", "").replace("greeter", "nobody")
        doc = await problem(
            await s.post(f"{base}/v1/workflows", data=unknown.encode(), headers=YAML | auth("olga")), 422
        )
        assert any("nobody" in e for e in doc["errors"])
        r = await s.post(f"{base}/v1/workflows", data=b"spec: [unclosed", headers=YAML | auth("olga"))
        doc = await problem(r, 400)
        assert "malformed YAML" in doc["detail"]
        r = await s.post(f"{base}/v1/workflows", data=b"\xff\xfe", headers=YAML | auth("olga"))
        await problem(r, 400)


async def test_wrong_content_type_and_oversized_body(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            f"{base}/v1/workflows", data=API_YAML.read_bytes(), headers={"Content-Type": "text/plain"} | auth("olga")
        )
        await problem(r, 415)
        r = await s.post(
            f"{base}/v1/runs",
            data=b"workflow=hello",
            headers={"Content-Type": "application/x-www-form-urlencoded"} | auth("olga"),
        )
        await problem(r, 415)
        big = json.dumps({"workflow": "hello", "inputs": {"who": "x" * 100_000}}).encode()
        r = await s.post(f"{base}/v1/runs", data=big, headers=JSON | auth("olga"))
        doc = await problem(r, 413)
        assert "65536" in doc["detail"]

        async def chunks():  # no Content-Length: refused while it streams in
            for _ in range(20):
                yield b" " * 8192

        r = await s.post(f"{base}/v1/runs", data=chunks(), headers=JSON | auth("olga"))
        await problem(r, 413)


# --- runs ---------------------------------------------------------------------------------------


async def test_a_run_over_http_followed_to_its_end_and_resumed(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        run = await start(s, base, "hello", who="ann")
        assert run["status"] == "pending" and run["requested_by"] == "olga" and run["workflow_version"] >= 1
        assert run["trigger"] == {"type": "api"} and run["nodes"] == {"greet": run["nodes"]["greet"]}
        events = await wait_end(s, base, run["run_id"])
        names = [e["event"] for e in events]
        assert names[0] == "run.requested" and names[-1] == "run.succeeded"
        assert {"run.planned", "run.started", "task.started", "task.succeeded"} <= set(names)
        ids = [int(e["id"]) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert events[-1]["data"]["outputs"] == {"greeting": "hello ann"}
        # A client that lost its connection after the third event gets exactly the rest.
        headers = auth("vic") | {"Last-Event-ID": events[2]["id"]}
        async with s.get(f"{base}/v1/events", params={"run_id": run["run_id"]}, headers=headers) as r:
            rest = []
            async for event in sse(r):
                rest.append(event)
                if event["event"] in FINAL:
                    break
        assert [e["id"] for e in rest] == [e["id"] for e in events[3:]]
        got = await (await s.get(f"{base}/v1/runs/{run['run_id']}", headers=auth("vic"))).json()
        assert got["status"] == "succeeded" and got["outputs"] == {"greeting": "hello ann"}
        assert got["requested_by"] == "olga" and got["finished_at"] and got["created_at"]
        assert got["nodes"]["greet"]["status"] == "succeeded" and got["nodes"]["greet"]["attempts"] == 1
        listed = await (
            await s.get(f"{base}/v1/runs", params={"workflow": "hello", "status": "succeeded"}, headers=auth("vic"))
        ).json()
        assert listed[0]["run_id"] == run["run_id"] and all(r["workflow"] == "hello" for r in listed)
        logs = await (await s.get(f"{base}/v1/runs/{run['run_id']}/logs", headers=auth("vic"))).json()
        assert {"node": "greet", "item": None, "attempt": 1, "line": "greeting ann"} in logs
        async with s.get(f"{base}/v1/runs/{run['run_id']}/logs", params={"follow": "true"}, headers=auth("vic")) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            streamed = [e async for e in sse(r)]
        assert streamed[0]["event"] == "log" and streamed[0]["data"]["lines"] == ["greeting ann"]
        assert streamed[-1] == {"event": "end", "data": {"run_id": run["run_id"], "status": "succeeded"}}


async def test_events_stream_filters_by_workflow_and_starts_at_now(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/v1/events", params={"workflow": "hello"}, headers=auth("vic")) as r:
            first = await r.content.readline()
            assert first.startswith(b"retry:")  # the stream is open: start runs now
            await start(s, base, "broken")
            mine = await start(s, base, "hello", who="bo")
            async for event in sse(r):
                assert event["data"]["run_id"] == mine["run_id"], event  # the other workflow is filtered out
                if event["event"] in FINAL:
                    break
        await problem(await s.get(f"{base}/v1/events", headers=auth("vic") | {"Last-Event-ID": "abc"}), 400)


async def test_bad_inputs_unknown_workflow_and_malformed_json(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/runs", json={"workflow": "hello", "inputs": {"whom": "x"}}, headers=auth("olga"))
        doc = await problem(r, 422)
        assert any("'whom' is not declared" in e for e in doc["errors"]) and any(
            "'who' is required" in e for e in doc["errors"]
        )
        r = await s.post(f"{base}/v1/runs", json={"workflow": "hello", "inputs": {"who": 5}}, headers=auth("olga"))
        assert "must be of type string" in json.dumps(await problem(r, 422))
        r = await s.post(f"{base}/v1/runs", json={"workflow": "nope", "inputs": {}}, headers=auth("olga"))
        await problem(r, 404)
        r = await s.post(f"{base}/v1/runs", json={"workflw": "hello"}, headers=auth("olga"))
        await problem(r, 422)
        r = await s.post(f"{base}/v1/runs", data=b'{"workflow": ', headers=JSON | auth("olga"))
        assert "malformed JSON" in (await problem(r, 400))["detail"]
        await problem(await s.get(f"{base}/v1/runs/r0000nope", headers=auth("vic")), 404)
        await problem(await s.get(f"{base}/v1/runs/..%2F..%2Fetc", headers=auth("vic")), 404)
        await problem(await s.post(f"{base}/v1/runs/r0000nope/cancel", headers=auth("olga")), 404)
        await problem(await s.get(f"{base}/v1/runs", params={"limit": "lots"}, headers=auth("vic")), 400)
        await problem(await s.get(f"{base}/v1/runs", params={"status": "sleeping"}, headers=auth("vic")), 400)


async def test_idempotency_key_starts_one_run(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        body = {"workflow": "hello", "inputs": {"who": "idem"}}
        key = {"Idempotency-Key": f"deploy-{time.time_ns()}"}
        r1 = await s.post(f"{base}/v1/runs", json=body, headers=auth("olga") | key)
        r2 = await s.post(f"{base}/v1/runs", json=body, headers=auth("olga") | key)
        one, two = await r1.json(), await r2.json()
        assert r1.status == r2.status == 202 and one["run_id"] == two["run_id"]
        assert r2.headers.get("Idempotent-Replayed") == "true"
        # Another user with the same key is another request.
        r3 = await s.post(f"{base}/v1/runs", json=body, headers=auth("ops") | key)
        assert (await r3.json())["run_id"] != one["run_id"]
        r4 = await s.post(f"{base}/v1/runs", json={**body, "inputs": {"who": "else"}}, headers=auth("olga") | key)
        await problem(r4, 422)
        await wait_end(s, base, one["run_id"])
        listed = await (await s.get(f"{base}/v1/runs", params={"limit": "1000"}, headers=auth("vic"))).json()
        idem = [r for r in listed if r["requested_by"] == "olga" and r["outputs"].get("greeting") == "hello idem"]
        assert len(idem) == 1


async def test_cancel_and_retry(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        run = await start(s, base, "slow")
        run_id = run["run_id"]
        async with s.get(f"{base}/v1/events", params={"run_id": run_id}, headers=auth("vic")) as stream:
            async for event in sse(stream):
                if event["event"] == "task.started":
                    break
            r = await s.post(f"{base}/v1/runs/{run_id}/cancel", headers=auth("olga"))
            assert r.status == 202, await r.text()
            async for event in sse(stream):
                if event["event"] in FINAL:
                    assert event["event"] == "run.cancelled"
                    break
        await problem(await s.post(f"{base}/v1/runs/{run_id}/cancel", headers=auth("olga")), 409)
        failed = await start(s, base, "broken")
        events = await wait_end(s, base, failed["run_id"])
        assert events[-1]["event"] == "run.failed"
        r = await s.post(f"{base}/v1/runs/{failed['run_id']}/retry", headers=auth("ops"))
        again = await r.json()
        assert r.status == 202 and again["retry_of"] == failed["run_id"] and again["requested_by"] == "ops"
        await wait_end(s, base, again["run_id"])
        shown = await (await s.get(f"{base}/v1/runs/{again['run_id']}", headers=auth("vic"))).json()
        assert shown["nodes"]["first"]["reused_from"] == failed["run_id"]
        ok = await start(s, base, "hello", who="z")
        await wait_end(s, base, ok["run_id"])
        await problem(await s.post(f"{base}/v1/runs/{ok['run_id']}/retry", headers=auth("olga")), 409)


# --- approvals ------------------------------------------------------------------------------------


async def pending(s: aiohttp.ClientSession, base: str, run_id: str) -> dict:
    async with s.get(f"{base}/v1/events", params={"run_id": run_id}, headers=auth("vic")) as stream:
        async for event in sse(stream):
            if event["event"] == "approval.requested":
                break
    for _ in range(100):
        listed = await (await s.get(f"{base}/v1/approvals", params={"status": "pending"}, headers=auth("vic"))).json()
        mine = [a for a in listed if a["run_id"] == run_id]
        if mine:
            return mine[0]
        await asyncio.sleep(0.05)  # the approver stores the record right after the event
    raise AssertionError("no pending approval")


async def test_approvals_self_approval_decide_twice_and_reject_reason(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        run = await start(s, base, "gated", user="ops")
        a = await pending(s, base, run["run_id"])
        shown = await (await s.get(f"{base}/v1/runs/{run['run_id']}", headers=auth("vic"))).json()
        assert shown["status"] == "waiting"
        one = await (await s.get(f"{base}/v1/approvals/{a['id']}", headers=auth("vic"))).json()
        assert one["approvers"] == ["amy", "ops"] and one["requested_by"] == "ops" and one["status"] == "pending"
        doc = await problem(await s.post(f"{base}/v1/approvals/{a['id']}/approve", json={}, headers=auth("ops")), 403)
        assert "ops started this run and may not approve" in doc["detail"]
        r = await s.post(f"{base}/v1/approvals/{a['id']}/reject", json={}, headers=auth("amy"))
        await problem(r, 422)
        r = await s.post(f"{base}/v1/approvals/{a['id']}/reject", json={"reason": "  "}, headers=auth("amy"))
        await problem(r, 422)
        r = await s.post(f"{base}/v1/approvals/{a['id']}/approve", json={"comment": "fine"}, headers=auth("amy"))
        decided = await r.json()
        assert r.status == 200 and decided["ok"] and decided["status"] == "granted"
        assert (
            decided["approval"]["approvals"][0]["user"] == "amy"
            and decided["approval"]["approvals"][0]["comment"] == "fine"
        )
        doc = await problem(await s.post(f"{base}/v1/approvals/{a['id']}/approve", headers=auth("admin")), 409)
        assert "already granted" in doc["detail"]
        assert (await wait_end(s, base, run["run_id"]))[-1]["event"] == "run.succeeded"
        await problem(await s.get(f"{base}/v1/approvals/nope.nope", headers=auth("vic")), 404)
        await problem(await s.post(f"{base}/v1/approvals/nope.nope/approve", headers=auth("amy")), 404)
        # Someone not among the approvers: refused by the workflow's rules.
        run2 = await start(s, base, "gated", user="olga")
        a2 = await pending(s, base, run2["run_id"])
        doc = await problem(await s.post(f"{base}/v1/approvals/{a2['id']}/approve", headers=auth("admin")), 403)
        assert "may not decide" in doc["detail"]
        r = await s.post(f"{base}/v1/approvals/{a2['id']}/reject", json={"reason": "not today"}, headers=auth("amy"))
        assert (await r.json())["status"] == "rejected"
        end = await wait_end(s, base, run2["run_id"])
        assert end[-1]["event"] == "run.failed" and "not today" in end[-1]["data"]["error"]


# --- catalogue and audit ----------------------------------------------------------------------


async def test_agents_and_audit(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        agents = await (await s.get(f"{base}/v1/agents", headers=auth("vic"))).json()
        by_name = {a["name"]: a for a in agents}
        assert by_name["greeter"]["source"] == "registered" and by_name["shell"]["source"] == "builtin"
        assert by_name["risky"]["risk"] == "approval_required"
        entries = await (await s.get(f"{base}/v1/audit", params={"limit": "500"}, headers=auth("vic"))).json()
        text = json.dumps(entries)
        assert not any(token in text for token in TOKENS.values())
        actions = {(e["user"], e["action"], e["outcome"]) for e in entries}
        assert ("olga", "apply", "ok") in actions and ("vic", "start", "refused") in actions
        assert all(e["via"] == "gateway" and e["client"] == "127.0.0.1" for e in entries)
        seqs = [e["seq"] for e in entries]
        assert seqs == sorted(seqs, reverse=True)
        few = await (await s.get(f"{base}/v1/audit", params={"limit": "2"}, headers=auth("vic"))).json()
        assert few == entries[:2]
