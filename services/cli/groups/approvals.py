"""``flowyard approvals``: steps waiting for a person."""

from __future__ import annotations

import click

from ..context import Ctx, _run


@click.group()
def approvals() -> None:
    """Steps waiting for a person: list, show, approve, reject."""


@approvals.command("list")
@click.option("--pending", is_flag=True, help="Only the requests still waiting for a decision.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_list(obj: Ctx, pending: bool, as_json: bool) -> None:
    """Approval requests, newest first, with their status (pending, granted, rejected, expired, closed)."""
    from ..approvals import list_approvals

    _run(list_approvals(obj.config(), pending_only=pending, as_json=as_json))


@approvals.command("show")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_show(obj: Ctx, approval_id: str, as_json: bool) -> None:
    """One request: the step, its inputs, who may decide, and the decisions so far."""
    from ..approvals import show_approval

    _run(show_approval(obj.config(), approval_id, as_json=as_json))


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--as", "user", required=True, metavar="USER", help="Who approves.")
@click.option("--comment", default="", help="Recorded with the approval.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_approve(obj: Ctx, approval_id: str, user: str, comment: str, as_json: bool) -> None:
    """Approve a step. Exit 0 when the approval was recorded, 1 when it was refused."""
    from ..approvals import decide

    _run(decide(obj.config(), approval_id, "approve", user=user, text=comment, as_json=as_json))


@approvals.command("reject")
@click.argument("approval_id")
@click.option("--as", "user", required=True, metavar="USER", help="Who rejects.")
@click.option("--reason", required=True, help="Why; shown in the run's error.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_reject(obj: Ctx, approval_id: str, user: str, reason: str, as_json: bool) -> None:
    """Reject a step: it is not run, its dependants are skipped and the run fails."""
    from ..approvals import decide

    _run(decide(obj.config(), approval_id, "reject", user=user, text=reason, as_json=as_json))
