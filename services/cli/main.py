"""``flowyard``: the command line. Exit codes are in :mod:`services.cli.output`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from shared.contract.errors import ValidationFailed

from .context import Ctx, _run
from .groups.agents import agents, images
from .groups.approvals import approvals
from .groups.plans import plan, plans
from .groups.runs import logs, runs
from .groups.stack import doctor, nats_bootstrap_cmd, nats_config_cmd, serve, up
from .groups.workflows import triggers, workflows
from .output import EXIT_INVALID
from .output import fail as _fail


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
    priorities = obj.config().agents.priorities
    for path in files:
        try:
            bundle = load_and_check(path, priorities=priorities)
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


cli.add_command(workflows)
cli.add_command(triggers)
cli.add_command(runs)
cli.add_command(logs)
cli.add_command(approvals)
cli.add_command(plan)
cli.add_command(plans)
cli.add_command(agents)
cli.add_command(images)
cli.add_command(doctor)
cli.add_command(up)
cli.add_command(serve)
cli.add_command(nats_config_cmd)
cli.add_command(nats_bootstrap_cmd)


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
