"""The workflow registry: ``kind: Workflow`` documents kept by name, every apply a new version.

KV ``fy_workflows`` holds, per workflow, a head under ``NAME`` (the latest version and what a
list shows) and each version under ``NAME.N``, so earlier versions stay readable. A version is
claimed with create (only one applier gets N) and the head moves with compare-and-set, so two
applies at once never lose one. Applying a document identical to the latest version (same
workflow and agents, whatever the comments) keeps that version. Deleting purges the versions and
leaves a tombstone head, so a later apply continues the numbering and a run's
``workflow_version`` never names two different documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.js.errors

from shared.bus import capture
from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.envelope import now_rfc3339
from shared.contract.errors import RetryableError, ValidationFailed
from shared.state import agents as agent_registry
from shared.workflow.check import agent_names, check_bundle
from shared.workflow.loader import Bundle, load_bundle, parse_workflow
from shared.workflow.model import AgentDoc, InputDef, WorkflowDoc


class InputView(msgspec.Struct, kw_only=True):
    """A declared workflow input, for forms and docs."""

    type: str = "string"
    default: Any = None
    has_default: bool = False
    required: bool = True
    description: str = ""


class WorkflowSummary(msgspec.Struct, kw_only=True):
    """The head of a registered workflow: what ``workflows list`` shows."""

    name: str
    version: int  # the latest
    description: str = ""
    labels: dict[str, str] = {}
    inputs: dict[str, InputView] = {}
    digest: str = ""
    applied_at: str = ""
    applied_by: str = ""
    deleted: bool = False
    plan_id: str | None = None  # the latest version came from this approved plan (docs/planning.md)


class WorkflowVersion(msgspec.Struct, kw_only=True):
    """One applied version, kept whole: the workflow, the agents beside it, and the YAML sent."""

    name: str
    version: int
    digest: str  # sha256 of the workflow and its agents, as parsed
    applied_at: str
    applied_by: str
    definition: dict[str, Any]  # the workflow document
    agents: list[dict[str, Any]] = []  # the `kind: Agent` documents applied with it
    source: str = ""  # the YAML text as applied
    plan_id: str | None = None  # drafted by the planner: the plan a person approved
    model: str | None = None  # and the model that drafted it


class Applied(msgspec.Struct, kw_only=True):
    """What an apply did to one workflow."""

    name: str
    version: int
    changed: bool  # false: identical to the latest version, which was kept


_enc = msgspec.json.Encoder(order="sorted")
_dec_head = msgspec.json.Decoder(WorkflowSummary)
_dec_version = msgspec.json.Decoder(WorkflowVersion)
_MAX_RACES = 50


def version_key(name: str, version: int) -> str:
    return f"{name}.{version}"


def digest(workflow: WorkflowDoc, agents: list[AgentDoc]) -> str:
    body = _enc.encode({"workflow": workflow, "agents": sorted(agents, key=lambda a: a.metadata.name)})
    return "sha256:" + hashlib.sha256(body).hexdigest()


def input_views(definitions: dict[str, InputDef]) -> dict[str, InputView]:
    return {
        name: InputView(
            type=d.type,
            default=None if d.default is msgspec.UNSET else d.default,
            has_default=d.default is not msgspec.UNSET,
            required=d.is_required,
            description=d.description,
        )
        for name, d in definitions.items()
    }


async def check_text(bus: Bus, text: str, file: str, priorities: Mapping[str, list[str]] | None = None) -> Bundle:
    """Parse and validate YAML exactly as ``flowyard validate`` does, also knowing registered agents."""
    bundle = await asyncio.to_thread(load_bundle, text, file)
    registered = await agent_registry.lookup(bus, agent_names(bundle), but=bundle.agents)
    await asyncio.to_thread(check_bundle, bundle, registered, priorities)
    if not bundle.workflows:
        raise ValidationFailed([f"{file}: holds no `kind: Workflow` document; a workflow is what gets applied"])
    return bundle


async def apply(
    bus: Bus, bundle: Bundle, text: str, *, user: str, plan_id: str | None = None, model: str | None = None
) -> list[Applied]:
    """Keep every workflow of a checked bundle as its next version; register its agents.
    ``plan_id`` and ``model``: the bundle is an approved plan's workflow, kept with its provenance."""
    agents = list(bundle.agents.values())
    if agents:
        await agent_registry.register(bus, agents)
    applied = [await _apply_one(bus, wf, agents, text, user, plan_id, model) for wf in bundle.workflows]
    if any(a.changed for a in applied):
        await capture_triggers(bus)
    return applied


