"""Plans drafted from a goal (docs/planning.md): their events and the record KV ``fy_plans`` keeps.

A plan's id starts with ``p`` (a run's with ``r``) and stands in ``run_id`` of its events, so
its subjects sit beside the runs' (``fy.run.<plan>.plan.requested``, ``fy.run.<plan>.plan.<status>``),
its approval is an approval like a step's (node ``plan``) and the plan is one trace.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from .event import Event
from .plans import Usage, Wire

PlanStatus = Literal["drafting", "proposed", "approved", "rejected", "failed", "expired"]
PLAN_STATUSES: tuple[str, ...] = PlanStatus.__args__  # type: ignore[attr-defined]
PLAN_ID = re.compile(r"^p[0-9a-f]{11}[0-9a-f]{8}$")  # a run's id starts with r
PLAN_NODE = "plan"  # the node id of a plan's approval request: approval id ``<plan>.plan``
PlanOutcome = Literal["proposed", "approved", "rejected", "failed", "fallback", "expired"]


class PlanRequested(Event, tag="plan.requested", kw_only=True):
    """Draft a workflow for ``goal`` (``run_id`` is the plan's id)."""

    goal: str
    inputs: dict[str, Any] = {}
    context: Any = None  # anything the requester adds for the model (an alert, a ticket)
    workflow_name: str | None = None  # register the approved workflow under this name
    run: bool = False  # start a run once it is approved
    requested_by: str = ""
    requested_at: str = ""
    trigger: dict[str, Any] = {}  # a trigger's event, when a trigger asked for the plan
    source: str = ""  # api, cli, or the trigger's workflow
    template: str | None = None  # a trigger's plan: its own workflow, the first fallback


class PlanUpdated(Event, tag="plan.updated", kw_only=True):
    """A plan reached ``status``; on ``fy.run.<plan>.plan.<status>`` (notifications route these)."""

    status: PlanStatus
    goal: str
    workflow: str = ""  # the proposed workflow's name
    fallback: str | None = None  # the template proposed instead of a drafted workflow
    model: str = ""
    requested_by: str = ""
    decided_by: list[str] = []
    reason: str = ""  # why it failed or was rejected
    workflow_version: int | None = None  # once approved: the registry version
    started_run: str | None = None  # once approved with run: the run's id
    labels: dict[str, str] = {}


class PlanRound(Wire, kw_only=True):
    """One answer from the model and what the validator said of it."""

    errors: list[str] = []  # the validator's messages; empty: the answer was a valid plan
    error: str | None = None  # the call itself failed (provider down, over budget), in words
    usage: Usage | None = None
    seconds: float = 0.0


class PlanRecord(Wire, kw_only=True):
    id: str
    goal: str
    status: PlanStatus = "drafting"
    inputs: dict[str, Any] = {}
    context: Any = None
    workflow_name: str | None = None
    run: bool = False
    workflow_yaml: str = ""  # the proposed workflow as YAML text
    workflow: dict[str, Any] | None = None  # the same, parsed
    explanation: str = ""  # the model's own words about the plan
    rounds: list[PlanRound] = []
    model: str = ""
    provider: str = ""
    usage: Usage = Usage()
    fallback: str | None = None
    error: str | None = None  # why the plan failed, in words
    requested_by: str = ""
    created_at: str = ""
    updated_at: str = ""
    decided_by: list[str] = []
    decided_at: str | None = None
    comment: str = ""
    reason: str = ""  # the rejection's reason
    approval_id: str = ""
    workflow_version: int | None = None
    run_id: str | None = None
    trigger: dict[str, Any] = {}
    source: str = ""
    template_version: int | None = None  # a fallback: the template's version that was proposed

    @property
    def proposed_name(self) -> str:
        """The proposed workflow's name ("" before there is one)."""
        meta = (self.workflow or {}).get("metadata")
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""


_decode_plan = msgspec.json.Decoder(PlanRecord).decode


def decode_plan(data: bytes) -> PlanRecord:
    return _decode_plan(data)
