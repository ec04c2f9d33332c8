"""``flowyard``: the command line. Exit codes are in :mod:`services.cli.output`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from shared.bus.delivery import NatsUnavailable
from shared.config.settings import Config, load_config
from shared.contract.errors import ConfigurationError, ValidationFailed

from .output import EXIT_BROKEN, EXIT_INVALID, echo_json
from .output import fail as _fail

SERVICES = ("planner", "scheduler", "executor", "approver", "notifier", "gateway")


def _run(coro: Coroutine[Any, Any, int]) -> NoReturn:
    try:
        code = asyncio.run(coro)
    except ValidationFailed as exc:
        _fail("invalid input:\n  " + "\n  ".join(exc.problems), EXIT_INVALID)
    except ConfigurationError as exc:
        text = str(exc)
        code = EXIT_INVALID if text.startswith(("invalid configuration", "config file")) else EXIT_BROKEN
        _fail(text, code)
    except TimeoutError as exc:
        _fail(
            f"{exc or 'timed out'}: NATS did not answer in time; a run already requested goes on without us "
            "(`flowyard runs show` follows it)",
            EXIT_BROKEN,
        )
    except NatsUnavailable as exc:
        _fail(f"{exc}; a run already requested goes on without us: `flowyard runs show` follows it", EXIT_BROKEN)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(code)


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def config(self, **overrides: dict[str, Any]) -> Config:
        try:
            cfg = load_config(self.config_path)
        except ConfigurationError as exc:
            _fail(str(exc), EXIT_INVALID)
        for section, values in overrides.items():
            if values:
                cfg = msgspec.structs.replace(
                    cfg, **{section: msgspec.structs.replace(getattr(cfg, section), **values)}
                )
        return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="FLOWYARD_CONFIG",
    help="YAML configuration file (or FLOWYARD_CONFIG); FLOWYARD_* variables override it.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """flowyard runs workflows of containerised agents over NATS JetStream."""
    ctx.obj = Ctx(config_path)


# --- validate -------------------------------------------------------------------------------


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Also check these run inputs against the workflow.",
)
@click.pass_obj
def validate(obj: Ctx, files: tuple[Path, ...], inputs: tuple[str, ...]) -> None:
    """Check workflow and agent files without running anything."""
    from shared.workflow.validate import check_inputs

    from .inputs import load_and_check, parse_inputs

    problems: list[str] = []
    for path in files:
        try:
            bundle = load_and_check(path)
            for wf in bundle.workflows:
                if inputs:
                    check_inputs(wf, parse_inputs(inputs, wf), file=str(path))
        except ValidationFailed as exc:
            problems.extend(exc.problems)
            continue
        described = [f"{len(bundle.agents)} agent(s)"] + [f"workflow {w.metadata.name!r}" for w in bundle.workflows]
        click.echo(f"{path}: ok ({', '.join(described)})")
    if problems:
        _fail("invalid input:\n  " + "\n  ".join(problems), EXIT_INVALID)


# --- run ------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A workflow input; VALUE is used as JSON when it parses as JSON, else as a string.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result, for scripts.")
@click.option(
    "--runtime",
    type=click.Choice(["process", "docker", "kubernetes"]),
    default=None,
    help="Executor runtime for the embedded stack (default: the configured one).",
)
@click.option("--workflow", "workflow_name", default=None, help="Which workflow, when FILE holds several.")
@click.option("--timeout", default=None, metavar="DURATION", help="Give up waiting after this long (e.g. 10m).")
@click.option("-v", "--verbose", is_flag=True, help="Show the services' logs (embedded stack).")
@click.option(
    "--as",
    "as_user",
    default=None,
    metavar="USER",
    help="Who starts the run (default: your user name); they may not approve its steps.",
)
@click.option(
    "--workspace",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Copy DIR in as the run's workspace (agents with `workspace: ro|rw` get it at /workspace).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Leave matching paths out of the workspace (glob on the relative path or the name; repeatable).",
)
@click.option(
    "--workspace-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="When the run ends, write its final workspace to DIR (new or empty).",
)
@click.pass_obj
def run(
    obj: Ctx,
    file: Path,
    inputs: tuple[str, ...],
    as_json: bool,
    runtime: str | None,
    workflow_name: str | None,
    timeout: str | None,
    verbose: bool,
    as_user: str | None,
    workspace: Path | None,
    exclude: tuple[str, ...],
    workspace_out: Path | None,
) -> None:
    """Run the workflow in FILE (or the registered workflow FILE names) and wait; exit 0 succeeded, 1 failed."""
    from .commands import run_workflow

    config = obj.config(executor={"runtime": runtime} if runtime else {})
    remote = bool(os.environ.get("FLOWYARD_NATS_URL"))
    _run(
        run_workflow(
            config,
            file,
            inputs,
            as_json=as_json,
            remote=remote,
            workflow_name=workflow_name,
            timeout=timeout,
            verbose=verbose,
            user=as_user,
            workspace=workspace,
            exclude=exclude,
            workspace_out=workspace_out,
        )
    )


# --- workflows ------------------------------------------------------------------------------


@cli.group()
def workflows() -> None:
    """The workflow registry of a running stack: apply, list, show, delete."""


@workflows.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "as_user", default=None, metavar="USER", help="Who applies it (default: your user name).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows_apply(obj: Ctx, file: Path, as_user: str | None, as_json: bool) -> None:
    """Validate FILE (as `flowyard validate` does) and keep each workflow in it as its next version."""
    from .commands import _user
    from .workflows import apply_file

    _run(apply_file(obj.config(), file, user=as_user or _user(), as_json=as_json))


@workflows.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows_list(obj: Ctx, as_json: bool) -> None:
    """The registered workflows with their latest versions."""
    from .workflows import list_workflows

    _run(list_workflows(obj.config(), as_json=as_json))


@workflows.command("show")
@click.argument("name")
@click.option(
    "--version", type=click.IntRange(min=1), default=None, metavar="N", help="This version (default: latest)."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows_show(obj: Ctx, name: str, version: int | None, as_json: bool) -> None:
    """One workflow: the YAML of its latest version (or version N)."""
    from .workflows import show_workflow

    _run(show_workflow(obj.config(), name, version=version, as_json=as_json))


@workflows.command("delete")
@click.argument("name")
@click.option("--as", "as_user", default=None, metavar="USER", help="Who deletes it (default: your user name).")
@click.pass_obj
def workflows_delete(obj: Ctx, name: str, as_user: str | None) -> None:
    """Remove a workflow and all its versions from the registry."""
    from .commands import _user
    from .workflows import delete_workflow

    _run(delete_workflow(obj.config(), name, user=as_user or _user()))


@cli.group()
def triggers() -> None:
    """What starts runs on its own: NATS events, alerts, schedules."""


@triggers.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def triggers_list(obj: Ctx, as_json: bool) -> None:
    """Every active trigger: workflow, kind, what it listens to, and what it did since the planners started."""
    from .triggers import show_triggers

    _run(show_triggers(obj.config(), as_json=as_json))


# --- runs -----------------------------------------------------------------------------------


@cli.group()
def runs() -> None:
    """Look at runs kept by a running stack (FLOWYARD_NATS_URL)."""


@runs.command("list")
@click.option("--limit", default=50, show_default=True, help="How many of the newest runs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_list(obj: Ctx, limit: int, as_json: bool) -> None:
    """The newest runs, newest first."""
    from .commands import list_runs

    _run(list_runs(obj.config(), limit=limit, as_json=as_json))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_show(obj: Ctx, run_id: str, as_json: bool) -> None:
    """One run: status, each node's attempts, errors and outputs."""
    from .commands import show_run

    _run(show_run(obj.config(), run_id, as_json=as_json))


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="", help="Why; recorded with the run.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_cancel(obj: Ctx, run_id: str, reason: str, as_json: bool) -> None:
    """Stop a run: running nodes are stopped, pending ones cancelled. Exit 0 once it is cancelled."""
    from .commands import cancel_run

    _run(cancel_run(obj.config(), run_id, reason=reason, as_json=as_json))


