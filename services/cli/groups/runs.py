"""``flowyard runs`` and ``flowyard logs``: runs kept by a running stack."""

from __future__ import annotations

from pathlib import Path

import click

from ..context import Ctx, _run


@click.group()
def runs() -> None:
    """Look at runs kept by a running stack (FLOWYARD_NATS_URL)."""


# As shared.api.views.ViewStatus (a unit test keeps them equal); not imported, so --help stays quick.
RUN_STATUSES = ("pending", "running", "waiting", "succeeded", "failed", "cancelled")


@runs.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="How many of the newest runs.")
@click.option("--workflow", default=None, help="Only the runs of this workflow.")
@click.option("--status", type=click.Choice(RUN_STATUSES), default=None, help="Only the runs in this status.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_list(obj: Ctx, limit: int, workflow: str | None, status: str | None, as_json: bool) -> None:
    """The newest runs, newest first (of one workflow, in one status)."""
    from ..commands import list_runs

    _run(list_runs(obj.config(), limit=limit, workflow=workflow, status=status, as_json=as_json))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_show(obj: Ctx, run_id: str, as_json: bool) -> None:
    """One run: status, each node's attempts, errors and outputs."""
    from ..commands import show_run

    _run(show_run(obj.config(), run_id, as_json=as_json))


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="", help="Why; recorded with the run.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_cancel(obj: Ctx, run_id: str, reason: str, as_json: bool) -> None:
    """Stop a run: running nodes are stopped, pending ones cancelled. Exit 0 once it is cancelled."""
    from ..commands import cancel_run

    _run(cancel_run(obj.config(), run_id, reason=reason, as_json=as_json))


@runs.command("retry")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=None, metavar="DURATION", help="Give up waiting after this long.")
@click.pass_obj
def runs_retry(obj: Ctx, run_id: str, as_json: bool, timeout: str | None) -> None:
    """Run a failed or cancelled run again as a new run, keeping the outputs of the nodes that succeeded."""
    from ..commands import retry_run

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
    from ..workspaces import save_workspace

    _run(save_workspace(obj.config(), run_id, out))


@click.command()
@click.argument("run_id")
@click.option("--node", default=None, metavar="ID", help="Only this node's agent (every item of a foreach).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: node, item, attempt, line.")
@click.pass_obj
def logs(obj: Ctx, run_id: str, node: str | None, follow: bool, as_json: bool) -> None:
    """What the run's agents wrote to stderr, prefixed with node and attempt."""
    from ..logs import show_logs

    _run(show_logs(obj.config(), run_id, node=node, follow=follow, as_json=as_json))


# --- approvals ------------------------------------------------------------------------------
