"""The agents flowyard ships (``agents/<name>/agent.yaml``), known by name without registering them.

A workflow can use ``agent: compliance-checker`` straight away; an agent of the same name in the
workflow's file or in the registry wins, so an operator can point a built-in at another image.
The folder is found next to the packages (a source checkout or editable install), or where
``FLOWYARD_AGENTS_DIR`` says.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from shared.workflow.loader import load_file
from shared.workflow.model import AgentDoc


def agents_dir() -> Path:
    configured = os.environ.get("FLOWYARD_AGENTS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "agents"


@functools.cache
def _load(root: Path) -> dict[str, AgentDoc]:
    found: dict[str, AgentDoc] = {}
    if not root.is_dir():
        return found
    for spec in sorted(root.glob("*/agent.yaml")):
        for agent in load_file(spec).agents.values():
            found[agent.metadata.name] = agent
    return found


def builtin_agents() -> dict[str, AgentDoc]:
    """Name -> agent; a shipped file that does not load is a bug, so it raises."""
    return dict(_load(agents_dir()))


def agent_dirs() -> dict[str, Path]:
    """Name -> the folder holding its agent.yaml and Dockerfile."""
    root = agents_dir()
    return {name: root / name for name in builtin_agents() if (root / name / "Dockerfile").is_file()}