@runs.command("retry")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=None, metavar="DURATION", help="Give up waiting after this long.")
@click.pass_obj
def runs_retry(obj: Ctx, run_id: str, as_json: bool, timeout: str | None) -> None:
    """Run a failed or cancelled run again as a new run, keeping the outputs of the nodes that succeeded."""
    from .commands import retry_run

    _run(retry_run(obj.config(), run_id, as_json=as_json, timeout=timeout))


@runs.command("workspace")
@click.argument("run_id")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where to write the files (a new or empty folder).",
)
@click.pass_obj
def runs_workspace(obj: Ctx, run_id: str, out: Path) -> None:
    """Write the run's latest workspace version (what its `rw` agents left) to DIR."""
    from .workspaces import save_workspace

    _run(save_workspace(obj.config(), run_id, out))


@cli.command()
@click.argument("run_id")
@click.option("--node", default=None, metavar="ID", help="Only this node's agent (every item of a foreach).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: node, item, attempt, line.")
@click.pass_obj
def logs(obj: Ctx, run_id: str, node: str | None, follow: bool, as_json: bool) -> None:
    """What the run's agents wrote to stderr, prefixed with node and attempt."""
    from .logs import show_logs

    _run(show_logs(obj.config(), run_id, node=node, follow=follow, as_json=as_json))


# --- approvals ------------------------------------------------------------------------------


@cli.group()
def approvals() -> None:
    """Steps waiting for a person: list, show, approve, reject."""


