"""The built-in agents in their real images, and the workflows that use them, on a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path

import msgspec
import pytest

from services.executor import handlers
from services.executor.runtimes.docker import LABEL, DockerRuntime
from shared.contract.messages import Event, TaskDispatched, TaskFailed, TaskSucceeded
from shared.state import workspace as ws
from shared.workflow.builtin import builtin_agents
from shared.workflow.validate import snapshot
from tests.integration.dockerclean import remove_mine

from ..cli import clean_env, flowyard, flowyard_up
from ..unit.test_executor_workspace import MemoryWorkspaces

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples/sample-repo"
_seq = count()


@pytest.fixture
async def runtime(agent_images: None) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(max_output_bytes=1 << 20, log_tail_bytes=4096)
    yield rt
    await remove_mine(rt)  # this test's containers only
    await rt.close()


def task(agent: str, given: object, version: str | None = None) -> TaskDispatched:
    return TaskDispatched(
        run_id=f"ragents{os.getpid()}x{next(_seq)}",
        workflow="t",
        node_id="n",
        attempt=1,
        agent=snapshot(builtin_agents()[agent]),
        input=given,
        workspace=version,
        timeout_s=60,
    )


async def execute(rt: DockerRuntime, t: TaskDispatched, store: MemoryWorkspaces) -> tuple[handlers.Judgement, Event]:
    sent: list[Event] = []

    async def publish(event: Event, kind: str) -> None:
        sent.append(event)

    verdict = await handlers.execute(
        t, runtime=rt, publish=publish, executor_id="test", log_tail_bytes=4096, workspaces=store
    )
    return verdict, sent[-1]


def with_sample() -> MemoryWorkspaces:
    store = MemoryWorkspaces(max_bytes=8 << 20)
    store.objects["v0"] = ws.pack_dir(SAMPLE, max_bytes=8 << 20)
    return store


async def test_compliance_checker_image(runtime: DockerRuntime) -> None:
    verdict, event = await execute(runtime, task("compliance-checker", {}, "v0"), with_sample())
    assert verdict.ok, verdict.error
    out = verdict.output
    assert out["passed"] is False
    rules = {(v["rule"], v["file"]) for v in out["violations"]}
    assert ("secret-aws-access-key", "app/server.py") in rules
    assert ("header-hsts", "deploy/nginx.conf") in rules
    assert ("license-missing", None) in rules
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(out)
    assert isinstance(event, TaskSucceeded) and event.workspace is None  # ro: nothing kept


async def test_code_reviewer_image(runtime: DockerRuntime) -> None:
    verdict, _ = await execute(runtime, task("code-reviewer", {"max_complexity": 8}, "v0"), with_sample())
    assert verdict.ok, verdict.error
    found = {(i["category"], i["file"], i["line"]) for i in verdict.output["issues"]}
    assert ("sql-injection", "app/server.py", 13) in found
    assert ("dangerous-call", "web/app.js", 4) in found
    assert 0 <= verdict.output["score"] < 100
    assert verdict.output["metrics"]["most_complex"][0]["name"] == "shipping_cost"


PATCH = """\
--- a/app/util.py
+++ b/app/util.py
@@ -1,3 +1,4 @@
 def clamp(value: float, low: float, high: float) -> float:
     \"\"\"Keep value within [low, high].\"\"\"
+    assert low <= high
     return max(low, min(high, value))
