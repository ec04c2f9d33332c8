"""What a person sees: progress lines while a run goes, and the run at the end."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from shared.contract.messages import (
    AnyEvent,
    ApprovalDecided,
    ApprovalRequested,
    RunFinished,
    RunPlanned,
    RunRecord,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Usage,
)
from shared.telemetry.tracing import run_trace_id, trace_link

_MARK = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘", "running": "▶", "pending": "·"}


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


class Progress:
    def __init__(self, out: TextIO = sys.stdout, *, nats_url: str | None = None) -> None:
        self.out = out
        self.nats_url = nats_url  # the embedded stack's, for deciding from another terminal
        self.width = 12
        self.reported: set[str] = set()
        self.fanning: set[str] = set()

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def __call__(self, event: AnyEvent) -> None:
        match event:
            case RunPlanned():
                self.width = max([len(n.id) for n in event.plan.nodes] + [4])
                self.line(f"run {event.run_id}: workflow {event.workflow!r}, {len(event.plan.nodes)} nodes")
            case TaskStarted() if event.item is not None and event.node_id not in self.fanning:
                self.fanning.add(event.node_id)
                self.line(f"  ▶ {event.node_id:<{self.width}} started (one attempt per foreach item)")
            case TaskStarted() if event.item is None:
                again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                self.line(f"  ▶ {event.node_id:<{self.width}} started{again}")
            case TaskSucceeded() if event.item is None:
                self.reported.add(event.node_id)
                via = f" by {event.agent}" if event.agent else ""
                fell = [r.agent for r in event.routing if r.outcome != "chosen"]
                past = f" (passed over: {', '.join(fell)})" if fell else ""
                self.line(f"  ✓ {event.node_id:<{self.width}} succeeded{via} in {event.duration_s * 1000:.0f} ms{past}")
            case TaskFailed():
                unit = event.node_id if event.item is None else f"{event.node_id}[{event.item}]"
                self.line(f"  ✗ {unit:<{self.width}} attempt {event.attempt} failed: {event.error}")
            case ApprovalRequested():
                who = ", ".join(event.policy.approvers) or "anyone but the requester"
                self.line(f"  ⏸ {event.node_id:<{self.width}} waits for approval ({who}); decide with:")
                self.line(f"      flowyard approvals approve {event.approval_id} --as USER")
                self.line(f"      flowyard approvals reject {event.approval_id} --as USER --reason TEXT")
                if self.nats_url:
                    self.line(f"    (from another terminal, after: export FLOWYARD_NATS_URL={self.nats_url})")
            case ApprovalDecided():
                mark = "✓" if event.outcome == "granted" else "✗"
                self.line(f"  {mark} {event.node_id:<{self.width}} {event.summary}")
            case RunFinished():
                for nid, node in event.nodes.items():
                    if nid not in self.reported:
                        why = f": {node.error}" if node.error else ""
                        self.line(f"  {_MARK.get(node.status, '?')} {nid:<{self.width}} {node.status}{why}")
            case _:
                pass


def print_outcome(
    status: str, outputs: dict[str, Any], error: str | None, out: TextIO = sys.stdout, *, run_id: str = ""
) -> None:
    print(f"run {status}" + (f": {error}" if error else ""), file=out)
    if link := trace_link(run_trace_id(run_id)):
        print(f"trace: {link}", file=out)
    if outputs:
        print("outputs:", file=out)
        print_outputs(outputs, out)


def print_outputs(outputs: dict[str, Any], out: TextIO) -> None:
    for name, value in outputs.items():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            # A list of lines (a report): one a line, as people read it.
            print(f"  {name}:", file=out)
            for line in value:
                print(f"    {line}", file=out)
        else:
            print(f"  {name}: {value if isinstance(value, str) else _dump(value)}", file=out)


def usage_text(usage: Usage) -> str:
    cost = f", ${usage.cost_usd:.4f}" if usage.cost_usd is not None else ", cost unknown"
    return f"{usage.input_tokens:,} tokens in, {usage.output_tokens:,} out{cost}"


def print_record(record: RunRecord, out: TextIO = sys.stdout) -> None:
    print(f"run      {record.run_id}", file=out)
    print(f"workflow {record.workflow}", file=out)
    print(f"status   {record.status}", file=out)
    if record.plan_id:
        print(f"plan     {record.plan_id} (`flowyard plans show {record.plan_id}`)", file=out)
    print(
        f"created  {record.created_at}" + (f"   finished {record.finished_at}" if record.finished_at else ""), file=out
    )
    if record.error:
        print(f"error    {record.error}", file=out)
    print(f"trace    {trace_link(run_trace_id(record.run_id)) or run_trace_id(record.run_id)}", file=out)
    if record.usage.tokens or record.usage.cost_usd:
        print(f"usage    {usage_text(record.usage)}", file=out)
    planned = {p.id: p for p in record.plan.nodes} if record.plan else {}
    if record.nodes:
        width = max(len(n) for n in record.nodes)
        print("nodes:", file=out)
        for nid, node in record.nodes.items():
            took = f" in {node.duration_s * 1000:.0f} ms" if node.duration_s is not None else ""
            tries = f", {node.attempts} attempt{'s' if node.attempts != 1 else ''}" if node.attempts else ""
            print(f"  {_MARK.get(node.status, '?')} {nid:<{width}} {node.status}{took}{tries}", file=out)
            plan = planned.get(nid)
            if plan is not None and plan.capability:
                ran = f", ran {node.agent}" if node.agent else ""
                names = ", ".join(c.name for c in plan.candidates)
                print(f"      capability {plan.capability} ({names}){ran}", file=out)
            for step in node.routing:
                why = f": {step.reason}" if step.reason else ""
                print(f"      → {step.agent} {step.outcome}{why}", file=out)
            if node.usage is not None:
                print(f"      usage {usage_text(node.usage)}", file=out)
            for err in node.errors or ([node.error] if node.error else []):
                print(f"      {err}", file=out)
    if record.outputs:
        print("outputs:", file=out)
        print_outputs(record.outputs, out)


def print_table(records: list[RunRecord], out: TextIO = sys.stdout) -> None:
    if not records:
        print("no runs yet", file=out)
        return
    rows = [("RUN", "WORKFLOW", "STATUS", "NODES", "CREATED")]
    for r in records:
        done = sum(1 for n in r.nodes.values() if n.status == "succeeded")
        rows.append((r.run_id, r.workflow, r.status, f"{done}/{len(r.nodes)}", r.created_at))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
