"""patcher: applies a unified diff to the workspace, all of it or none of it.

Input: ``patch`` (a unified diff, as ``git diff`` or ``diff -u`` writes it; ``diff`` is taken
as another name for it), ``strip`` (leading
path components to remove, like ``patch -p``; default 1), ``dry_run``. The diff is checked in
full before anything is written (``git apply --check``) and then applied in one step, so a
conflict leaves every file as it was. Output: ``applied``, ``dry_run``, ``applicable``, ``files``
(path, added, removed), ``stat`` (files, insertions, deletions) and, when it does not apply,
``conflicts``.
A conflict fails the attempt unless it is a dry run, whose job is to say so. Standard library
(and the git binary of the base image) only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

MAX_PATCH = 4 * 1024 * 1024


class PatchError(Exception):
    pass


def _git(root: Path, *args: str, patch: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("TMPDIR", "/tmp"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "LANG": "C.UTF-8",
    }
    # --unsafe-paths stays off: a diff may not reach outside the workspace.
    return subprocess.run(
        ["git", "-c", f"safe.directory={root}", "apply", *args],
        input=patch,
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
    )


def numstat(root: Path, patch: str, strip: int) -> list[dict[str, Any]]:
    done = _git(root, "--numstat", f"-p{strip}", "-", patch=patch)
    if done.returncode != 0:
        raise PatchError(done.stderr.strip() or "git apply could not read the diff")
    files = []
    for line in done.stdout.splitlines():
        added, removed, path = line.split("\t", 2)
        files.append(
            {
                "path": path,
                "added": int(added) if added.isdigit() else 0,
                "removed": int(removed) if removed.isdigit() else 0,
                "binary": added == "-",
            }
        )
    return files


def conflicts(stderr: str) -> list[str]:
    """git's complaints, one per failing file or hunk, without its noise."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return [ln.removeprefix("error: ") for ln in lines if ln.startswith("error:")] or lines


def apply(root: Path, patch: str, *, strip: int = 1, dry_run: bool = False) -> dict[str, Any]:
    if not patch.strip():
        raise PatchError("the patch is empty")
    if len(patch.encode()) > MAX_PATCH:
        raise PatchError(f"the patch is larger than {MAX_PATCH // (1024 * 1024)} MiB")
    if not re.search(r"(?m)^(---|\+\+\+|diff --git) ", patch):
        raise PatchError("this is not a unified diff (no ---/+++ file headers); make it with `git diff` or `diff -u`")
    if not patch.endswith("\n"):
        patch += "\n"
    files = numstat(root, patch, strip)
    stat = {
        "files": len(files),
        "insertions": sum(f["added"] for f in files),
        "deletions": sum(f["removed"] for f in files),
    }
    check = _git(root, "--check", f"-p{strip}", "-", patch=patch)
    result: dict[str, Any] = {"applied": False, "dry_run": dry_run, "applicable": True, "files": files, "stat": stat}
    if check.returncode != 0:
        result["conflicts"] = conflicts(check.stderr)
        result["applicable"] = False
        return result
    if dry_run:
        return result
    done = _git(root, f"-p{strip}", "-", patch=patch)
    if done.returncode != 0:  # checked a moment ago; git apply is atomic either way
        result["conflicts"] = conflicts(done.stderr)
        result["applicable"] = False
        return result
    result["applied"] = True
    return result


def main() -> int:
    try:
        params = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        print(f"input is not JSON: {exc}", file=sys.stderr)
        return 2
    patch = params.get("patch", params.get("diff")) if isinstance(params, dict) else None
    if not isinstance(patch, str):
        print("input must be a JSON object with `patch` (or `diff`): a unified diff", file=sys.stderr)
        return 2
    root = Path(os.environ.get("FLOWYARD_WORKSPACE", "/workspace"))
    dry_run = bool(params.get("dry_run", False))
    strip = int(params.get("strip", 1))
    try:
        result = apply(root, patch, strip=strip, dry_run=dry_run)
    except PatchError as exc:
        print(f"cannot apply the patch: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired:
        print("cannot apply the patch: git apply took longer than two minutes", file=sys.stderr)
        return 1
    except FileNotFoundError:
        print("cannot apply the patch: git is not in this image (build it on a base with git)", file=sys.stderr)
        return 1
    stat = result["stat"]
    summary = f"{stat['files']} file(s), +{stat['insertions']} -{stat['deletions']}"
    if result.get("conflicts"):
        for line in result["conflicts"]:
            print(f"conflict: {line}", file=sys.stderr)
        if not dry_run:
            print(f"the patch does not apply ({summary}); nothing was changed", file=sys.stderr)
            return 1
        print(f"dry run: the patch would not apply ({summary})", file=sys.stderr)
    elif dry_run:
        print(f"dry run: the patch applies cleanly ({summary}); nothing was changed", file=sys.stderr)
    else:
        print(f"applied: {summary}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
