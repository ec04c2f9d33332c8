"""``flowyard workflows`` and ``flowyard triggers``: the registry and what its triggers did."""

from __future__ import annotations

from pathlib import Path

import click

from ..context import Ctx, _run


@click.group()
def workflows() -> None:
    """The workflow registry of a running stack: apply, list, show, delete."""


@workflows.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "as_user", default=None, metavar="USER", help="Who applies it (default: your user name).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows_apply(obj: Ctx, file: Path, as_user: str | None, as_json: bool) -> None:
    """Validate FILE (as `flowyard validate` does) and keep each workflow in it as its next version."""
    from ..commands import _user
    from ..workflows import apply_file

    _run(apply_file(obj.config(), file, user=as_user or _user(), as_json=as_json))


@workflows.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows_list(obj: Ctx, as_json: bool) -> None:
    """The registered workflows with their latest versions."""
    from ..workflows import list_workflows

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
    from ..workflows import show_workflow

    _run(show_workflow(obj.config(), name, version=version, as_json=as_json))


@workflows.command("delete")
@click.argument("name")
@click.option("--as", "as_user", default=None, metavar="USER", help="Who deletes it (default: your user name).")
@click.pass_obj
def workflows_delete(obj: Ctx, name: str, as_user: str | None) -> None:
    """Remove a workflow and all its versions from the registry."""
    from ..commands import _user
    from ..workflows import delete_workflow

    _run(delete_workflow(obj.config(), name, user=as_user or _user()))


@click.group()
def triggers() -> None:
    """What starts runs on its own: NATS events, alerts, schedules."""


@triggers.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def triggers_list(obj: Ctx, as_json: bool) -> None:
    """Every active trigger: workflow, kind, what it listens to, and what it did since the planners started."""
    from ..triggers import show_triggers

    _run(show_triggers(obj.config(), as_json=as_json))


# --- runs -----------------------------------------------------------------------------------