async def capture_triggers(bus: Bus) -> None:
    """Capture every registered workflow's NATS trigger subjects now, so an event published right
    after an apply is kept (the planner keeps it in step too, as it sees the registry change)."""
    found: list[str] = []
    for summary in await listing(bus):
        version = await get_version(bus, summary.name, summary.version)
        if version is None:
            continue
        try:
            doc = parse_version(version)
        except ValidationFailed:
            continue
        found.extend(t.nats.subject for t in doc.spec.triggers if t.nats is not None)
    await capture.sync(bus, found)


async def _apply_one(
    bus: Bus,
    wf: WorkflowDoc,
    agents: list[AgentDoc],
    text: str,
    user: str,
    plan_id: str | None = None,
    model: str | None = None,
) -> Applied:
    kv = await bus.kv(subjects.WORKFLOWS_BUCKET)
    name = wf.metadata.name
    sha = digest(wf, agents)
    for _ in range(_MAX_RACES):
        head, revision = await _head(bus, name)
        if head is not None and not head.deleted and head.digest == sha:
            return Applied(name=name, version=head.version, changed=False)
        number = (head.version if head else 0) + 1
        now = now_rfc3339()
        version = WorkflowVersion(
            name=name,
            version=number,
            digest=sha,
            applied_at=now,
            applied_by=user,
            definition=msgspec.to_builtins(wf),
            agents=[msgspec.to_builtins(a) for a in agents],
            source=text,
            plan_id=plan_id,
            model=model,
        )
        try:
            await kv.create(version_key(name, number), _enc.encode(version))
        except nats.js.errors.KeyWrongLastSequenceError:
            await asyncio.sleep(0.01)  # another apply took this number; its head moves next
            continue
        summary = WorkflowSummary(
            name=name,
            version=number,
            description=wf.metadata.description or wf.spec.description,
            labels=dict(wf.metadata.labels),
            inputs=input_views(wf.spec.inputs),
            digest=sha,
            applied_at=now,
            applied_by=user,
            plan_id=plan_id,
        )
        try:
            if revision is None:
                await kv.create(name, _enc.encode(summary))
            else:
                await kv.update(name, _enc.encode(summary), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Cannot happen while version numbers are claimed first, but never leave a version
            # no head points at.
            await kv.purge(version_key(name, number))
            continue
        return Applied(name=name, version=number, changed=True)
    raise RetryableError(f"workflow {name!r} kept changing while it was applied; apply it again")


async def _head(bus: Bus, name: str) -> tuple[WorkflowSummary | None, int | None]:
    kv = await bus.kv(subjects.WORKFLOWS_BUCKET)
    try:
        entry = await kv.get(name)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None, None
    if not entry.value:
        return None, entry.revision
    return _dec_head.decode(entry.value), entry.revision


async def head(bus: Bus, name: str) -> WorkflowSummary | None:
    found, _ = await _head(bus, name)
    return None if found is None or found.deleted else found


async def get(bus: Bus, name: str, version: int | None = None) -> WorkflowVersion | None:
    """The latest version of NAME, or version N; None when there is no such workflow or version."""
    latest = await head(bus, name)
    if latest is None:
        return None
    number = latest.version if version is None else version
    if not 1 <= number <= latest.version:
        return None
    return await get_version(bus, name, number)


async def get_version(bus: Bus, name: str, number: int) -> WorkflowVersion | None:
    """Version N as applied (immutable: numbers are never reused); None when purged."""
    kv = await bus.kv(subjects.WORKFLOWS_BUCKET)
    try:
        entry = await kv.get(version_key(name, number))
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    return _dec_version.decode(entry.value) if entry.value else None


async def listing(bus: Bus) -> list[WorkflowSummary]:
    keys = await bus.kv_keys(subjects.WORKFLOWS_BUCKET)
    heads = [k for k in keys if "." not in k]
    found = await asyncio.gather(*(head(bus, k) for k in sorted(heads)))
    return [h for h in found if h is not None]


async def delete(bus: Bus, name: str) -> WorkflowSummary | None:
    """Remove NAME and its versions; the removed head, or None when there was no such workflow."""
    kv = await bus.kv(subjects.WORKFLOWS_BUCKET)
    for _ in range(_MAX_RACES):
        current, revision = await _head(bus, name)
        if current is None or current.deleted or revision is None:
            return None
        tombstone = msgspec.structs.replace(current, deleted=True, applied_at=now_rfc3339())
        try:
            await kv.update(name, _enc.encode(tombstone), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        for number in range(1, current.version + 1):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await kv.purge(version_key(name, number))
        await capture_triggers(bus)
        return current
    raise RetryableError(f"workflow {name!r} kept changing while it was deleted; try again")


def parse_version(version: WorkflowVersion) -> WorkflowDoc:
    return parse_workflow(version.definition, f"workflow {version.name!r} version {version.version}")
