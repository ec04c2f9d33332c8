"""Import a built-in agent's module from agents/<name>/ (folders with '-' are not packages)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

AGENTS = Path(__file__).resolve().parents[3] / "agents"


def agent_module(folder: str, module: str) -> ModuleType:
    name = f"fy_agent_{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, AGENTS / folder / f"{module}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
