"""``/v1/runs``: start, list, show, cancel and retry runs, as the token's user."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import msgspec
import nats.js.errors
from aiohttp import web

from shared.api import runs
from shared.api.views import RunView, StartRun, ViewStatus, pending_view, run_status, run_view
from shared.contract import subjects
from shared.contract.envelope import now_rfc3339
from shared.contract.messages import RunRequested
from shared.state import registry
from shared.workflow.model import NAME_RE
from shared.workflow.validate import check_inputs

from .context import GATEWAY, Gateway
from .http import choice_param, int_param, json_body, json_response, user_of
from .problems import HttpProblem

STATUSES: tuple[str, ...] = ViewStatus.__args__  # type: ignore[attr-defined]
_KEY_CHARS = 255


class _Claim(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str
    fingerprint: str


_enc = msgspec.json.Encoder(order="sorted")
_dec_claim = msgspec.json.Decoder(_Claim)


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not runs.valid_run_id(run_id):
        raise HttpProblem(404, f"no run {run_id!r}; GET /v1/runs lists them")
    return run_id


async def _view_or_404(gw: Gateway, run_id: str) -> RunView:
    view = await runs.get_view(gw.bus, run_id)
    if view is None:
        raise HttpProblem(404, f"no run {run_id!r}; GET /v1/runs lists them")
    return view


async def start_run(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    user = user_of(request)
    body = await json_body(request, StartRun)
    assert body is not None
    request["audit_target"] = f"workflow/{body.workflow}"
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= _KEY_CHARS and key.isprintable()):
        raise HttpProblem(400, f"Idempotency-Key must be 1 to {_KEY_CHARS} printable characters")
    if not NAME_RE.match(body.workflow):
        raise HttpProblem(404, f"no workflow {body.workflow!r}; GET /v1/workflows lists them")
    head = await registry.head(gw.bus, body.workflow)
    number = body.version if body.version is not None else (head.version if head else 0)
    found = await gw.version(body.workflow, number) if head is not None and 1 <= number <= head.version else None
    if found is None:
        which = f" version {body.version}" if body.version is not None else ""
        raise HttpProblem(404, f"no workflow {body.workflow!r}{which}; apply it first (POST /v1/workflows)")
    version, doc = found
    where = f"workflow {version.name!r} version {version.version}"
    inputs = check_inputs(doc, body.inputs, file=where)  # ValidationFailed -> 422
    request_ = RunRequested(
        run_id=runs.new_run_id(),
        workflow=version.name,
        definition=version.definition,
        inputs=inputs,
        trigger={"type": "api"},
        source=where,
        requested_by=user.name,
        requested_at=now_rfc3339(),
        workflow_version=version.version,
    )
    claim_key = None
    if key is not None:
        fingerprint = hashlib.sha256(_enc.encode([body.workflow, body.version, body.inputs])).hexdigest()
        claim_key = "k" + hashlib.sha256(f"{user.name}\0{key}".encode()).hexdigest()
        earlier = await _claim(
            gw, claim_key, _Claim(run_id=request_.run_id, workflow=version.name, fingerprint=fingerprint)
        )
        if earlier is not None:
            if earlier.fingerprint != fingerprint:
                raise HttpProblem(
                    422,
                    "this Idempotency-Key was used for a different request in the last 24 h; use a new key",
                )
            view = await runs.get_view(gw.bus, earlier.run_id)
            if view is None:
                # Not planned yet, or a gateway died between claiming the key and publishing: send
                # the request again under the claimed run id (JetStream and the scheduler drop a
                # repeat), so a retried request never waits on a run that was never asked for.
                await runs.publish_request(gw.bus, msgspec.structs.replace(request_, run_id=earlier.run_id))
                view = pending_view(msgspec.structs.replace(request_, run_id=earlier.run_id))
            request["audit_target"] = f"run/{earlier.run_id}"
            request["audit_detail"] = "repeated request (Idempotency-Key): no new run"
            return json_response(
                view,
                status=202,
                headers={"Location": f"/v1/runs/{earlier.run_id}", "Idempotent-Replayed": "true"},
            )
    try:
        await runs.publish_request(gw.bus, request_)
    except BaseException:
        if claim_key is not None:  # no run started: the key must not point at one
            with contextlib.suppress(Exception):  # NATS away: the claim expires in 24 h at worst
                kv = await gw.bus.kv(subjects.IDEMPOTENCY_BUCKET)
                await asyncio.shield(kv.purge(claim_key))
        raise
    request["audit_target"] = f"run/{request_.run_id}"
    request["audit_detail"] = f"{version.name} version {version.version}"
    return json_response(pending_view(request_), status=202, headers={"Location": f"/v1/runs/{request_.run_id}"})


async def _claim(gw: Gateway, key: str, claim: _Claim) -> _Claim | None:
    """None when this request claimed the key; else the earlier request's claim."""
    kv = await gw.bus.kv(subjects.IDEMPOTENCY_BUCKET)
    for _ in range(5):
        try:
            await kv.create(key, _enc.encode(claim))
            return None
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue  # expired or purged between the two calls: claim it again
        if entry.value:
            return _dec_claim.decode(entry.value)
    raise HttpProblem(409, "this Idempotency-Key is being used by another request right now; retry")


async def list_runs(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    workflow = request.query.get("workflow") or None
    status = choice_param(request, "status", STATUSES)
    limit = int_param(request, "limit", 50, low=1, high=1000)

    records = await runs.list_records(gw.bus, limit, workflow=workflow, status=status)  # type: ignore[arg-type]
    return json_response([run_view(r) for r in records])


async def get_run(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response(await _view_or_404(gw, _run_id(request)))


async def cancel_run(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    run_id = _run_id(request)
    request["audit_target"] = f"run/{run_id}"
    view = await _view_or_404(gw, run_id)
    if view.status in ("succeeded", "failed", "cancelled"):
        raise HttpProblem(409, f"run {run_id} already {view.status}; nothing to cancel")
    if view.status == "pending" and await runs.get_record(gw.bus, run_id, whole=False) is None:
        raise HttpProblem(409, f"run {run_id} has not been planned yet; cancel it again in a moment")
    await runs.request_cancel(
        gw.bus, run_id, user=user_of(request).name, reason=f"cancelled by {user_of(request).name}"
    )
    return json_response(view, status=202, headers={"Location": f"/v1/runs/{run_id}"})


async def retry_run(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    run_id = _run_id(request)
    request["audit_target"] = f"run/{run_id}"
    record = await runs.get_record(gw.bus, run_id, whole=False)
    if record is None:
        await _view_or_404(gw, run_id)
        raise HttpProblem(409, f"run {run_id} has not run yet; only failed or cancelled runs can be retried")
    if record.status not in ("failed", "cancelled"):
        raise HttpProblem(409, f"run {run_id} is {run_status(record)}; only failed or cancelled runs can be retried")
    original = await runs.get_request(gw.bus, run_id)
    if original is None or record.plan is None:
        raise HttpProblem(
            409,
            f"run {run_id} never started (it was rejected, or its request has expired from the stream); "
            "fix the workflow and start a new run",
        )
    new = runs.retry_request(original, record, user=user_of(request).name, trigger={"type": "api"})
    await runs.publish_request(gw.bus, new)
    request["audit_detail"] = f"retried as run {new.run_id}"
    return json_response(pending_view(new), status=202, headers={"Location": f"/v1/runs/{new.run_id}"})
