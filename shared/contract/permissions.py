"""Least-privilege NATS users: what each service (and the CLI) may publish and subscribe to.

Built from the subject catalogue (``shared.contract.subjects``) and the consumer table
(``shared.contract.catalog.CONSUMERS``), so the permissions cannot drift from what the services do;
``proto/nats-permissions.json`` is generated from here and covered by the staleness test.
Each user gets: the event subjects it publishes; the core subjects it listens on; the JetStream
API subjects for its own durable consumers (create, info, next, ack), for the KV buckets and
object stores it reads or writes, and for the streams it reads; its own inbox
(``_INBOX_<user>.>``). Nothing else: a service that tries what another owns is refused by the
server (a permissions violation). ``admin`` (the bootstrap step) may do anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.contract import subjects as s
from shared.contract.catalog import CONSUMERS

# What every connection checks is there before it starts (Bus.topology_present, /readyz).
TOPOLOGY = (s.RUNS_STREAM, s.TASKS_STREAM, s.TIMERS_STREAM, s.DLQ_STREAM)
# The services, each its own package under services/ and its own NATS user; then the two others.
SERVICES = ("planner", "scheduler", "executor", "approver", "notifier", "gateway")
USERS = (*SERVICES, "cli", "admin")
ANY_RUN = "*"  # a run id, node id or unit: one token


def inbox(user: str) -> str:
    """The inbox prefix a user's replies come to (nats-py ``inbox_prefix``)."""
    return f"_INBOX_{user}"


