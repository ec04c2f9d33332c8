"""The executor SIGKILLed at a uniformly random moment of an LLM attempt (the llm agent, process
runtime) and of a coding-CLI attempt (Claude Code, Codex, each in its container), restarted after 0-2 s: the
run ends right, and the provider saw each call exactly once — the attempt was adopted, or had
not started and ran once; never a second call whose result is recorded twice."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tests.fakellm import Threaded, answer, calls, docker_bridge_address, structured

from .harness import SEED, Chaos, trials

CHAIN = """\
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: chaos-llm}
spec:
  nodes:
    - {id: one, agent: llm, with: {prompt: "first", schema: {type: object, required: [n], properties: {n: {type: integer}}}}}
    - {id: two, agent: llm, needs: [one], with: {prompt: "second {{ nodes.one.output.json.n }}"}}
    - {id: three, agent: llm, needs: [two], with: {prompt: "third {{ nodes.two.output.text }}"}}
  outputs: {n: "{{ nodes.one.output.json.n }}", last: "{{ nodes.three.output.text }}"}
"""


def provider(url: str) -> str:
    return (
        "llm:\n  providers:\n"
        f"    fake: {{kind: anthropic, base_url: '{url}', api_key_secret: FAKE_KEY, default_model: m, max_retries: 0}}\n"
        "agents:\n  priorities: {code_fixes: [claude-code]}\n"
    )


def test_executor_sigkilled_during_llm_attempts(nats_binary: str, tmp_path: Path) -> None:
    count = trials(8)
    rng = random.Random(f"{SEED}:executor-llm")
    print(f"seed {SEED}: {count} trials killing the executor during llm steps (FLOWYARD_TEST_SEED={SEED} replays)")
    workflow = tmp_path / "llm.yaml"
    workflow.write_text(CHAIN)
    with Threaded(1) as (fake,):
        chaos = Chaos(
            tmp_path,
            extra_config=provider(fake.url),
            FLOWYARD_EXECUTOR_RUNTIME="process",
            FLOWYARD_SECRET_FAKE_KEY="sk-chaos-1",
        ).start()
        try:
            for trial in range(count):
                # Each call answers after 0.4 s: three calls and three agent starts, ~2 s in all.
                fake.script[:] = [structured({"n": 7}, delay=0.4), answer("two", delay=0.4), answer("three", delay=0.4)]
                fake.seen.clear()
                at, down = rng.uniform(0, 2.0), rng.uniform(0, 2)
                where = f"trial {trial} (seed {SEED}): killed {at:.2f} s into the run, down {down:.2f} s"
                run = chaos.stack.cli_background("run", str(workflow), "--json")
                time.sleep(at)
                chaos.kill("executor")
                time.sleep(down)
                chaos.restart("executor")
                out, err = run.communicate(timeout=180)
                result = json.loads(out) if out.strip() else {}
                assert result.get("status") == "succeeded", f"{where}: {err[-2000:]} {out[-2000:]}"
                assert result["outputs"] == {"n": 7, "last": "three"}, where
                prompts = [s.body["messages"][0]["content"] for s in fake.seen]
                assert prompts == ["first", "second 7", "third two"], f"{where}: the provider saw {prompts}"
                assert all(n["attempts"] == 1 for n in result["nodes"].values()), where
                assert result["usage"]["input_tokens"] == 3 * 12, where  # each call counted once
        finally:
            chaos.stop()


def codex_provider(url: str) -> str:
    return (
        "llm:\n  providers:\n"
        f"    fake: {{kind: openai, base_url: '{url}/v1', api_key_secret: FAKE_KEY, default_model: m, max_retries: 0}}\n"
        "agents:\n  priorities: {code_fixes: [codex]}\n"
    )


def opencode_provider(url: str) -> str:
    return (
        "llm:\n  providers:\n"
        f"    fake: {{kind: openai-compatible, base_url: '{url}/v1', api_key_secret: FAKE_KEY, default_model: m}}\n"
        "agents:\n  priorities: {code_fixes: [opencode]}\n"
    )


def gemini_provider(url: str) -> str:
    return (
        "llm:\n  providers:\n"
        f"    fake: {{kind: gemini, base_url: '{url}', api_key_secret: FAKE_KEY, default_model: m}}\n"
        "agents:\n  priorities: {code_fixes: [gemini-cli]}\n"
    )


# Each CLI's scripted fix: its own tool for the edit, then its final answer.
_CLI_FIXES = {
    "claude-code": (
        provider,
        lambda: calls(
            ("Edit", {"file_path": "/workspace/ratelimit.py", "old_string": "> 1:", "new_string": ">= 1:"}), delay=0.5
        ),
    ),
    "codex": (
        codex_provider,
        lambda: calls(("exec_command", {"cmd": "sed -i 's/> 1:/>= 1:/' ratelimit.py"}), delay=0.5),
    ),
    "gemini-cli": (
        gemini_provider,
        lambda: calls(("run_shell_command", {"command": "sed -i 's/> 1:/>= 1:/' ratelimit.py"}), delay=0.5),
    ),
    "opencode": (
        opencode_provider,
        lambda: calls(("bash", {"command": "sed -i 's/> 1:/>= 1:/' ratelimit.py", "description": "fix"}), delay=0.5),
    ),
}


@pytest.mark.docker
@pytest.mark.parametrize("cli", sorted(_CLI_FIXES))
def test_executor_sigkilled_during_a_cli_attempt(
    cli: str, agent_images: None, nats_binary: str, tmp_path: Path
) -> None:
    count = trials(5)
    rng = random.Random(f"{SEED}:executor-cli" if cli == "claude-code" else f"{SEED}:executor-{cli}")
    print(f"seed {SEED}: {count} trials killing the executor during {cli} (FLOWYARD_TEST_SEED={SEED} replays)")
    configure, edit = _CLI_FIXES[cli]
    workflow = tmp_path / "cli.yaml"
    workflow.write_text(
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: chaos-cli}\nspec:\n  nodes:\n"
        "    - {id: fix, capability: code_fixes, with: {prompt: 'fix the limiter', max_turns: 4}}\n"
    )
    sample = Path(__file__).resolve().parents[2] / "examples/sample-repo"
    with Threaded(1, host=docker_bridge_address()) as (fake,):
        chaos = Chaos(
            tmp_path,
            extra_config=configure(fake.url),
            FLOWYARD_EXECUTOR_RUNTIME="docker",
            FLOWYARD_SECRET_FAKE_KEY="sk-chaos-1",
        ).start()
        try:
            for trial in range(count):
                fake.script[:] = [edit(), answer("fixed", delay=0.5)]
                fake.seen.clear()
                at, down = rng.uniform(0, 3.0), rng.uniform(0, 2)
                where = f"{cli} trial {trial} (seed {SEED}): killed {at:.2f} s into the run, down {down:.2f} s"
                run = chaos.stack.cli_background("run", str(workflow), "--json", "--workspace", str(sample))
                time.sleep(at)
                chaos.kill("executor")
                time.sleep(down)
                chaos.restart("executor")
                out, err = run.communicate(timeout=240)
                result = json.loads(out) if out.strip() else {}
                assert result.get("status") == "succeeded", f"{where}: {err[-2000:]} {out[-2000:]}"
                fix = result["nodes"]["fix"]
                assert fix["agent"] == cli, where
                assert fix["attempts"] == 1 and fix["output"]["changed_files"] == ["ratelimit.py"], where
                assert result["workspace"]["version"] == 1, where  # the change kept once
                ends = ("/messages", "/responses", "/chat/completions", ":streamGenerateContent")
                model_calls = [s for s in fake.seen if s.path.endswith(ends)]
                assert len(model_calls) == 2, f"{where}: the provider saw {len(model_calls)} calls, not 2"
        finally:
            chaos.stop()
