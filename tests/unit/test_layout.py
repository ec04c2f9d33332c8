"""The design's import rules: no service imports another, nothing under services/ needs the CLI,
and the CLI knows the services in one place only (its composition root)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
COMPOSITION_ROOT = SERVICES / "cli" / "embedded.py"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_service_imports_another_or_the_cli() -> None:
    problems = []
    for package in sorted(p for p in SERVICES.iterdir() if (p / "__init__.py").exists()):
        for path in package.rglob("*.py"):
            if path == COMPOSITION_ROOT:
                continue
            for module in _imports(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != package.name:
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not problems, "\n".join(problems)


def test_every_service_starts_from_the_platform_kit() -> None:
    for package in sorted(p for p in SERVICES.iterdir() if (p / "__main__.py").exists() and p.name != "cli"):
        imports = _imports(package / "__main__.py")
        assert "shared.service" in imports and not any(m.startswith("services.cli") for m in imports), package.name


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
        "shared.config",
        "shared.service",
    }
