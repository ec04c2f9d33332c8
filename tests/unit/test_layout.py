"""The design's import rules (docs/architecture.md): the kit's layers point down, no service imports
another, nothing under services/ needs the CLI, the CLI knows the services in one place only (its
composition root), codegen is build-time, and nothing imports in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_import_contracts_hold() -> None:
    """The layers of shared/, independent services, codegen at build time only, no circles: the
    contracts in pyproject.toml ([tool.importlinter]), checked by import-linter's own engine."""
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contracts_cover_every_kit_layer_and_service() -> None:
    """A new subpackage of shared/ or a new service must be placed in the contracts."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {c["id"]: c for c in config["contracts"]}
    layered = {name.strip() for layer in contracts["kit-layers"]["layers"] for name in layer.split("|")}
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").exists()}
    assert packages == layered, f"shared/ subpackages not in the layers: {packages ^ layered}"
    modules = {p.stem for p in (ROOT / "shared").glob("*.py")} - {"__init__"}
    assert not modules, f"shared/ holds modules outside a layer: {sorted(modules)}"
    services = {f"services.{p.name}" for p in SERVICES.iterdir() if (p / "__main__.py").exists() and p.name != "cli"}
    assert set(contracts["services-independent"]["modules"]) == services


def test_every_service_starts_from_the_platform_kit() -> None:
    for package in sorted(p for p in SERVICES.iterdir() if (p / "__main__.py").exists() and p.name != "cli"):
        imports = _imports(package / "__main__.py")
        assert "shared.service.host" in imports and not any(m.startswith("services.cli") for m in imports), package.name


def test_cli_modules_do_not_import_main() -> None:
    """main imports the command modules; they share helpers through the leaf module `output`."""
    for path in (SERVICES / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module != "main", f"{path.name} imports .main"
    assert _imports(SERVICES / "cli" / "output.py") <= {
        "__future__",
        "json",
        "sys",
        "typing",
        "click",
        "shared.config.settings",
        "shared.service.host",
    }