@approvals.command("list")
@click.option("--pending", is_flag=True, help="Only the requests still waiting for a decision.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_list(obj: Ctx, pending: bool, as_json: bool) -> None:
    """Approval requests, newest first, with their status (pending, granted, rejected, expired, closed)."""
    from .approvals import list_approvals

    _run(list_approvals(obj.config(), pending_only=pending, as_json=as_json))


@approvals.command("show")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_show(obj: Ctx, approval_id: str, as_json: bool) -> None:
    """One request: the step, its inputs, who may decide, and the decisions so far."""
    from .approvals import show_approval

    _run(show_approval(obj.config(), approval_id, as_json=as_json))


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--as", "user", required=True, metavar="USER", help="Who approves.")
@click.option("--comment", default="", help="Recorded with the approval.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_approve(obj: Ctx, approval_id: str, user: str, comment: str, as_json: bool) -> None:
    """Approve a step. Exit 0 when the approval was recorded, 1 when it was refused."""
    from .approvals import decide

    _run(decide(obj.config(), approval_id, "approve", user=user, text=comment, as_json=as_json))


@approvals.command("reject")
@click.argument("approval_id")
@click.option("--as", "user", required=True, metavar="USER", help="Who rejects.")
@click.option("--reason", required=True, help="Why; shown in the run's error.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_reject(obj: Ctx, approval_id: str, user: str, reason: str, as_json: bool) -> None:
    """Reject a step: it is not run, its dependants are skipped and the run fails."""
    from .approvals import decide

    _run(decide(obj.config(), approval_id, "reject", user=user, text=reason, as_json=as_json))


@cli.command()
@click.pass_obj
def doctor(obj: Ctx) -> None:
    """Check what running needs (NATS, Docker, agent images, secrets) and say how to fix it."""
    from .doctor import doctor as run_doctor

    _run(run_doctor(obj.config()))


# --- agents ---------------------------------------------------------------------------------


@cli.group()
def agents() -> None:
    """The agents flowyard ships: compliance-checker, code-reviewer, patcher, shell."""


@agents.command("build")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "--base",
    default="flowyard/base:bookworm",
    show_default=True,
    help="Base image (built offline with debootstrap when it is the default and missing).",
)
@click.option("--force", is_flag=True, help="Rebuild even when nothing changed.")
def agents_build(names: tuple[str, ...], base: str, force: bool) -> None:
    """Build the images of the built-in agents (all, or NAME...), reusing what is up to date."""
    from .agentbuild import build_agents

    _run(build_agents(names, base=base, force=force))


@agents.command("list")
@click.option("--json", "as_json", is_flag=True)
def agents_list(as_json: bool) -> None:
    """The built-in agents: name, image, risk, workspace."""
    from shared.workflow.builtin import builtin_agents

    shipped = builtin_agents()
    rows = [
        {
            "name": a.metadata.name,
            "image": a.spec.image,
            "risk": a.spec.risk,
            "workspace": a.spec.workspace,
            "description": a.metadata.description,
        }
        for a in shipped.values()
    ]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['name']:<20} {r['image']:<40} {r['risk']:<18} workspace {r['workspace']:<3}  {r['description']}"
        )


# --- up / serve -----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where JetStream keeps its data (default: ~/.local/share/flowyard).",
)
@click.option("--nats-port", type=int, default=-1, help="NATS client port (default: a free one).")
@click.option("--runtime", type=click.Choice(["process", "docker", "kubernetes"]), default=None)
@click.option("--http-port", type=int, default=None, help="Port for /healthz, /readyz, /metrics.")
@click.pass_obj
def up(obj: Ctx, data_dir: Path | None, nats_port: int, runtime: str | None, http_port: int | None) -> None:
    """Start the embedded stack: a private nats-server and every service, in one process."""
    from .commands import run_up

    config = obj.config(
        executor={"runtime": runtime} if runtime else {},
        http={"port": http_port} if http_port is not None else {},
    )
    data_dir = data_dir or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "flowyard"
    _run(run_up(config, data_dir, nats_port))


@cli.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option(
    "--runtime", type=click.Choice(["process", "docker", "kubernetes"]), default=None, help="Executor runtime."
)
@click.option("--pool", default=None, help="Executor pool to take tasks from.")
@click.option("--http-port", type=int, default=None, help="Port for /healthz, /readyz, /metrics.")
@click.pass_obj
def serve(obj: Ctx, service: str, runtime: str | None, pool: str | None, http_port: int | None) -> None:
    """Run one service, connecting to FLOWYARD_NATS_URL (as containers and Kubernetes do)."""
    from .commands import run_service

    executor: dict[str, Any] = {}
    if runtime:
        executor["runtime"] = runtime
    if pool:
        executor["pool"] = pool
    config = obj.config(executor=executor, http={"port": http_port} if http_port is not None else {})
    _run(run_service(config, service))


