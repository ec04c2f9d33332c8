"""``flowyard agents`` and ``flowyard images``: building and listing images."""

from __future__ import annotations

import click

from ..context import _run
from ..output import echo_json


@click.group()
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
    from ..agentbuild import build_agents

    _run(build_agents(names, base=base, force=force))


@agents.command("list")
@click.option("--json", "as_json", is_flag=True)
def agents_list(as_json: bool) -> None:
    """The built-in agents: name, image, risk, workspace, capabilities."""
    from shared.workflow.builtin import builtin_agents

    shipped = builtin_agents()
    rows = [
        {
            "name": a.metadata.name,
            "image": a.spec.image,
            "risk": a.spec.risk,
            "workspace": a.spec.workspace,
            "capabilities": list(a.spec.capabilities),
            "autonomous": a.spec.autonomous,
            "llm": a.spec.llm is not None,
            "description": a.metadata.description,
        }
        for a in shipped.values()
    ]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['name']:<20} {r['image']:<40} {r['risk']:<18} workspace {r['workspace']:<4} "
            f"{','.join(r['capabilities']) or '-':<24} {r['description']}"
        )


# --- up / serve -----------------------------------------------------------------------------


@click.group()
def images() -> None:
    """The service image (flowyard/flowyard:<version>) and the agents' images, built offline."""


@images.command("build")
@click.option("--tag", default=None, help="The service image's name (default: flowyard/flowyard:<version>).")
@click.option("--base", default="flowyard/base:bookworm", show_default=True, help="Base image (built when missing).")
@click.option("--no-agents", is_flag=True, help="Only the service image, not the built-in agents' images.")
def images_build(tag: str | None, base: str, no_agents: bool) -> None:
    """Build the service image and then the agents' images (as `flowyard agents build`)."""
    from ..imagebuild import build_images, default_tag

    _run(build_images(tag=tag or default_tag(), base=base, agents=not no_agents))
