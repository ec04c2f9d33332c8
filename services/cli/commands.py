"""The async bodies of the CLI commands."""

from __future__ import annotations

import asyncio
import getpass
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import msgspec

from shared.api import runs
from shared.bus.connection import Bus
from shared.bus.topology import ensure_topology
from shared.config.settings import Config
from shared.contract.envelope import now_rfc3339
from shared.contract.errors import ConfigurationError, PermanentError, ValidationFailed
from shared.contract.messages import RunRejected, RunRequested
from shared.formats.durations import parse_duration
from shared.service.host import serve
from shared.state import agents as agent_registry
from shared.state import registry
from shared.state import workspace as ws
from shared.state.values import Values
from shared.workflow.check import agent_names
from shared.workflow.loader import Bundle, load_file
from shared.workflow.model import NAME_RE, WorkflowDoc
from shared.workflow.validate import check_inputs

from . import client, render, workspaces
from .client import connected
from .embedded import EmbeddedStack
from .inputs import load_and_check, parse_inputs
from .output import EXIT_FAILED, EXIT_INVALID, EXIT_OK, configure, echo_json
from .workflows import record as record_audit


async def run_workflow(
    config: Config,
    file: Path,
    pairs: tuple[str, ...],
    *,
    as_json: bool,
    remote: bool,
    workflow_name: str | None,
    timeout: str | None,
    verbose: bool,
    user: str | None = None,
    workspace: Path | None = None,
    exclude: tuple[str, ...] = (),
    workspace_out: Path | None = None,
) -> int:
    configure(config, "cli", quiet=not verbose)
    wait_for = parse_duration(timeout) if timeout else None
    registered_name = _registered_name(file)
    if registered_name is not None and not remote:
        raise ValidationFailed(
            [
                f"{file}: no such file. To run the registered workflow {registered_name!r}, point FLOWYARD_NATS_URL "
                "at the stack that keeps it (`flowyard up` prints it)"
            ]
        )
    # Check everything we can before starting anything: a bad file costs no server start.
    priorities = config.agents.priorities
    bundle = await asyncio.to_thread(load_and_check, file, None, priorities) if not remote else None
    if workspace_out is not None:
        await asyncio.to_thread(workspaces.check_out_dir, workspace_out)
    packed = await workspaces.pack(workspace, config, exclude) if workspace is not None else None
    stack: EmbeddedStack | None = None
    if not remote:
        no_http = msgspec.structs.replace(config.http, port=-1)
        stack = EmbeddedStack(msgspec.structs.replace(config, http=no_http))
        await stack.start()
        config = stack.config
    bus = Bus(config.nats, config.bus, name="cli")
    try:
        await bus.connect()
        # Every step before the request is idempotent: each rides through a NATS restart (the bus's calls do).
        await ensure_topology(bus)
        version: int | None = None
        if registered_name is not None:
            workflow, version = await _load_registered(bus, registered_name)
            source = f"workflow {registered_name!r} version {version}"
        else:
            if bundle is None:
                bundle = await _load_remote(bus, file, config.agents.priorities)
            workflow = bundle.workflow(workflow_name)
            agents = bundle.agents.values()
            await agent_registry.register(bus, agents)
            source = str(file)
        inputs = check_inputs(workflow, parse_inputs(pairs, workflow), file=source)
        run_id = client.new_run_id()
        first = None
        if packed is not None:
            store = ws.WorkspaceStore(bus, max_bytes=config.bus.workspace_max_bytes)
            try:
                first = await store.store(ws.first_version(run_id), packed)
            except PermanentError as exc:  # the store is full: flowyard cannot take the run (exit 3)
                raise ConfigurationError(f"{exc}; nothing was started") from None
        requester = user or _user()
        request = RunRequested(
            run_id=run_id,
            workspace=first,
            workflow=workflow.metadata.name,
            definition=msgspec.to_builtins(workflow),
            inputs=inputs,
            trigger={"type": "manual"},
            source=source,
            requested_by=requester,
            requested_at=now_rfc3339(),
            workflow_version=version,
        )
        if remote:  # a private stack's audit log dies with it
            what = f"{workflow.metadata.name} from {source}"
            await record_audit(bus, requester, "start", f"run/{run_id}", what)
        code = await _submit(
            bus, request, as_json=as_json, wait_for=wait_for, nats_url=stack.server.url if stack else None
        )
        if workspace_out is not None:
            record = await client.get_record(bus, run_id)
            if record is not None and record.workspace:
                await workspaces.write_out(bus, config, record.workspace, workspace_out)
                if not as_json:
                    print(f"workspace (version {record.workspace_version}) written to {workspace_out}")
            elif not as_json:
                print("the run has no workspace; nothing written", file=sys.stderr)
        return code
    finally:
        await bus.close()
        if stack is not None:
            await stack.stop()


