"""Which events people hear about, and the words they get: pure functions, no I/O."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import msgspec

from shared.config.settings import NotifierConfig
from shared.contract.messages import (
    AnyEvent,
    ApprovalDecided,
    ApprovalRequested,
    NodeFailed,
    PlanUpdated,
    RunFinished,
)
from shared.state.triggering import TriggerOutcome
from shared.telemetry.tracing import run_trace_id


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    type: str  # run.succeeded, node.failed, approval.requested ...
    run_id: str
    workflow: str
    status: str
    summary: str
    details: dict[str, Any]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def payload(self, event_id: str) -> dict[str, Any]:
        """The webhook body: at least type, run_id, workflow, status and summary."""
        return {
            "type": self.type,
            "id": event_id,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "summary": self.summary,
            "labels": self.labels,
            **self.details,
        }


def notice(event: AnyEvent, *, trace_url: str = "") -> Notice | None:
    """The notice for an event, with the run's trace id (and a link, when ``telemetry.trace_url`` is set)."""
    n = _notice(event)
    if n is None:
        return None
    trace_id = run_trace_id(n.run_id)
    link = trace_url.replace("{trace_id}", trace_id) if trace_url and trace_id else None
    details = {**n.details, "trace_id": trace_id}
    summary = n.summary
    if link:
        details["trace_url"] = link
        summary = f"{summary} Trace: {link}"
    return dataclasses.replace(n, labels=dict(getattr(event, "labels", {})), details=details, summary=summary)


def _notice(event: AnyEvent) -> Notice | None:
    match event:
        case RunFinished():
            failed = [nid for nid, n in event.nodes.items() if n.status in ("failed", "rejected")]
            text = f"Run {event.run_id} of workflow {event.workflow} {event.status}"
            text += f": {event.error}" if event.error else "."
            return Notice(
                f"run.{event.status}",
                event.run_id,
                event.workflow,
                event.status,
                text,
                {"error": event.error, "failed_nodes": failed, "outputs": event.outputs},
            )
        case NodeFailed():
            tries = f"after {event.attempts} attempt{'s' if event.attempts != 1 else ''}" if event.attempts else ""
            text = (
                f"Node {event.node_id} of workflow {event.workflow} (run {event.run_id}) failed {tries}: {event.error}"
            )
            return Notice(
                "node.failed",
                event.run_id,
                event.workflow,
                "failed",
                " ".join(text.split()),
                {"node": event.node_id, "error": event.error, "attempts": event.attempts},
            )
        case ApprovalRequested(kind="plan"):
            who = ", ".join(event.policy.approvers) or "anyone but the requester"
            text = (
                f"Plan {event.run_id} (workflow {event.workflow}, asked for by {event.requested_by or 'unknown'}) "
                f"needs approval before anything runs: {event.reason}. Approvers: {who}. "
                f"Review with: flowyard plans show {event.run_id}; approve with: "
                f"flowyard plans approve {event.run_id} --as USER"
            )
            return Notice(
                "approval.requested",
                event.run_id,
                event.workflow,
                "pending",
                text,
                {
                    "plan_id": event.run_id,
                    "approval_id": event.approval_id,
                    "approvers": event.policy.approvers,
                    "approve_command": f"flowyard plans approve {event.run_id} --as USER",
                    "reject_command": f"flowyard plans reject {event.run_id} --as USER --reason TEXT",
                },
            )
        case PlanUpdated():
            return _plan_notice(event)
        case ApprovalRequested():
            who = ", ".join(event.policy.approvers) or "anyone but the requester"
            text = (
                f"Step {event.node_id} of workflow {event.workflow} (run {event.run_id}, started by "
                f"{event.requested_by or 'unknown'}) needs approval: {event.reason}. Approvers: {who}. "
                f"Approve with: flowyard approvals approve {event.approval_id} --as USER"
            )
            return Notice(
                "approval.requested",
                event.run_id,
                event.workflow,
                "pending",
                text,
                {
                    "node": event.node_id,
                    "approval_id": event.approval_id,
                    "approvers": event.policy.approvers,
                    "approve_command": f"flowyard approvals approve {event.approval_id} --as USER",
                    "reject_command": f"flowyard approvals reject {event.approval_id} --as USER --reason TEXT",
                },
            )
        case ApprovalDecided():
            if event.kind == "plan":
                text = f"Plan {event.run_id} (workflow {event.workflow}): {event.summary}"
            else:
                text = f"Step {event.node_id} of workflow {event.workflow} (run {event.run_id}): {event.summary}"
            return Notice(
                f"approval.{event.outcome}",
                event.run_id,
                event.workflow,
                event.outcome,
                text,
                {
                    "node": event.node_id,
                    "approval_id": event.approval_id,
                    "approvals": [msgspec.to_builtins(d) for d in event.approvals],
                    "rejection": msgspec.to_builtins(event.rejection) if event.rejection else None,
                },
            )
    return None


