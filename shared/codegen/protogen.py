"""Generate ``proto/``: JSON Schemas of every event, an AsyncAPI document of the bus, and the
gateway's OpenAPI document.

python -m shared.codegen.protogen          # write proto/
python -m shared.codegen.protogen --check  # exit 1 when proto/ is stale (a test runs this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.api.openapi import document
from shared.contract import permissions as natsperms
from shared.contract import subjects
from shared.contract.catalog import CONSUMERS
from shared.contract.drafts import PlanRecord, PlanRequested, PlanUpdated
from shared.contract.messages import (
    EVENT_TYPES,
    ApprovalDecided,
    ApprovalRecord,
    ApprovalRequested,
    NodeFailed,
    NotificationFailed,
    RunAbandoned,
    RunCancelRequested,
    RunFinished,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunRequested,
    RunStarted,
    TaskBatch,
    TaskDispatched,
    TaskFailed,
    TaskResults,
    TaskStarted,
    TaskSucceeded,
    TimerDue,
)
from shared.state.audit import AuditEntry
from shared.state.registry import WorkflowSummary, WorkflowVersion
from shared.workflow.schema import workflow_schema

PROTO = Path(__file__).resolve().parents[2] / "proto"
RUN, NODE, POOL, SERVICE, STATUS = "{run_id}", "{unit}", "{pool}", "{service}", "{status}"
NODE_ID, OUTCOME, APPROVAL = "{node_id}", "{outcome}", "{approval_id}"

# channel address -> (message type, who publishes, who consumes, description)
CHANNELS: list[tuple[str, type, str, str, str]] = [
    (subjects.run_requested(RUN), RunRequested, "cli, gateway", "planner", "A run is asked for."),
    (subjects.run_planned(RUN), RunPlanned, "planner", "scheduler", "The workflow is valid; the frozen plan."),
    (subjects.run_rejected(RUN), RunRejected, "planner", "scheduler, cli", "The workflow or inputs are invalid."),
    (
        subjects.run_cancel(RUN),
        RunCancelRequested,
        "cli, gateway",
        "scheduler",
        "Stop a run: running nodes are stopped, pending ones cancelled.",
    ),
    (
        subjects.run_abandoned(RUN),
        RunAbandoned,
        "any service (on a dead letter)",
        "scheduler",
        "A service gave up on a message of the run; the scheduler ends the run as failed, saying why.",
    ),
    (subjects.run_started(RUN), RunStarted, "scheduler", "cli, notifier", "The run's record exists; nodes start."),
    (
        subjects.run_finished(RUN, STATUS),
        RunFinished,
        "scheduler",
        "cli, notifier",
        "The run ended; status is succeeded, failed or cancelled.",
    ),
    (
        subjects.dispatch(POOL),
        TaskDispatched,
        "scheduler",
        "executor",
        "One attempt of one node, for the executors of a pool (work queue).",
    ),
    (
        subjects.dispatch(POOL),
        TaskBatch,
        "scheduler",
        "executor",
        "The first attempts of a group of a foreach node's items, in one message (work queue).",
    ),
    (
        subjects.timer(RUN),
        TimerDue,
        "scheduler",
        "scheduler",
        "A durable timer (retry back-off, run deadline, admission), handed back by JetStream until due.",
    ),
    (
        subjects.approval_requested(RUN, NODE_ID),
        ApprovalRequested,
        "scheduler",
        "approver, notifier, cli",
        "A node waits for approval; the request holds what a person needs to decide.",
    ),
    (
        subjects.approval_decided(RUN, NODE_ID, OUTCOME),
        ApprovalDecided,
        "approver",
        "scheduler, notifier",
        "The decision: granted, rejected or expired, with who decided and why.",
    ),
    (
        subjects.node_failed(RUN, NODE_ID),
        NodeFailed,
        "scheduler",
        "notifier",
        "A node ended failed, after its retries.",
    ),
    (
        subjects.notification_failed(RUN),
        NotificationFailed,
        "notifier",
        "operators",
        "A notification could not be delivered after its retries.",
    ),
    (
        subjects.plan_requested(RUN),
        PlanRequested,
        "cli, gateway, planner (a trigger's plan)",
        "planner",
        "Draft a workflow for a goal; the plan's id stands in run_id (docs/planning.md).",
    ),
    (
        subjects.plan_updated(RUN, STATUS),
        PlanUpdated,
        "planner",
        "notifier, cli",
        "A plan was proposed, approved, rejected, failed or expired; its approval is node `plan` of the plan's id.",
    ),
    (subjects.task_event(RUN, NODE, "started"), TaskStarted, "executor", "cli", "An attempt began."),
    (subjects.task_event(RUN, NODE, "succeeded"), TaskSucceeded, "executor", "scheduler", "An attempt succeeded."),
    (subjects.task_event(RUN, NODE, "failed"), TaskFailed, "executor", "scheduler", "An attempt failed."),
    (
        subjects.task_results(RUN),
        TaskResults,
        "executor",
        "scheduler, cli",
        "Events of a run's attempts that were ready together, in order; each is applied as if it came alone.",
    ),
]

STREAMS = {
    subjects.RUNS_STREAM: {
        "subjects": [subjects.RUNS_SUBJECTS],
        "retention": "limits",
        "description": "Run and task events: the audit log",
    },
    subjects.TASKS_STREAM: {
        "subjects": [subjects.TASKS_SUBJECTS],
        "retention": "workqueue",
        "description": "Task dispatches, one work queue per pool",
    },
    subjects.TIMERS_STREAM: {
        "subjects": [subjects.TIMERS_SUBJECTS],
        "retention": "workqueue",
        "description": "Durable timers, nak'ed with a delay until due",
    },
    subjects.DLQ_STREAM: {
        "subjects": [subjects.DLQ_SUBJECTS],
        "retention": "limits",
        "description": "Dead letters, with fy-dlq-reason headers",
    },
    subjects.LOGS_STREAM: {
        "subjects": [subjects.LOGS_SUBJECTS],
        "retention": "limits",
        "description": "Agents' stderr while they run (TaskLog), for `flowyard logs` and the gateway",
    },
    subjects.ACTIVE_STREAM: {
        "subjects": [subjects.ACTIVE_SUBJECTS, subjects.ENDED_SUBJECTS],
        "retention": "limits, one message per subject; fy.active.* purged by subject when the run ends or the"
        " approval is decided, fy.ended.* kept as long as the run's record",
        "description": "fy.active.run.<workflow>.<started-at>.<run> and"
        " fy.active.approval.<workflow>.<expires-at>.<approval>: counted for flowyard_runs_active and"
        " flowyard_approvals_pending; fy.ended.run.<status>.<workflow>.<run>: the runs each status lists read",
    },
    subjects.AUDIT_STREAM: {
        "subjects": [subjects.AUDIT_SUBJECTS],
        "retention": "limits",
        "description": "Who did what through the gateway and the CLI (AuditEntry); never secrets or tokens",
    },
}
BUCKETS = {
    subjects.RUNS_BUCKET: {"key": "run id", "value": "RunRecord", "writer": "scheduler (compare-and-set)"},
    subjects.ITEMS_BUCKET: {
        "key": "RUN.NODE.INDEX",
        "value": "NodeRecord (an ended foreach item, written once)",
        "writer": "scheduler (create)",
    },
    subjects.CONCURRENCY_BUCKET: {
        "key": "WORKFLOW (the admitted runs) and WORKFLOW.q.RUN (one per queued run, in stream order)",
        "value": "the admitted run ids; a queued run's key is empty",
        "writer": "scheduler (compare-and-set)",
    },
    subjects.APPROVALS_BUCKET: {
        "key": "approval id",
        "value": "ApprovalRecord",
        "writer": "approver (compare-and-set)",
    },
    subjects.NOTIFY_BUCKET: {"key": "sink and event digest", "value": "delivered | failed", "writer": "notifier"},
    subjects.AGENTS_BUCKET: {
        "key": "agent name",
        "value": "Agent document (apiVersion flowyard/v1)",
        "writer": "cli, gateway",
    },
    subjects.WORKFLOWS_BUCKET: {
        "key": "NAME (the head) and NAME.N (version N)",
        "value": "WorkflowSummary (head), WorkflowVersion (each version)",
        "writer": "cli, gateway (create for versions, compare-and-set for heads)",
    },
    subjects.IDEMPOTENCY_BUCKET: {
        "key": "sha256 of user and Idempotency-Key",
        "value": "the run it started (kept 24 h)",
        "writer": "gateway (create)",
    },
    subjects.LIMITS_BUCKET: {
        "key": "AGENT.m|h|t.WINDOW and AGENT.cool (agents' limits); _gateway.SHA256 (a caller of the API)",
        "value": "a count, a cool-down's end, or an API caller's token bucket 'TOKENS AT' (kept 2 h)",
        "writer": "executor (agents), gateway (the API's rate limits), both compare-and-set",
    },
}
HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "unique id of this message",
    "ce-source": "flowyard/<service>",
    "ce-type": "io.flowyard.<type>.v1",
    "ce-time": "RFC 3339 time of publishing",
    "ce-subject": "the run id",
    "content-type": "application/json",
    "Nats-Msg-Id": "de-duplication id (run:node:attempt based)",
    "traceparent": "W3C trace context",
    "tracestate": "W3C trace context (optional)",
}


PARAMETERS = {
    "run_id": "the run id",
    "unit": "the node id, or node#index for an item of a foreach node",
    "pool": "the executor pool",
    "status": "succeeded, failed or cancelled",
    "service": "the service that gave up on the message",
    "node_id": "the node id",
    "outcome": "granted, rejected or expired",
}


def _schema_name(t: type) -> str:
    return t.__name__


def render() -> dict[str, str]:
    """Every file under proto/, by relative path, as text."""
    files: dict[str, str] = {}
    for t in (*EVENT_TYPES, RunRecord, ApprovalRecord, AuditEntry, WorkflowSummary, WorkflowVersion, PlanRecord):
        schema = msgspec.json.schema(t)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://flowyard.dev/proto/schemas/{_schema_name(t)}.json",
            **schema,
        }
        files[f"schemas/{_schema_name(t)}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    # The format people and the planner's model write (the same schema the planner sends).
    files["schemas/Workflow.json"] = (
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": "https://flowyard.dev/proto/schemas/Workflow.json",
                **workflow_schema(),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    files["asyncapi.yaml"] = yaml.safe_dump(_asyncapi(), sort_keys=False, width=100)
    files["openapi.json"] = json.dumps(document(), indent=2, sort_keys=True) + "\n"
    files["nats-permissions.json"] = json.dumps(natsperms.table(), indent=2, sort_keys=True) + "\n"
    return files


def _asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for address, typ, producers, consumers, description in CHANNELS:
        tag = typ.__struct_config__.tag
        key = address.replace(".", "_").replace("{", "").replace("}", "")
        params = {
            p.strip("{}"): {"description": PARAMETERS[p.strip("{}")]} for p in address.split(".") if p.startswith("{")
        }
        if key in channels:  # a second message on one subject (a dispatch and a batch of them)
            channels[key]["messages"][tag] = {"$ref": f"#/components/messages/{typ.__name__}"}
            channels[key]["description"] += f" Or: {description}"
        channels.setdefault(
            key,
            {
                "address": address,
                "description": description,
                "messages": {tag: {"$ref": f"#/components/messages/{typ.__name__}"}},
                **({"parameters": params} if params else {}),
            },
        )
        operations.setdefault(
            f"send_{key}",
            {
                "action": "send",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"published by {producers}; consumed by {consumers}",
            },
        )
        messages[typ.__name__] = {
            "name": tag,
            "contentType": "application/json",
            "payload": {"$ref": f"schemas/{typ.__name__}.json"},
            "headers": {
                "type": "object",
                "properties": {h: {"type": "string", "description": d} for h, d in HEADERS.items()},
            },
        }
    channels["fy_dlq_service"] = {
        "address": subjects.dead_letter(SERVICE),
        "description": "A terminated message, unchanged, with fy-dlq-reason, fy-dlq-subject, fy-dlq-consumer, "
        "fy-dlq-stream-seq and fy-dlq-deliveries headers.",
        "parameters": {"service": {"description": "the service that gave up on it"}},
    }
    channels["fy_decide_approval"] = {
        "address": subjects.DECIDE,
        "description": "Request/reply (core NATS, in no stream): a DecisionRequest JSON body "
        "{approval_id, decision: approve|reject, user, comment, reason}; the reply is "
        "{ok, status, message, code, approval}.",
    }
    channels["fy_audit_action"] = {
        "address": subjects.audit("{action}"),
        "description": "An AuditEntry (schemas/AuditEntry.json): who did what through the gateway or the CLI.",
        "parameters": {"action": {"description": "apply, delete, start, cancel, retry, approve or reject"}},
    }
    channels["fy_log_run_unit"] = {
        "address": subjects.task_log(RUN, NODE),
        "description": "A TaskLog event: lines an agent wrote to stderr, in FY_LOGS.",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "flowyard bus",
            "version": "1",
            "description": "Generated by `python -m shared.codegen.protogen` from shared/. Do not edit.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
        "x-jetstream": {"streams": STREAMS, "consumers": CONSUMERS, "kv": BUCKETS},
    }


def stale(root: Path = PROTO) -> list[str]:
    wanted = render()
    problems = []
    for rel, text in wanted.items():
        path = root / rel
        if not path.exists() or path.read_text() != text:
            problems.append(rel)
    existing = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()
    problems.extend(sorted(existing - set(wanted) - {"README.md"}))
    return problems


def write(root: Path = PROTO) -> None:
    for rel, text in render().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        out = stale()
        if out:
            print("proto/ is out of date with shared/: " + ", ".join(out), file=sys.stderr)
            print("regenerate it with: python -m shared.codegen.protogen", file=sys.stderr)
            return 1
        print("proto/ is up to date")
        return 0
    write()
    print(f"wrote {PROTO}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
