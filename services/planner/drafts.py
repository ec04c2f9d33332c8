"""Plans from goals, in the planner: draft (model, validator, repair rounds, templates), propose
as an approval request, and on a person's decision register the workflow and start its run.

The record (KV ``fy_plans``) moves drafting -> proposed | failed -> approved | rejected | expired,
by compare-and-set. Every event a status sends is published after the record is stored, with a
de-dup id, and the message is acknowledged only then: a planner that dies on the way is
redelivered the request (or the decision) and sends what is missing — a plan is never proposed
twice, approved without a decision, or run twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import structlog
import yaml

from shared.bus.connection import Bus
from shared.bus.delivery import Delivery, is_outage
from shared.config.secrets import SecretSource
from shared.config.settings import Config, seconds
from shared.contract import subjects
from shared.contract.drafts import PLAN_NODE, PlanRecord, PlanRequested, PlanRound, PlanUpdated
from shared.contract.envelope import epoch, now_rfc3339
from shared.contract.errors import PermanentError, ValidationFailed
from shared.contract.messages import AnyEvent, ApprovalDecided, ApprovalPolicy, ApprovalRequested
from shared.llm import client
from shared.llm.agent import Spent, cost
from shared.llm.protocol import Answer, Request
from shared.state import plans, registry
from shared.telemetry import metrics
from shared.telemetry import tracing as telemetry
from shared.workflow.check import check_bundle
from shared.workflow.loader import load_bundle
from shared.workflow.model import AgentDoc
from shared.workflow.validate import check_inputs

from . import drafting, guard
from .approving import approve, run_request
from .catalogue import catalogue, goal_text
from .fallback import fallback
from .planning import runtime_problems

log = structlog.get_logger("flowyard.planner.plans")

AgentLoader = Callable[[Iterable[str] | None], Awaitable[dict[str, AgentDoc]]]


class Plans:
    def __init__(self, bus: Bus, config: Config, load_agents: AgentLoader, runtimes: Callable[[], Awaitable[set[str]]]):
        self.bus = bus
        self.config = config
        self.cfg = config.planner
        self.load_agents = load_agents
        self.runtimes = runtimes
        self.secrets = SecretSource(self.cfg.secrets_dir)

    async def handle(self, event: AnyEvent, delivery: Delivery) -> None:
        match event:
            case PlanRequested():
                if not plans.valid_plan_id(event.run_id):
                    raise PermanentError(f"plan id {event.run_id!r} is not a plan id (p, then 19 hex digits)")
                try:
                    await self.requested(event)
                except Exception as exc:
                    # Tried as often as the bus tries a message: end the plan in words rather than
                    # leave it drafting for ever behind a dead letter (NATS being away is waited out).
                    if is_outage(exc) or delivery.num_delivered < self.config.bus.max_deliver:
                        raise
                    await self.give_up(event, exc)
            case ApprovalDecided(kind="plan"):
                await self.decided(event)
            case ApprovalDecided():
                return  # a run's own node called `plan`: the scheduler's, not ours
            case _:
                raise PermanentError(f"the planner's plans consumer does not handle {type(event).__name__}")

    # --- drafting ----------------------------------------------------------------------------

    async def requested(self, req: PlanRequested) -> None:
        record = await plans.create(
            self.bus,
            PlanRecord(
                id=req.run_id,
                goal=req.goal,
                inputs=req.inputs,
                context=req.context,
                workflow_name=req.workflow_name,
                run=req.run,
                requested_by=req.requested_by,
                created_at=req.requested_at or now_rfc3339(),
                updated_at=now_rfc3339(),
                trigger=req.trigger,
                source=req.source,
            ),
        )
        if record.status == "drafting":
            record = await self._draft(req, record)
        await self.announce(record)

    async def _draft(self, req: PlanRequested, record: PlanRecord) -> PlanRecord:
        started = time.monotonic()
        agents = await self.load_agents(None)
        runtimes = await self.runtimes()
        rounds: list[PlanRound] = []

        async def saved(done: PlanRound, number: int) -> None:
            rounds.append(done)  # each round kept as it ends: `plans show` follows a long draft
            await plans.mutate(
                self.bus,
                record.id,
                lambda r: (
                    msgspec.structs.replace(r, rounds=list(rounds), updated_at=now_rfc3339())
                    if r.status == "drafting"
                    else None
                ),
            )

        with telemetry.span_in_run("draft plan", record.id, **{"flowyard.plan_id": record.id}) as span:
            drafted, stopped = await self._ask_model(req, agents, runtimes, saved)
            if drafted is not None and drafted.valid:
                result = msgspec.structs.replace(
                    record,
                    status="proposed",
                    workflow=yaml.safe_load(drafted.text),  # as checked: the requester's name applied
                    workflow_yaml=drafted.text,
                    explanation=drafted.explanation,
                    model=drafted.model,
                    provider=self.cfg.llm.provider if self.cfg.llm else "",
                )
            else:
                templates = [(t.workflow, t.match) for t in self.cfg.templates]
                result = await fallback(self.bus, req, record, stopped, drafted, agents, runtimes, templates)
            if drafted is not None:
                result = msgspec.structs.replace(
                    result, rounds=drafted.rounds, usage=drafted.usage, model=result.model or drafted.model
                )
            span.set_attribute("flowyard.plan.status", result.status)
            span.set_attribute("flowyard.plan.rounds", len(result.rounds))
        result = msgspec.structs.replace(result, updated_at=now_rfc3339())
        stored = await plans.mutate(self.bus, record.id, lambda r: result if r.status == "drafting" else None)
        assert stored is not None
        if stored is result:
            outcome = "fallback" if result.fallback else result.status
            metrics.PLANS.labels(outcome).inc()
            metrics.PLAN_SECONDS.labels(outcome).observe(time.monotonic() - started)
            if result.rounds:
                metrics.PLAN_ROUNDS.observe(len(result.rounds))
            log.info(
                "plan drafted",
                plan_id=record.id,
                status=result.status,
                rounds=len(result.rounds),
                fallback=result.fallback,
            )
        return stored

    async def _ask_model(
        self,
        req: PlanRequested,
        agents: dict[str, AgentDoc],
        runtimes: set[str],
        saved: Callable[[PlanRound, int], Awaitable[None]],
    ) -> tuple[drafting.Drafted | None, str | None]:
        """The model's draft, or (None, why no model was asked)."""
        llm = self.cfg.llm
        if llm is None:
            return None, "no model is configured for planning (planner.llm)"
        endpoint = await self._endpoint()
        if isinstance(endpoint, str):
            return None, endpoint
        model = llm.model or endpoint.config.default_model
        if not model:
            return None, f"planner.llm.model is not set and provider {llm.provider!r} has no default_model"
        prompt = goal_text(req.goal, req.inputs, req.context, catalogue(agents))
        deadline = time.monotonic() + seconds(llm.timeout)
        number = 0

        async def check(doc: Any) -> tuple[str, list[str]]:
            return await self.check(req, doc, agents, runtimes, where=f"plan {req.run_id} round {number}")

        async def ask(request: Request) -> Answer:
            nonlocal number
            number += 1
            with telemetry.span_in_run(
                f"plan round {number}",
                req.run_id,
                **{"gen_ai.provider.name": endpoint.config.kind, "gen_ai.request.model": model},
            ) as span:
                answer = await client.call(endpoint, request, deadline=deadline)
                span.set_attribute("gen_ai.usage.input_tokens", answer.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", answer.output_tokens)
            used = answer.model or model
            metrics.AGENT_TOKENS.labels("planner", used, "input").inc(answer.input_tokens)
            metrics.AGENT_TOKENS.labels("planner", used, "output").inc(answer.output_tokens)
            return answer

        def price(answer: Answer) -> float | None:
            spent = Spent()
            spent.add(answer)
            usd = cost(endpoint.config, answer.model or model, spent)
            if usd:
                metrics.AGENT_COST.labels("planner", answer.model or model).inc(usd)
            return usd

        drafted = await drafting.draft(
            prompt,
            model=model,
            ask=ask,
            check=check,
            max_rounds=llm.max_rounds,
            max_tokens=llm.max_tokens,
            budget_tokens=llm.budget_tokens,
            deadline=deadline,
            price=price,
            on_round=saved,
        )
        return drafted, drafted.stopped

    async def _endpoint(self) -> client.Endpoint | str:
        assert self.cfg.llm is not None
        chosen = self.config.llm.choose(self.cfg.llm.provider)
        if isinstance(chosen, str):
            return chosen
        name, provider = chosen
        key = None
        if provider.api_key_secret:
            found, missing = await self.secrets.resolve([provider.api_key_secret])
            if missing:
                where = self.secrets.where(provider.api_key_secret)
                return f"provider {name!r}: its key (secret {provider.api_key_secret!r}) is not in {where}"
            key = found[provider.api_key_secret]
        return client.Endpoint(name=name, config=provider, api_key=key)

    async def check(
        self, req: PlanRequested, doc: Any, agents: dict[str, AgentDoc], runtimes: set[str], *, where: str
    ) -> tuple[str, list[str]]:
        """As ``flowyard validate`` checks a file (registered agents known), and what a plan may not do."""
        problems = guard.refusals(doc, where=where)
        if problems:
            return "", problems
        if req.workflow_name:
            doc = {**doc, "metadata": {**(doc.get("metadata") or {}), "name": req.workflow_name}}
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
        priorities = self.config.agents.priorities
        try:
            # As `flowyard validate` checks a file, knowing every agent of the catalogue (so the
            # messages list the agents the model may use, not only the ones it named).
            bundle = await asyncio.to_thread(load_bundle, text, where)
            await asyncio.to_thread(check_bundle, bundle, agents, priorities)
        except ValidationFailed as exc:
            return text, guard.for_a_plan(exc.problems)
        wf = bundle.workflows[0]
        taken = False
        if not req.workflow_name:
            head = await registry.head(self.bus, wf.metadata.name)
            taken = head is not None and not head.deleted
        problems = guard.plan_problems(wf, agents, where=where, priorities=priorities, taken=taken)
        problems += runtime_problems(wf, agents, runtimes, where, priorities)
        try:
            check_inputs(wf, req.inputs, file=where)
        except ValidationFailed as exc:
            problems += exc.problems
        return text, problems

    async def give_up(self, req: PlanRequested, exc: Exception) -> None:
        why = (
            f"the planner could not draft this plan after {self.config.bus.max_deliver} tries "
            f"({type(exc).__name__}: {exc}); the planner's log has the details — ask again once it is mended"
        )
        log.error("plan given up", plan_id=req.run_id, error=repr(exc))
        found = await plans.mutate(
            self.bus,
            req.run_id,
            lambda r: (
                msgspec.structs.replace(r, status="failed", error=why, updated_at=now_rfc3339())
                if r.status == "drafting"
                else None
            ),
        )
        if found is None:
            raise exc  # not even stored: the dead letter keeps the request and says why
        if found.status == "failed" and found.error == why:
            metrics.PLANS.labels("failed").inc()
        await self.announce(found)

    # --- decisions -----------------------------------------------------------------------------

    async def decided(self, event: ApprovalDecided) -> None:
        record = await plans.get(self.bus, event.run_id)
        if record is None:
            log.warning("decision for an unknown plan", plan_id=event.run_id)
            return
        if record.status == "proposed":
            if event.outcome == "granted":
                record = await approve(self.bus, record, event, self.config.agents.priorities)
            else:
                status = "rejected" if event.outcome == "rejected" else "expired"
                reason = event.rejection.comment if event.rejection else "nobody decided before it expired"
                decided_by = [event.rejection.user] if event.rejection else []
                found = await plans.mutate(
                    self.bus,
                    record.id,
                    lambda r: (
                        msgspec.structs.replace(
                            r,
                            status=status,
                            reason=reason,
                            decided_by=decided_by,
                            decided_at=now_rfc3339(),
                            updated_at=now_rfc3339(),
                        )
                        if r.status == "proposed"
                        else None
                    ),
                )
                if found is not None and found.status == status and record.status == "proposed":
                    metrics.PLANS.labels(status).inc()
                record = found or record
        await self.announce(record)

    # --- what each status sends ------------------------------------------------------------------

    async def announce(self, record: PlanRecord) -> None:
        if record.status == "drafting":
            return
        if record.status == "proposed":
            await self.bus.publish(
                subjects.approval_requested(record.id, PLAN_NODE), self.approval(record), msg_id=f"{record.id}:approval"
            )
        if record.status == "approved" and record.run_id:
            await self.bus.publish(
                subjects.run_requested(record.run_id), run_request(record), msg_id=f"{record.id}:run"
            )
        event = PlanUpdated(
            run_id=record.id,
            status=record.status,
            goal=record.goal,
            workflow=record.proposed_name,
            fallback=record.fallback,
            model=record.model,
            requested_by=record.requested_by,
            decided_by=record.decided_by,
            reason=record.reason or (record.error or "" if record.status == "failed" else ""),
            workflow_version=record.workflow_version,
            started_run=record.run_id,
        )
        await self.bus.publish(
            subjects.plan_updated(record.id, record.status), event, msg_id=f"{record.id}:{record.status}"
        )

    def approval(self, record: PlanRecord) -> ApprovalRequested:
        rules = self.cfg.approval
        proposed = epoch(record.updated_at) or time.time()
        expires_in = seconds(rules.expires_in)
        made = f"the template {record.fallback!r} (the model gave no valid plan)" if record.fallback else record.model
        return ApprovalRequested(
            run_id=record.id,
            approval_id=f"{record.id}.{PLAN_NODE}",
            workflow=record.proposed_name,
            node_id=PLAN_NODE,
            agent="planner",
            risk="approval_required",
            reason=f"plan for {record.goal!r}, drafted by {made}",
            inputs={"goal": record.goal, "workflow": record.workflow_yaml, "explanation": record.explanation},
            inputs_hash=hashlib.sha256(record.workflow_yaml.encode()).hexdigest(),
            policy=ApprovalPolicy(
                approvers=list(rules.approvers),
                min_approvals=rules.min_approvals,
                expires_in_s=expires_in,
                on_expiry="reject",  # a plan nobody approved never runs
                allow_self_approval=rules.allow_self_approval,
                reason="a drafted plan runs only once a person approves it",
            ),
            expires_at=proposed + expires_in,
            requested_by=record.requested_by,
            requested_at=record.updated_at,
            kind="plan",
        )