"""


async def test_patcher_image_applies_all_or_nothing(runtime: DockerRuntime, tmp_path: Path) -> None:
    store = with_sample()
    dry, event = await execute(runtime, task("patcher", {"patch": PATCH, "dry_run": True}, "v0"), store)
    assert dry.ok and dry.output["applicable"] is True and isinstance(event, TaskSucceeded) and event.workspace is None
    conflicting = PATCH + "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# not the title\n+# x\n"
    bad, event = await execute(runtime, task("patcher", {"patch": conflicting}, "v0"), store)
    assert not bad.ok and isinstance(event, TaskFailed) and "nothing was changed" in bad.error
    good, event = await execute(runtime, task("patcher", {"patch": PATCH}, "v0"), store)
    assert good.ok and good.output["stat"] == {"files": 1, "insertions": 1, "deletions": 0}
    assert isinstance(event, TaskSucceeded) and event.workspace
    ws.unpack_to_dir(store.objects[event.workspace], tmp_path / "out")
    assert "assert low <= high" in (tmp_path / "out/app/util.py").read_text()
    assert (tmp_path / "out/README.md").read_text() == (SAMPLE / "README.md").read_text()


async def test_shell_image_runs_a_command_and_keeps_its_changes(runtime: DockerRuntime, tmp_path: Path) -> None:
    store = with_sample()
    verdict, event = await execute(
        runtime, task("shell", {"command": "id -u; ls app | wc -l; echo done > DONE"}, "v0"), store
    )
    assert verdict.ok, verdict.error
    assert verdict.output == {"stdout": "10001\n2", "exit_code": 0}
    assert isinstance(event, TaskSucceeded) and event.workspace
    ws.unpack_to_dir(store.objects[event.workspace], tmp_path / "out")
    assert (tmp_path / "out/DONE").read_text() == "done\n"
    # ... in another image, given by the input; and a failing command fails the node.
    other, _ = await execute(
        runtime, task("shell", {"command": ["cat", "/etc/debian_version"], "image": "flowyard/base:bookworm"}), store
    )
    assert other.ok and other.output["stdout"].startswith("12")
    failed, _ = await execute(runtime, task("shell", {"command": "echo oops >&2; exit 4"}), store)
    assert not failed.ok and "exited with code 4: oops" in failed.error


async def test_a_read_only_workspace_cannot_be_written(runtime: DockerRuntime) -> None:
    store = with_sample()
    t = task("shell", {"command": "echo x >> README.md"}, "v0")
    lent = msgspec.structs.replace(t, agent=msgspec.structs.replace(t.agent, workspace="ro"))
    verdict, _ = await execute(runtime, lent, store)
    assert not verdict.ok and "Permission denied" in verdict.error


def test_the_main_job_scans_the_sample_repo_in_containers(agent_images: None) -> None:
    done = flowyard(
        "run", "examples/repo-scan.yaml", "--workspace", "examples/sample-repo", "--json", runtime=None, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"]["compliant"] is False
    assert result["outputs"]["violations"]["critical"] >= 3
    assert result["outputs"]["most_complex"]["name"] == "shipping_cost"
    assert any(line.startswith("critical app/server.py:6 ") for line in result["outputs"]["compliance_findings"])
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}.run={result['run_id']}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.split() == [], "the ended run's containers were left behind"


FIX_WORKFLOW = f"""
apiVersion: flowyard/v1
kind: Workflow
metadata: {{name: fix-and-check}}
spec:
  nodes:
    - id: preview
      agent: patcher
      with: {{patch: {json.dumps(PATCH)}, dry_run: true}}
      approval: {{approvers: [alice]}}
    - id: fix
      agent: patcher
      needs: [preview]
      with: {{patch: {json.dumps(PATCH)}}}
      approval: {{approvers: [alice]}}
    - id: check
      agent: code-reviewer
      needs: [fix]
  outputs:
    changed: "{{{{ nodes.fix.output.stat.files }}}}"
