"""``flowyard plan`` and ``flowyard plans``: workflows drafted from a goal, run only once approved."""

from __future__ import annotations

import getpass

import click

from shared.contract.drafts import PLAN_STATUSES
from shared.formats.durations import parse_duration

from ..context import Ctx, _run
from ..output import EXIT_INVALID
from ..output import fail as _fail


@click.command("plan")
@click.argument("goal")
@click.option("-i", "--input", "inputs", multiple=True, metavar="KEY=VALUE", help="An input the run will be given.")
@click.option("--name", default=None, metavar="NAME", help="Register the approved workflow under this name.")
@click.option("--run", "run_after", is_flag=True, help="Start a run as soon as the plan is approved.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
@click.option("--as", "as_user", default=None, metavar="USER", help="Who asks (default: your user name).")
@click.option("--timeout", default="10m", metavar="DURATION", help="How long to wait for the draft.")
@click.pass_obj
def plan(
    obj: Ctx,
    goal: str,
    inputs: tuple[str, ...],
    name: str | None,
    run_after: bool,
    as_json: bool,
    as_user: str | None,
    timeout: str,
) -> None:
    """Ask the planner to draft a workflow for GOAL, wait, and print its graph and YAML.

    Nothing runs until a person approves the plan. Exit 0 proposed (or approved), 1 failed,
    2 invalid request, 3 could not reach the stack."""
    from ..plans import make_plan

    try:
        wait = parse_duration(timeout)
    except ValueError as exc:
        _fail(f"invalid input:\n  --timeout: {exc}", EXIT_INVALID)
    _run(
        make_plan(
            obj.config(),
            goal,
            inputs,
            name=name,
            run=run_after,
            as_json=as_json,
            user=as_user or getpass.getuser(),
            timeout=wait,
        )
    )


@click.group()
def plans() -> None:
    """Plans drafted from goals: list, show, approve, reject."""


@plans.command("list")
@click.option("--status", type=click.Choice(PLAN_STATUSES), default=None, help="Only plans in this status.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plans_list(obj: Ctx, status: str | None, as_json: bool) -> None:
    """Plans, newest first, with their status."""
    from ..plans import list_plans

    _run(list_plans(obj.config(), status=status, as_json=as_json))


@plans.command("show")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plans_show(obj: Ctx, plan_id: str, as_json: bool) -> None:
    """One plan: its graph, YAML, the validator's rounds and the decision."""
    from ..plans import show_plan

    _run(show_plan(obj.config(), plan_id, as_json=as_json))


@plans.command("approve")
@click.argument("plan_id")
@click.option("--as", "user", default=None, metavar="USER", help="Who approves (default: your user name).")
@click.option("--comment", default="", help="Recorded with the approval.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plans_approve(obj: Ctx, plan_id: str, user: str | None, comment: str, as_json: bool) -> None:
    """Approve a proposed plan: its workflow is registered (and run, if it was asked with --run).
    Exit 0 when the approval was recorded, 1 when it was refused, 2 for no such plan."""
    from ..plans import decide_plan

    who = user or getpass.getuser()
    _run(decide_plan(obj.config(), plan_id, "approve", user=who, text=comment, as_json=as_json))


@plans.command("reject")
@click.argument("plan_id")
@click.option("--as", "user", default=None, metavar="USER", help="Who rejects (default: your user name).")
@click.option("--reason", required=True, help="Why; kept with the plan.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plans_reject(obj: Ctx, plan_id: str, user: str | None, reason: str, as_json: bool) -> None:
    """Reject a proposed plan: it is kept with the reason, nothing is registered or run."""
    from ..plans import decide_plan

    who = user or getpass.getuser()
    _run(decide_plan(obj.config(), plan_id, "reject", user=who, text=reason, as_json=as_json))