def _plan_notice(event: PlanUpdated) -> Notice:
    what = f"Plan {event.run_id} for {event.goal!r}"
    if event.status == "proposed":
        made = f"the template {event.fallback}" if event.fallback else f"model {event.model}"
        text = (
            f"{what}: workflow {event.workflow} proposed by {made}; it runs only once approved. "
            f"Review with: flowyard plans show {event.run_id}"
        )
    elif event.status == "approved":
        text = f"{what}: approved by {', '.join(event.decided_by) or 'its approvers'}"
        text += f"; registered as {event.workflow} version {event.workflow_version}" if event.workflow_version else ""
        text += f"; run {event.started_run} started." if event.started_run else "."
    else:
        text = f"{what} {event.status}" + (f": {event.reason}" if event.reason else ".")
    return Notice(
        f"plan.{event.status}",
        event.run_id,
        event.workflow,
        event.status,
        text,
        {
            "plan_id": event.run_id,
            "goal": event.goal,
            "fallback": event.fallback,
            "model": event.model,
            "requested_by": event.requested_by,
            "decided_by": event.decided_by,
            "workflow_version": event.workflow_version,
            "started_run": event.started_run,
        },
    )


def trigger_notice(event: TriggerOutcome) -> tuple[Notice, str] | None:
    """A storm (once per max_runs window) or a refused event; and the id that makes it one notice."""
    where = f"workflow {event.workflow} trigger #{event.trigger + 1} ({event.kind})"
    if event.outcome == "suppressed":
        text = (
            f"Trigger storm: {where} reached its max_runs ({event.reason.removeprefix('over max_runs ')}); "
            "further events are counted but not run until the window ends. `flowyard triggers list` shows how many."
        )
        event_id = f"storm:{event.workflow}#{event.trigger}:{event.window_start}"
    elif event.outcome == "refused":
        text = f"Trigger event refused: {where}: {event.reason}"
        event_id = f"refused:{event.workflow}#{event.trigger}:{event.key}"
    else:
        return None
    details = {"trigger": event.trigger, "kind": event.kind, "reason": event.reason, "key": event.key}
    return Notice(
        f"trigger.{event.outcome}", event.run_id or "", event.workflow, event.outcome, text, details
    ), event_id


def sinks_for(config: NotifierConfig, n: Notice) -> list[str]:
    """The sinks the rules send this notice to, each once, in rule order."""
    out: list[str] = []
    for rule in config.rules:
        labelled = all(n.labels.get(k) == v for k, v in rule.labels.items())
        if n.type in rule.on and labelled and any(fnmatch.fnmatchcase(n.workflow, g) for g in rule.workflows):
            out.extend(s for s in rule.sinks if s not in out)
    return out


def slack_text(n: Notice) -> str:
    icon = {
        "succeeded": ":white_check_mark:",
        "failed": ":x:",
        "cancelled": ":no_entry_sign:",
        "pending": ":raised_hand:",
        "granted": ":white_check_mark:",
        "rejected": ":x:",
        "expired": ":hourglass:",
    }
    lines = [f"{icon.get(n.status, ':information_source:')} *{n.workflow}* — {n.type} (run `{n.run_id}`)", n.summary]
    if n.details.get("failed_nodes"):
        lines.append("Failed: " + ", ".join(n.details["failed_nodes"]))
    if n.details.get("approve_command"):
        lines.append(f"`{n.details['approve_command']}`")
    return "\n".join(lines)
