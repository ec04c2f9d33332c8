"""The committed web UI (services/gateway/ui) is what its source (ui/) builds: rebuilt here from
the lock file with npm, compared file by file — like proto/, a stale build fails the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "services" / "gateway" / "ui"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_committed_build_is_what_the_source_builds(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("FLOWYARD_REQUIRE_SERVERS"):
            pytest.fail("npm (Node.js) is needed to rebuild the web UI; .ci/run has it")
        pytest.skip("npm is not installed")
    source = tmp_path / "ui"
    shutil.copytree(ROOT / "ui", source, ignore=shutil.ignore_patterns("node_modules"))
    for step in (
        [npm, "ci", "--no-audit", "--no-fund"],
        [npm, "exec", "--", "tsc", "--noEmit"],
        [npm, "exec", "--", "vite", "build", "--outDir", str(tmp_path / "out"), "--emptyOutDir"],
    ):
        done = subprocess.run(step, cwd=source, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(step[1:])}:\n{done.stdout}\n{done.stderr}"
    fresh, committed = _files(tmp_path / "out"), _files(BUILT)
    assert set(fresh) == set(committed), "the committed UI build lists other files: run `cd ui && npm run build`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale UI build ({', '.join(stale)}): run `cd ui && npm run build` and commit"
