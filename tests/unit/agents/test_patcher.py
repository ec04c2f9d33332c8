"""patcher: all of a diff or none of it, with git apply (as in the agent's image)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .loader import agent_module

patcher = agent_module("patcher", "patcher")
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GOOD = """\
--- a/app.txt
+++ b/app.txt
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
--- /dev/null
+++ b/new.txt
@@ -0,0 +1 @@
+hello
"""

HALF_BAD = (
    GOOD
    + """\
--- a/other.txt
+++ b/other.txt
@@ -1 +1 @@
-not what is there
+changed
"""
)


def tree(root: Path) -> Path:
    (root / "app.txt").write_text("one\ntwo\nthree\n")
    (root / "other.txt").write_text("something else\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_applies_and_reports_the_stat(tmp_path: Path) -> None:
    result = patcher.apply(tree(tmp_path), GOOD)
    assert result["applied"] is True and "conflicts" not in result
    assert result["stat"] == {"files": 2, "insertions": 2, "deletions": 1}
    assert {f["path"] for f in result["files"]} == {"app.txt", "new.txt"}
    assert (tmp_path / "app.txt").read_text() == "one\nTWO\nthree\n"
    assert (tmp_path / "new.txt").read_text() == "hello\n"


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    before = snapshot(tree(tmp_path))
    result = patcher.apply(tmp_path, GOOD, dry_run=True)
    assert result["applied"] is False and result["applicable"] is True and result["dry_run"] is True
    assert result["stat"]["files"] == 2
    assert snapshot(tmp_path) == before


def test_a_conflict_anywhere_applies_nothing(tmp_path: Path) -> None:
    before = snapshot(tree(tmp_path))
    result = patcher.apply(tmp_path, HALF_BAD)
    assert result["applied"] is False and result["applicable"] is False
    assert any("other.txt" in c for c in result["conflicts"])
    assert snapshot(tmp_path) == before  # app.txt was patchable, but nothing is half-applied


def test_not_a_diff_is_refused(tmp_path: Path) -> None:
    with pytest.raises(patcher.PatchError, match="not a unified diff"):
        patcher.apply(tree(tmp_path), "please change two to TWO")
    with pytest.raises(patcher.PatchError, match="empty"):
        patcher.apply(tmp_path, "  \n")


def test_a_diff_cannot_reach_outside_the_workspace(tmp_path: Path) -> None:
    inside = tmp_path / "ws"
    inside.mkdir()
    escape = "--- /dev/null\n+++ b/../outside.txt\n@@ -0,0 +1 @@\n+owned\n"
    result = patcher.apply(inside, escape)
    assert result["applied"] is False and "invalid path" in result["conflicts"][0]
    assert not (tmp_path / "outside.txt").exists()


def test_main_fails_on_conflict_but_not_in_a_dry_run(tmp_path: Path, monkeypatch, capsys) -> None:
    import io
    import json

    tree(tmp_path)
    monkeypatch.setenv("FLOWYARD_WORKSPACE", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"patch": HALF_BAD})))
    assert patcher.main() == 1
    assert "nothing was changed" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"patch": HALF_BAD, "dry_run": True})))
    assert patcher.main() == 0
    assert json.loads(capsys.readouterr().out)["conflicts"]


def test_an_image_without_git_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    import io
    import json

    tree(tmp_path)
    monkeypatch.setenv("FLOWYARD_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"patch": GOOD})))
    assert patcher.main() == 1
    assert "git is not in this image" in capsys.readouterr().err


def test_diff_is_another_name_for_patch_and_a_missing_one_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    import io
    import json

    from shared.formats.schemas import first_error
    from shared.workflow.builtin import builtin_agents

    tree(tmp_path)
    monkeypatch.setenv("FLOWYARD_WORKSPACE", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"diff": GOOD})))
    assert patcher.main() == 0
    assert json.loads(capsys.readouterr().out)["stat"]["files"] == 2
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"dry_run": True})))
    assert patcher.main() == 2
    # Caught before the run, by the agent's input schema, naming both accepted fields.
    schema = builtin_agents()["patcher"].spec.inputs
    assert first_error(schema, {"diff": GOOD}) is None and first_error(schema, {"patch": GOOD}) is None
    _, message = first_error(schema, {"dry_run": True})
    assert "'patch' is a required property; or 'diff' is a required property" in message