@dataclass
class Grants:
    publish: set[str] = field(default_factory=set)
    subscribe: set[str] = field(default_factory=set)
    responses: bool = False  # answers requests (the approver's decisions)
    own: set[tuple[str, str]] = field(default_factory=set)  # (stream, durable) consumers it owns

    def event(self, *subjects_: str) -> Grants:
        self.publish.update(subjects_)
        return self

    def consumer(self, stream: str, durable: str) -> Grants:
        self.own.add((stream, durable))
        api = "$JS.API.CONSUMER"
        self.publish.update(
            {
                f"{api}.CREATE.{stream}.{durable}",
                f"{api}.CREATE.{stream}.{durable}.>",
                f"{api}.DURABLE.CREATE.{stream}.{durable}",
                f"{api}.INFO.{stream}.{durable}",
                f"{api}.MSG.NEXT.{stream}.{durable}",
                f"$JS.ACK.{stream}.{durable}.>",
            }
        )
        return self.stream_info(stream)

    def stream_info(self, *streams: str) -> Grants:
        self.publish.update(f"$JS.API.STREAM.INFO.{st}" for st in streams)
        return self

    def read_stream(self, stream: str) -> Grants:
        """Read a stream's messages: by sequence or last-by-subject, and with ordered consumers."""
        api = "$JS.API"
        self.publish.update(
            {
                f"{api}.DIRECT.GET.{stream}",
                f"{api}.DIRECT.GET.{stream}.>",
                f"{api}.STREAM.MSG.GET.{stream}",
                f"{api}.CONSUMER.CREATE.{stream}",
                f"{api}.CONSUMER.CREATE.{stream}.>",
                f"{api}.CONSUMER.INFO.{stream}.>",
                f"{api}.CONSUMER.DELETE.{stream}.>",
                f"$JS.FC.{stream}.>",
            }
        )
        return self.stream_info(stream)

    def kv(self, bucket: str, *, write: bool = False) -> Grants:
        self.read_stream(f"KV_{bucket}")
        if write:
            self.publish.add(f"$KV.{bucket}.>")
        return self

    def objects(self, bucket: str, *, write: bool = False) -> Grants:
        # nats-py finds the stream of an object's chunks by name lookup (the names only).
        self.read_stream(f"OBJ_{bucket}").publish.add("$JS.API.STREAM.NAMES")
        if write:
            self.publish.update({f"$O.{bucket}.>", f"$JS.API.STREAM.PURGE.OBJ_{bucket}"})
        return self

    def active_index(self, *prefixes: str) -> Grants:
        """FY_ACTIVE: mark (publish), clear (purge by subject), count (stream info)."""
        self.publish.update({*prefixes, f"$JS.API.STREAM.PURGE.{s.ACTIVE_STREAM}"})
        return self.stream_info(s.ACTIVE_STREAM)

    def rendered(self, user: str, durables: set[tuple[str, str]]) -> dict[str, Any]:
        # Reading a stream with ordered consumers needs CONSUMER.CREATE/DELETE on it, which would
        # also reach the services' durable consumers: those not its own are denied by name.
        deny: set[str] = set()
        if ">" not in self.publish:
            for stream, durable in durables - self.own:
                api = f"$JS.API.CONSUMER.%s.{stream}.{durable}"
                deny.update(api % op for op in ("CREATE", "DELETE", "INFO", "MSG.NEXT", "DURABLE.CREATE"))
                deny.update({f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>", f"$JS.ACK.{stream}.{durable}.>"})
        out: dict[str, Any] = {
            "publish": {"allow": sorted(self.publish), **({"deny": sorted(deny)} if deny else {})},
            "subscribe": {"allow": sorted({*self.subscribe, f"{inbox(user)}.>"})},
        }
        if self.responses:
            out["allow_responses"] = True
        return out


def _service(name: str) -> Grants:
    """What every service does: give up on a message (dead letter, abandon its run), count the
    deliveries of redelivered messages (the poison ceiling), and read account limits."""
    g = Grants().event(f"fy.dlq.{name}", s.run_abandoned(ANY_RUN), "$JS.API.INFO")
    g.kv(s.INFLIGHT_BUCKET, write=True)
    return g.stream_info(*TOPOLOGY)


def durables(pools: tuple[str, ...]) -> set[tuple[str, str]]:
    """Every durable consumer of the services: (stream, name)."""
    out = set()
    for durable, spec in CONSUMERS.items():
        for pool in pools if "{pool}" in durable else ("",):
            out.add((spec["stream"], durable.replace("{pool}", pool)))
    return out


def _consumers(g: Grants, service: str) -> Grants:
    for durable, spec in CONSUMERS.items():
        if durable.split("-")[0] == service and "{pool}" not in durable:
            g.consumer(spec["stream"], durable)
    return g


def grants(user: str, *, pools: tuple[str, ...] = ("default",)) -> Grants:
    """The permissions of one user; ``pools``: the executor pools of this deployment."""
    run = ANY_RUN
    if user == "planner":
        g = _consumers(_service(user), user)
        # Plans runs; triggers start runs, and cancel them when their alert resolves.
        g.event(s.run_planned(run), s.run_rejected(run), s.run_requested(run), s.run_cancel(run), "fy.trigger.>")
        g.publish.add(f"$JS.API.STREAM.UPDATE.{s.TRIGGERS_STREAM}")  # captures the workflows' NATS subjects
        # Plans: drafts asked for by triggers, their statuses, their approval requests.
        g.event(s.plan_requested(run), *(s.plan_updated(run, st) for st in s.PLAN_ENDS))
        g.event(s.approval_requested(run, "plan"))
        g.read_stream(s.RUNS_STREAM).objects(s.VALUES_BUCKET)
        for bucket in (s.AGENTS_BUCKET, s.EXECUTORS_BUCKET, s.RUNS_BUCKET, s.ITEMS_BUCKET):
            g.kv(bucket)
        # An approved plan's workflow is registered by the planner.
        for bucket in (s.TRIGGER_STATE_BUCKET, s.TRIGGER_RUNS_BUCKET, s.PLANS_BUCKET, s.WORKFLOWS_BUCKET):
            g.kv(bucket, write=True)
        return g
    if user == "scheduler":
        g = _consumers(_service(user), user)
        g.event(
            s.run_started(run),
            *(s.run_finished(run, st) for st in ("succeeded", "failed", "cancelled")),
            s.approval_requested(run, run),
            s.node_failed(run, run),
            s.timer(run),
            *(s.dispatch(p) for p in pools),
        )
        g.active_index(s.ACTIVE_RUNS, s.ENDED_SUBJECTS)
        for bucket in (s.RUNS_BUCKET, s.ITEMS_BUCKET, s.CONCURRENCY_BUCKET):
            g.kv(bucket, write=True)
        # An admitted run's queue key is purged from the stream, leaving no delete marker behind.
        g.publish.add(f"$JS.API.STREAM.PURGE.KV_{s.CONCURRENCY_BUCKET}")
        g.objects(s.VALUES_BUCKET, write=True)
        return g
    if user == "executor":
        g = _service(user)
        for p in pools:
            g.consumer(s.TASKS_STREAM, f"executor-{p}")
        g.event(
            *(s.task_event(run, run, kind) for kind in ("started", "succeeded", "failed")),
            s.task_results(run),
            "fy.log.>",
        )
        # Stop notices: a run's end, heard on core NATS.
        g.subscribe.update(s.run_finished(run, st) for st in ("succeeded", "failed", "cancelled"))
        g.kv(s.EXECUTORS_BUCKET, write=True).kv(s.RUNS_BUCKET).kv(s.LIMITS_BUCKET, write=True)
        g.objects(s.WORKSPACES_BUCKET, write=True).objects(s.VALUES_BUCKET, write=True)
        return g
    if user == "approver":
        g = _consumers(_service(user), user)
        g.event(*(s.approval_decided(run, run, o) for o in ("granted", "rejected", "expired")), s.approval_timer(run))
        g.active_index("fy.active.approval.>")
        g.subscribe.add(s.DECIDE)
        g.responses = True
        g.kv(s.APPROVALS_BUCKET, write=True).read_stream(s.RUNS_STREAM)
        return g
    if user == "notifier":
        g = _consumers(_service(user), user)
        g.event(s.notification_failed(run))
        g.kv(s.NOTIFY_BUCKET, write=True)
        return g
    if user in ("gateway", "cli"):
        # The two clients: start, cancel and retry runs, decide approvals (through the approver),
        # apply workflows and agents, read everything people look at, write the audit log.
        g = Grants().event(
            s.run_requested(run), s.plan_requested(run), s.run_cancel(run), s.DECIDE, "fy.audit.>", "$JS.API.INFO"
        )
        for stream in (s.RUNS_STREAM, s.LOGS_STREAM, s.AUDIT_STREAM, s.TRIGGER_EVENTS_STREAM, s.DLQ_STREAM):
            g.read_stream(stream)
        g.stream_info(s.TRIGGERS_STREAM, s.ACTIVE_STREAM, *TOPOLOGY)
        for bucket in (s.WORKFLOWS_BUCKET, s.AGENTS_BUCKET):
            g.kv(bucket, write=True)
        for bucket in (
            s.RUNS_BUCKET,
            s.ITEMS_BUCKET,
            s.APPROVALS_BUCKET,
            s.EXECUTORS_BUCKET,
            s.TRIGGER_STATE_BUCKET,
            s.CONCURRENCY_BUCKET,
            s.PLANS_BUCKET,
        ):
            g.kv(bucket)
        g.objects(s.VALUES_BUCKET).objects(s.WORKSPACES_BUCKET, write=user == "cli")
        if user == "gateway":
            g.event(s.ALERTMANAGER)
            g.kv(s.IDEMPOTENCY_BUCKET, write=True)
            g.kv(s.SESSIONS_BUCKET, write=True)
            g.kv(s.LIMITS_BUCKET, write=True)  # the API's rate limits, shared by every replica
        return g
    if user == "admin":
        return Grants(publish={">"}, subscribe={">"}, responses=True)
    raise ValueError(f"no NATS user {user!r}; the users are {', '.join(USERS)}")


def table(pools: tuple[str, ...] = ("default",)) -> dict[str, Any]:
    """Every user's permissions, as nats-server configuration (proto/nats-permissions.json)."""
    every = durables(pools)
    return {user: grants(user, pools=pools).rendered(user, every) for user in USERS}
