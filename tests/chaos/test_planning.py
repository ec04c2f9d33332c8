"""The planner SIGKILLed at a random moment while it drafts a plan, and again right after the plan
is approved, restarted after 0-1 s: the plan is proposed once (one approval request), approving
it registers one version and starts one run, whose side effect happens once — a draft cut short
is drafted again (a model call has no side effect), an approval is never lost or applied twice."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import yaml

from tests.fakellm import Threaded, structured

from .harness import SEED, WORKFLOWS, Chaos, trials


def planned(name: str) -> dict[str, Any]:
    """The chaos diamond under another name: what the scripted model proposes."""
    docs = list(yaml.safe_load_all(WORKFLOWS.read_text()))
    diamond = next(d for d in docs if d["kind"] == "Workflow" and d["metadata"]["name"] == "chaos-diamond")
    return {**diamond, "metadata": {"name": name}}


def wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def approved(cli: Any, plan_id: str) -> dict[str, Any] | None:
    shown = json.loads(cli.cli("plans", "show", plan_id, "--json").stdout)
    return shown if shown["run_id"] else None


def ended(cli: Any, run_id: str) -> dict[str, Any] | None:
    run = json.loads(cli.cli("runs", "show", run_id, "--json").stdout or "{}")
    return run if run.get("status") in ("succeeded", "failed") else None


def test_the_planner_sigkilled_while_drafting_and_approving(nats_binary: str, tmp_path: Path) -> None:
    count = trials(6)
    rng = random.Random(f"{SEED}:planner")
    print(f"seed {SEED}: {count} trials killing the planner while it drafts and approves (FLOWYARD_TEST_SEED={SEED})")
    with Threaded(1) as (model,):
        config = (
            f"llm:\n  providers:\n    planning: {{kind: anthropic, base_url: '{model.url}', default_model: m, "
            "max_retries: 0}\nplanner:\n  llm: {provider: planning}\n"
        )
        chaos = Chaos(tmp_path, extra_config=config, FLOWYARD_EXECUTOR_RUNTIME="process").start()
        cli = chaos.stack
        try:
            for trial in range(count):
                name = f"chaos-planned-{trial}"
                markers = tmp_path / f"m-{trial}"
                markers.mkdir()
                model.script[:] = [structured({"workflow": planned(name)}, delay=0.5)]
                at, down, after = rng.uniform(0, 1.0), rng.uniform(0, 1.0), rng.uniform(0, 0.5)
                where = f"trial {trial} (seed {SEED}): killed {at:.2f} s into the draft, down {down:.2f} s"
                asked = cli.cli_background(
                    "plan",
                    "run the diamond",
                    "-i",
                    f"dir={markers}",
                    "--name",
                    name,
                    "--run",
                    "--as",
                    "carol",
                    "--json",
                )
                time.sleep(at)
                chaos.kill("planner")
                time.sleep(down)
                chaos.restart("planner")
                out, err = asked.communicate(timeout=180)
                assert asked.returncode == 0, f"{where}: {err[-2000:]}"
                plan = json.loads(out)
                assert plan["status"] == "proposed", where
                # One approval request, once the approver has stored what the planner sent.
                mine = wait(
                    f"{where}: the plan's approval request",
                    lambda p=plan["id"]: [
                        a["id"] for a in json.loads(cli.cli("approvals", "list", "--json").stdout) if a["run_id"] == p
                    ],
                )
                assert mine == [plan["approval_id"]], where
                done = cli.cli("plans", "approve", plan["id"], "--as", "amy")
                assert done.returncode == 0, f"{where}: {done.stderr}"
                time.sleep(after)
                chaos.kill("planner")
                chaos.restart("planner")

                shown = wait(f"{where}: plan approved with a run", lambda p=plan["id"]: approved(cli, p))
                assert shown["status"] == "approved" and shown["workflow_version"] == 1, where
                run = wait(f"{where}: the plan's run ended", lambda r=shown["run_id"]: ended(cli, r))
                assert run["status"] == "succeeded" and run["plan_id"] == plan["id"], where
                listed = json.loads(cli.cli("runs", "list", "--workflow", name, "--json").stdout)
                assert len(listed) == 1, f"{where}: the plan started {len(listed)} runs"
                for marker in sorted(markers.iterdir()):
                    assert marker.read_text() == "1\n", f"{where}: {marker.name} ran {marker.read_text()!r}"
                head = json.loads(cli.cli("workflows", "list", "--json").stdout)
                assert [w["version"] for w in head if w["name"] == name] == [1], where
        finally:
            chaos.stop()