async def _submit(
    bus: Bus, request: RunRequested, *, as_json: bool, wait_for: float | None, nats_url: str | None = None
) -> int:
    """Submit, show progress (or stay quiet for --json), print the result; the exit code."""
    progress = render.Progress(sys.stderr if as_json else sys.stdout, nats_url=nats_url)
    final = await client.submit_and_follow(bus, request, (lambda _e: None) if as_json else progress, timeout=wait_for)
    if isinstance(final, RunRejected):
        raise ValidationFailed(final.errors)
    if as_json:
        record = await client.get_record(bus, final.run_id)
        echo_json(client.result_json(record) if record else client.finished_json(final))
    else:
        outputs = await Values(bus, bus.cfg.inline_limit).resolve_all(final.outputs)  # large ones by reference
        render.print_outcome(final.status, outputs, final.error, run_id=final.run_id)
    return EXIT_OK if final.status == "succeeded" else EXIT_FAILED


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def cancel_run(config: Config, run_id: str, *, reason: str, as_json: bool) -> int:
    async with connected(config) as bus:
        record = await client.get_record(bus, run_id)
        if record is None:
            return _no_run(run_id)
        if record.status == "running":
            await runs.request_cancel(bus, run_id, user=_user(), reason=reason)
            await record_audit(bus, _user(), "cancel", f"run/{run_id}", reason)
            record = await client.wait_for_end(bus, run_id, timeout=60)
        else:
            print(f"flowyard: run {run_id} already {record.status}; nothing to cancel", file=sys.stderr)
            return EXIT_FAILED
    if as_json:
        echo_json(client.result_json(record))
    else:
        render.print_record(record)
    return EXIT_OK if record.status == "cancelled" else EXIT_FAILED


async def retry_run(config: Config, run_id: str, *, as_json: bool, timeout: str | None) -> int:
    """A new run of a failed or cancelled one: succeeded nodes keep their outputs, the rest run again."""
    async with connected(config) as bus:
        record = await client.get_record(bus, run_id, whole=False)
        if record is None:
            return _no_run(run_id)
        if record.status not in ("failed", "cancelled"):
            print(
                f"flowyard: run {run_id} is {record.status}; only failed or cancelled runs can be retried",
                file=sys.stderr,
            )
            return EXIT_INVALID
        original = await client.get_request(bus, run_id)
        if original is None or record.plan is None:
            print(
                f"flowyard: run {run_id} never started (it was rejected, or its request has expired from the "
                "stream); fix the workflow and use `flowyard run`",
                file=sys.stderr,
            )
            return EXIT_INVALID
        request = runs.retry_request(original, record, user=_user(), trigger={"type": "manual"})
        await record_audit(bus, _user(), "retry", f"run/{run_id}", f"retried as run {request.run_id}")
        if not as_json:
            kept = ", ".join(request.reuse) or "none"
            print(f"retrying run {run_id} as {request.run_id} (keeping the outputs of: {kept})")
        return await _submit(bus, request, as_json=as_json, wait_for=parse_duration(timeout) if timeout else None)


def _no_run(run_id: str) -> int:
    print(f"flowyard: no run {run_id!r}; `flowyard runs list` shows the runs this stack knows", file=sys.stderr)
    return EXIT_INVALID


def _registered_name(file: Path) -> str | None:
    """NAME when FILE is not a file but could name a registered workflow."""
    if file.exists() or file.suffix in (".yaml", ".yml", ".json") or len(file.parts) != 1:
        return None
    return str(file) if NAME_RE.match(str(file)) else None


async def _load_registered(bus: Bus, name: str) -> tuple[WorkflowDoc, int]:
    found = await registry.get(bus, name)
    if found is None:
        raise ValidationFailed(
            [f"{name}: no such file, and no workflow {name!r} is registered; `flowyard workflows list` shows them"]
        )
    return registry.parse_version(found), found.version


async def _load_remote(bus: Bus, file: Path, priorities: Mapping[str, list[str]]) -> Bundle:
    """Validate FILE against the agents it defines plus those the stack has registered."""
    loaded = await asyncio.to_thread(load_file, file)
    registered = await agent_registry.lookup(bus, agent_names(loaded), but=loaded.agents)
    return await asyncio.to_thread(load_and_check, file, registered, priorities)


async def list_runs(
    config: Config, *, limit: int, as_json: bool, workflow: str | None = None, status: str | None = None
) -> int:
    async with connected(config) as bus:
        records = await client.list_records(bus, limit, workflow=workflow, status=status)  # type: ignore[arg-type]
    if as_json:
        echo_json([client.result_json(r) for r in records])
    else:
        render.print_table(records)
    return EXIT_OK


async def show_run(config: Config, run_id: str, *, as_json: bool) -> int:
    async with connected(config) as bus:
        record = await client.get_record(bus, run_id)
    if record is None:
        return _no_run(run_id)
    if as_json:
        echo_json(client.result_json(record))
    else:
        render.print_record(record)
    return EXIT_OK


async def run_up(config: Config, data_dir: Path, nats_port: int) -> int:
    configure(config, "embedded")
    stack = EmbeddedStack(config, data_dir=data_dir, nats_port=nats_port, gateway=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stack.start()
    assert stack.host is not None
    health = f"http://{config.http.host}:{stack.host.port}" if stack.host.port else "off"
    print(f"flowyard is up: NATS {stack.server.url} (data in {data_dir}), health {health}", flush=True)
    print(f"  export FLOWYARD_NATS_URL={stack.server.url}", flush=True)
    gateway = stack.gateway
    if gateway is not None:
        print(f"  gateway (REST API) {gateway.url}  — docs/api.md; GET {gateway.url}/openapi.json", flush=True)
        print(f"  web UI {gateway.url}/  — sign in with a token (docs/ui.md)", flush=True)
        if gateway.token_file is not None:
            token = gateway.token_file.read_text().strip()
            print(f"  admin token (kept 0600 in {gateway.token_file}): {token}", flush=True)
            print(f"  export FLOWYARD_TOKEN={token}", flush=True)
    try:
        await stopping.wait()
    finally:
        print("flowyard is shutting down", flush=True)
        await stack.stop()
    return EXIT_OK


async def run_service(config: Config, name: str) -> int:
    from .embedded import SERVICE_KINDS

    configure(config, name)
    await serve(config, [SERVICE_KINDS[name](config)])
    return EXIT_OK