@cli.group()
def images() -> None:
    """The service image (flowyard/flowyard:<version>) and the agents' images, built offline."""


@images.command("build")
@click.option("--tag", default=None, help="The service image's name (default: flowyard/flowyard:<version>).")
@click.option("--base", default="flowyard/base:bookworm", show_default=True, help="Base image (built when missing).")
@click.option("--no-agents", is_flag=True, help="Only the service image, not the built-in agents' images.")
def images_build(tag: str | None, base: str, no_agents: bool) -> None:
    """Build the service image and then the agents' images (as `flowyard agents build`)."""
    from .imagebuild import build_images, default_tag

    _run(build_images(tag=tag or default_tag(), base=base, agents=not no_agents))


@cli.command("nats-config")
@click.option("--secrets-dir", default=None, metavar="DIR", help="Read NATS_PASSWORD_<USER> from files here too.")
@click.option("--store-dir", default="/data/jetstream", show_default=True, help="JetStream's storage directory.")
@click.option(
    "--max-file",
    default=None,
    help="JetStream file storage for the account (default: the stores' limits in bus.* plus 4G for the streams).",
)
@click.option("--max-mem", default="1G", show_default=True, help="JetStream memory storage for the account.")
@click.option("--port", default=4222, show_default=True)
@click.option("--monitor-port", default=8222, show_default=True, help="/healthz, /jsz (probes, KEDA).")
@click.option("--max-payload", default=1024 * 1024, show_default=True, help="Must equal bus.max_payload.")
@click.option("--pool", "pools", multiple=True, default=("default",), show_default=True, help="Executor pools.")
@click.option("--tls-cert", default=None, metavar="PEM", help="The server's certificate.")
@click.option("--tls-key", default=None, metavar="PEM", help="Its private key.")
@click.option("--server-name", default=None, envvar="NATS_SERVER_NAME", help="Unique per server of a cluster.")
@click.option("--cluster-name", default=None, envvar="NATS_CLUSTER_NAME", help="A JetStream cluster: its name.")
@click.option("--cluster-port", default=6222, show_default=True, help="Where the servers of a cluster meet.")
@click.option(
    "--route",
    "routes",
    multiple=True,
    envvar="NATS_ROUTES",
    metavar="URL",
    help="nats-route://host:6222 of every server of the cluster (NATS_ROUTES: space-separated).",
)
@click.option("--tls-ca", default=None, metavar="PEM", help="CA that clients' certificates must chain to.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here (0600).")
@click.pass_obj
def nats_config_cmd(
    obj: Ctx,
    secrets_dir: str | None,
    store_dir: str,
    max_file: str | None,
    max_mem: str,
    port: int,
    monitor_port: int,
    max_payload: int,
    pools: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    server_name: str | None,
    cluster_name: str | None,
    cluster_port: int,
    routes: tuple[str, ...],
    out: Path | None,
) -> None:
    """Print a nats-server configuration: JetStream, and one least-privilege user per service
    (passwords: bcrypt hashes of the secrets NATS_PASSWORD_<USER>, e.g. NATS_PASSWORD_EXECUTOR)."""
    from . import natsadmin
    from .natsadmin import nats_config

    bus = obj.config().bus
    # Streams with a size limit reserve it from the account: the limit must cover them all.
    reserved = bus.workspace_store_bytes + bus.logs_store_bytes + bus.value_store_bytes + 4 * 1024**3
    _run(
        nats_config(
            secrets_dir=secrets_dir,
            store_dir=store_dir,
            max_file=max_file or str(reserved),
            max_mem=max_mem,
            port=port,
            monitor_port=monitor_port,
            max_payload=max_payload,
            pools=pools,
            tls=(tls_cert, tls_key, tls_ca),
            cluster=natsadmin.Cluster(server_name, cluster_name, cluster_port, routes),
            replicas=bus.replicas,
            out=out,
        )
    )


@cli.command("nats-bootstrap")
@click.pass_obj
def nats_bootstrap_cmd(obj: Ctx) -> None:
    """Create flowyard's streams and buckets, as the admin NATS user (run once per deployment
    and after upgrades; safe to run again)."""
    from .natsadmin import nats_bootstrap

    _run(nats_bootstrap(obj.config()))


def _config_here(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.find_object(Ctx).config_path = value  # type: ignore[union-attr]


def _accept_config_everywhere(group: click.Group) -> None:
    """`--config FILE` works after any command too (`flowyard run wf.yaml --config my.yaml`)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_config_everywhere(command)
        else:
            command.params.append(
                click.Option(
                    ["--config"],
                    metavar="FILE",
                    expose_value=False,
                    callback=_config_here,
                    help="YAML configuration file (FLOWYARD_* variables override it).",
                )
            )


_accept_config_everywhere(cli)


def main() -> None:
    cli(prog_name="flowyard")
