"""What a run's model calls have cost, and whether its budget lets the next LLM or CLI step start.

Pure, like the engine that calls it: usage arrives on task results (the agents report it), is
summed onto the node and the run, and ``spec.budget`` is checked before a step that calls a
model is dispatched — never in the middle of one.
"""

from __future__ import annotations

from msgspec.structs import replace

from shared.contract.messages import NodeRecord, PlannedNode, RunRecord, TaskFailed, TaskSucceeded, Usage


def spent(record: RunRecord, slot: NodeRecord, event: TaskSucceeded | TaskFailed) -> tuple[RunRecord, NodeRecord]:
    """The run and the slot with the result's agent, routing and usage added."""
    changes: dict[str, object] = {}
    if event.agent is not None:
        changes["agent"] = event.agent
    if event.routing:
        changes["routing"] = list(event.routing)
    if event.usage is not None:
        changes["usage"] = (slot.usage or Usage()) + event.usage
        record = replace(record, usage=record.usage + event.usage)
    return record, (replace(slot, **changes) if changes else slot)


def _money(value: float) -> str:
    return f"${value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"${value:.2f}"


def over_budget(record: RunRecord, planned: PlannedNode) -> str | None:
    """Why ``planned`` may not start: the run has spent its budget; None when it may."""
    budget = record.plan.budget if record.plan else None
    if budget is None or not planned.uses_llm:
        return None
    usage = record.usage
    if budget.tokens is not None and usage.tokens >= budget.tokens:
        return (
            f"not started: the run has spent its token budget (spec.budget.tokens {budget.tokens:,}; spent "
            f"{usage.tokens:,}: {usage.input_tokens:,} in, {usage.output_tokens:,} out); raise the budget "
            "or run it again with `flowyard runs retry`"
        )
    if budget.usd is not None and (usage.cost_usd or 0.0) >= budget.usd:
        return (
            f"not started: the run has spent its budget (spec.budget.usd {_money(budget.usd)}; spent "
            f"{_money(usage.cost_usd or 0.0)}); raise the budget or run it again with `flowyard runs retry`"
        )
    return None


def node_usage(items: list[NodeRecord]) -> Usage | None:
    """A fan-out's usage: its items' together."""
    used = [it.usage for it in items if it.usage is not None]
    if not used:
        return None
    total = Usage()
    for u in used:
        total = total + u
    return total