"""


def test_approve_a_patch_then_take_the_workspace_and_logs(agent_images: None, tmp_path: Path) -> None:
    """A stack, a patch that needs approval, the patched workspace out, and the agents' logs."""
    wf = tmp_path / "fix.yaml"
    wf.write_text(FIX_WORKFLOW)
    with flowyard_up(tmp_path / "data", runtime="docker") as env:
        run = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", str(wf), "--workspace", str(SAMPLE), "--json", "--as", "bob"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(env),
        )
        for node in ("preview", "fix"):
            deadline = time.monotonic() + 60
            while True:
                listed = flowyard("approvals", "list", "--pending", "--json", env=env)
                pending = [a for a in json.loads(listed.stdout or "[]") if a.get("node") == node]
                if pending:
                    break
                assert time.monotonic() < deadline, f"no approval request for {node}: {listed.stderr}"
                time.sleep(0.3)
            approved = flowyard("approvals", "approve", pending[0]["id"], "--as", "alice", env=env)
            assert approved.returncode == 0, approved.stderr
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err
        result = json.loads(out)
        assert result["outputs"] == {"changed": 1}
        assert result["workspace"]["version"] == 1  # the dry run changed nothing; the fix did
        run_id = result["run_id"]
        saved = flowyard("runs", "workspace", run_id, "--out", str(tmp_path / "final"), env=env)
        assert saved.returncode == 0, saved.stderr
        assert "assert low <= high" in (tmp_path / "final/app/util.py").read_text()
        logs = flowyard("logs", run_id, env=env)
        assert logs.returncode == 0
        assert "[preview attempt 1] dry run: the patch applies cleanly" in logs.stdout
        assert "[fix attempt 1] applied: 1 file(s), +1 -0" in logs.stdout
        only = flowyard("logs", run_id, "--node", "check", "--json", env=env)
        rows = [json.loads(line) for line in only.stdout.splitlines()]
        assert rows and all(r["node"] == "check" for r in rows)
        again = flowyard("runs", "workspace", run_id, "--out", str(tmp_path / "final"), env=env)
        assert again.returncode == 2 and "not an empty folder" in again.stderr


def test_the_fleet_example_runs_as_the_readme_lists_it_on_docker(base_image: str) -> None:
    """`flowyard run examples/fleet-check.yaml` on the default runtime (Docker), as its header says."""
    done = flowyard("run", "examples/fleet-check.yaml", "--json", runtime=None, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["outputs"]["checked"] == 5
    assert result["nodes"]["check"]["items"][2]["attempts"] == 2  # the flaky host, retried in a container


def test_agents_the_executors_cannot_run_are_refused_before_the_run_starts(base_image: str, tmp_path: Path) -> None:
    doc = tmp_path / "commands.yaml"
    doc.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: bare-command}\nspec:\n  command: [cat]\n---\n"
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: bare}\nspec:\n"
        "  nodes: [{id: a, agent: bare-command, with: {x: 1}}]\n"
    )
    done = flowyard("run", str(doc), "--runtime", "docker", runtime=None, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'bare-command' have no `image`" in done.stderr and "--runtime process" in done.stderr
    assert flowyard("run", str(doc), "--runtime", "process").returncode == 0


def test_the_incident_digest_example_runs_as_its_header_says_on_docker(base_image: str) -> None:
    """Every example the README names runs on the default runtime as written (the others: the
    main job, repo-fix, fleet-check above; the alert example in tests/e2e/test_alert_example.py)."""
    done = flowyard(
        "run",
        "examples/incident-digest.yaml",
        "-i",
        "service=payments",
        "-i",
        "threshold_ms=200",
        "--json",
        runtime=None,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"


async def test_security_scanner_image_runs_bandit_and_shellcheck_offline(runtime: DockerRuntime) -> None:
    store = with_sample()
    verdict, _ = await execute(runtime, task("security-scanner", {"fail_on": "warning"}, "v0"), store)
    assert verdict.ok, verdict.error
    out = verdict.output
    assert out["skipped"] == [] and out["passed"] is False
    rules = {(f["rule"], f["file"]) for f in out["findings"]}
    assert ("aws-access-key", "app/server.py") in rules
    assert ("bandit:B602", "app/server.py") in rules  # shell=True, from bandit itself
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(out)
    # shellcheck in the image too: a script of the run's own.
    import tempfile

    scripts = MemoryWorkspaces(max_bytes=8 << 20)
    with tempfile.TemporaryDirectory() as tmp:  # the sample repo has no shell script: give it one
        Path(tmp, "deploy.sh").write_text("#!/bin/sh\nrm -rf $TARGET/*\n")
        scripts.objects["v0"] = ws.pack_dir(Path(tmp), max_bytes=8 << 20)
    verdict, _ = await execute(runtime, task("security-scanner", {"checks": ["shell"]}, "v0"), scripts)
    assert verdict.ok, verdict.error
    assert {f["rule"] for f in verdict.output["findings"]} >= {"SC2115", "SC2086"}
