"""Wires approval requests, expiry timers and decision requests to :mod:`decisions`.

Each request is a record in KV ``fy_approvals`` changed with compare-and-set. A decision that
settles it is stored first, then published (``fy.run.<run>.approval.<node>.<outcome>``), then
marked published; on start the approver re-publishes anything settled but not marked, so a
crash in between delays a decision but never loses it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from shared.api import runs
from shared.bus.delivery import Delivery
from shared.contract import subjects
from shared.contract.envelope import epoch, now_rfc3339
from shared.contract.errors import NotYet, PermanentError, RetryableError
from shared.contract.messages import (
    AnyEvent,
    ApprovalDecided,
    ApprovalRecord,
    ApprovalRequested,
    RunFinished,
    TimerDue,
    decode_approval,
    encode,
)
from shared.service.host import Service
from shared.telemetry import metrics
from shared.telemetry import tracing as telemetry

from . import decisions

log = structlog.get_logger("flowyard.approver")

_decode_request = msgspec.json.Decoder(decisions.DecisionRequest).decode
_encode = msgspec.json.Encoder().encode


class ApproverService(Service):
    name = "approver"

    async def setup(self) -> None:
        self.records: KeyValue = await self.bus.kv(subjects.APPROVALS_BUCKET)
        self._pending = metrics.InProgress(metrics.APPROVALS_PENDING, metrics.APPROVAL_NEXT_EXPIRY)
        cfg = self.config.approver
        self.consume(
            "approver",
            subjects.RUNS_STREAM,
            subjects.APPROVER_FILTERS,
            self.handle_request,
            concurrency=cfg.concurrency,
        )
        self.consume(
            "approver-timers",
            subjects.TIMERS_STREAM,
            subjects.APPROVER_TIMER_FILTERS,
            self.handle_timer,
            concurrency=cfg.concurrency,
            max_deliver=-1,
        )

    async def start(self) -> None:
        await super().start()
        assert self.bus.nc is not None
        # A queue group: any replica answers a decision; KV compare-and-set keeps them consistent.
        await self.bus.nc.subscribe(subjects.DECIDE, queue="approver", cb=self._on_decide)
        await self._republish_settled()

    async def handle_request(self, event: AnyEvent, delivery: Delivery) -> None:
        if isinstance(event, RunFinished):
            await self._close_for(event)
            return
        if not isinstance(event, ApprovalRequested):
            raise PermanentError(f"the approver handles approval requests only, got {type(event).__name__}")
        try:
            await self.records.create(event.approval_id, encode(ApprovalRecord(request=event)))
            await self._index(_active(event), add=True)
            log.info(
                "approval requested",
                approval=event.approval_id,
                workflow=event.workflow,
                node=event.node_id,
                approvers=event.policy.approvers or "anyone but the requester",
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            # A redelivery: the record exists already (we may have died before indexing it).
            current = await self.get(event.approval_id)
            if current is not None and current.status == "pending":
                await self._index(_active(event), add=True)
        timer = TimerDue(run_id=event.run_id, kind="expiry", due_at=event.expires_at, approval_id=event.approval_id)
        await self.bus.publish(subjects.approval_timer(event.approval_id), timer, msg_id=f"{event.approval_id}:expiry")

    async def _close_for(self, finished: RunFinished) -> None:
        """A run that failed or was cancelled leaves no request waiting for a decision."""
        prefix = f"{finished.run_id}."
        try:
            # nats-py filters keys by substring; the prefix test below is the real one.
            keys = await self.records.keys(filters=[prefix])
        except nats.js.errors.NoKeysError:
            return
        for key in (k for k in keys if k.startswith(prefix)):
            await self.mutate(key, lambda rec: decisions.close(rec, now=now_rfc3339(), how=finished.status))

    async def handle_timer(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, TimerDue) or event.kind != "expiry":
            raise PermanentError(f"the approver's timers are expiries only, got {type(event).__name__}")
        wait = event.due_at - time.time()
        if wait > 0.001:
            raise NotYet(wait)
        await self.mutate(event.approval_id, lambda rec: decisions.expire(rec, now=now_rfc3339()))

    async def _on_decide(self, msg: Msg) -> None:
        reply = await self.decide(msg.data)
        if msg.reply:
            await self.bus.nc.publish(msg.reply, _encode(reply))  # type: ignore[union-attr]

    async def decide(self, data: bytes) -> decisions.DecisionReply:
        try:
            req = _decode_request(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return decisions.DecisionReply(
                ok=False, status="unknown", code="invalid", message=f"malformed decision: {exc}"
            )
        groups = self.config.approver.groups

        def change(rec: ApprovalRecord) -> ApprovalRecord | None:
            return decisions.apply(rec, req, now=now_rfc3339(), epoch=time.time(), groups=groups)

        try:
            try:
                record = await self.mutate(req.approval_id, change)
            except KeyError:
                # Asked for, but not stored yet: a client that reacts to `approval.requested` can
                # be quicker than this service's consumer. Store it from the event, then decide.
                if not await self._store_requested(req.approval_id):
                    raise
                record = await self.mutate(req.approval_id, change)
        except decisions.Refused as exc:
            current = await self.get(req.approval_id)
            log.info("decision refused", approval=req.approval_id, user=req.user, reason=str(exc))
            return decisions.DecisionReply(
                ok=False,
                status=current.status if current else "unknown",
                code=exc.code,
                message=str(exc),
                approval=current,
            )
        except KeyError:
            return decisions.DecisionReply(
                ok=False,
                status="unknown",
                code="unknown",
                message=f"no approval {req.approval_id!r}; see `flowyard approvals list`",
            )
        assert record is not None
        log.info("decision taken", approval=req.approval_id, user=req.user, decision=req.decision, status=record.status)
        return decisions.DecisionReply(ok=True, status=record.status, message=record.summary, approval=record)

    async def _store_requested(self, approval_id: str) -> bool:
        """Create the record from the run's `approval.requested` event, if there is one.

        The consumer that handles that event later finds the record and only sends the expiry timer.
        """
        run_id, _, node_id = approval_id.partition(".")
        if not (subjects.TOKEN.match(run_id) and subjects.TOKEN.match(node_id)):
            return False
        event = await runs.last_event(self.bus, subjects.approval_requested(run_id, node_id), ApprovalRequested)
        if event is None or event.approval_id != approval_id:
            return False
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.records.create(approval_id, encode(ApprovalRecord(request=event)))
            await self._index(_active(event), add=True)
        return True

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        try:
            entry = await self.records.get(approval_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
            return None
        return decode_approval(entry.value) if entry.value else None

    async def mutate(
        self, approval_id: str, change: Callable[[ApprovalRecord], ApprovalRecord | None]
    ) -> ApprovalRecord | None:
        for _ in range(50):
            try:
                entry = await self.records.get(approval_id)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
                raise KeyError(approval_id) from None
            record = decode_approval(entry.value or b"")
            new = change(record)
            if new is None:
                if record.status not in ("pending", "closed") and not record.published:
                    await self._publish(record, entry.revision or 0)
                return record
            try:
                revision = await self.records.update(approval_id, encode(new), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            if record.status == "pending" and new.status != "pending":
                self._settled(new)
                await self._index(_active(new.request), add=False)
            if new.status != "pending" and not new.published:
                await self._publish(new, revision)
            return new
        raise RetryableError(f"approval {approval_id}: record kept changing", delay=0.2)

    async def _publish(self, record: ApprovalRecord, revision: int) -> None:
        req = record.request
        outcome = record.status
        assert outcome in ("granted", "rejected", "expired")
        event = ApprovalDecided(
            run_id=req.run_id,
            approval_id=req.approval_id,
            workflow=req.workflow,
            node_id=req.node_id,
            outcome=outcome,
            approvals=record.approvals,
            rejection=record.rejection,
            inputs_hash=req.inputs_hash,
            summary=record.summary,
            labels=req.labels,
            kind=req.kind,
        )
        # The wait, from request to decision, as a span of the run; the decision is sent inside it.
        with telemetry.tracer().start_as_current_span(
            f"approval {req.node_id}" if req.kind == "step" else "plan approval",
            context=telemetry.run_root(req.run_id),
            start_time=int(epoch(req.requested_at) * 1e9) or None,
            attributes={
                "flowyard.run_id": req.run_id,
                "flowyard.workflow": req.workflow,
                "flowyard.node": req.node_id,
                "flowyard.approval.outcome": outcome,
                "flowyard.approval.approvers": len(record.approvals),
            },
        ):
            await self.bus.publish(
                subjects.approval_decided(req.run_id, req.node_id, outcome),
                event,
                msg_id=f"{req.approval_id}:decided",
            )
        # On a conflict someone else moved the record on; whoever holds it re-publishes if needed.
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            marked = msgspec.structs.replace(record, published=True)
            await self.records.update(req.approval_id, encode(marked), last=revision)

    def _settled(self, record: ApprovalRecord) -> None:
        if record.status in ("granted", "rejected", "expired"):
            waited = time.time() - epoch(record.request.requested_at)
            metrics.APPROVAL_WAIT_SECONDS.labels(record.request.workflow, record.status).observe(max(waited, 0.0))

    async def _index(self, subject: str, *, add: bool) -> None:
        """Keep FY_ACTIVE in step (flowyard_approvals_pending); a miss costs a gauge, nothing else."""
        try:
            await (self.bus.mark_active(subject) if add else self.bus.clear_active(subject))
        except Exception as exc:
            log.warning("pending-approvals index not updated", error=repr(exc))

    async def refresh_gauges(self) -> None:
        await super().refresh_gauges()
        self._pending.update(await self.bus.active(subjects.ACTIVE_APPROVALS))

    async def _republish_settled(self) -> None:
        try:
            keys = await self.records.keys()
        except nats.js.errors.NoKeysError:
            return
        for key in keys:
            try:
                entry = await self.records.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            record = decode_approval(entry.value or b"")
            if record.status != "pending" and not record.published:
                await self._publish(record, entry.revision or 0)


def _active(request: ApprovalRequested) -> str:
    return subjects.active_approval(request.workflow, request.expires_at, request.approval_id)
