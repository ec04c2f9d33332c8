"""A decision that arrives before the approver has stored its request (a client reacting to the
`approval.requested` event is quicker than the approver's consumer) is taken, not refused as
unknown. Found by bench/load.py: 1 in 20 approvals sent the moment the event appeared got 404."""

from __future__ import annotations

import secrets

import msgspec

from services.approver.service import ApproverService
from shared.bus.server import NatsServer
from shared.bus.topology import ensure_topology
from shared.config.settings import load_config
from shared.contract import subjects
from shared.contract.messages import ApprovalRequested
from shared.state.decide import DecisionRequest


async def test_a_decision_before_the_request_is_stored_is_taken(nats_server: NatsServer) -> None:
    config = load_config(None, env={"FLOWYARD_NATS_URL": nats_server.url})
    approver = ApproverService(config)
    await approver.bus.connect()
    try:
        await ensure_topology(approver.bus)
        await approver.setup()  # its consumers are made but never run: the request stays unhandled
        run_id = f"rrace{secrets.token_hex(4)}"
        request = ApprovalRequested(
            run_id=run_id,
            approval_id=f"{run_id}.deploy",
            workflow="w",
            node_id="deploy",
            agent="deploy",
            requested_by="carol",
            expires_at=9e9,
        )
        await approver.bus.publish(
            subjects.approval_requested(run_id, "deploy"), request, msg_id=f"{request.approval_id}:requested"
        )
        decide = msgspec.json.encode(DecisionRequest(approval_id=request.approval_id, decision="approve", user="dave"))
        reply = await approver.decide(decide)
        assert reply.ok and reply.status == "granted", reply
        # An id no run ever asked for is still unknown.
        unknown = msgspec.json.encode(DecisionRequest(approval_id=f"{run_id}.other", decision="approve", user="dave"))
        refused = await approver.decide(unknown)
        assert not refused.ok and refused.code == "unknown"
    finally:
        await approver.bus.close()
