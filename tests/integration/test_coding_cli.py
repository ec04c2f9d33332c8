"""The real Claude Code CLI in its image (npm package fetched at build time) against the fake
provider on the Docker bridge: it makes a failing test pass through scripted tool calls, and
the change is the run's next workspace version; out of turns, it fails saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakellm import FakeProvider, Threaded, answer, calls, docker_bridge_address, error

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-cli-test-3e4f5a6b7c"
WORKFLOW = """\
apiVersion: flowyard/v1
kind: Agent
metadata: {name: unit-tests}
spec:
  image: flowyard/base:bookworm
  command: [python3, -m, unittest, -q]
  workspace: ro
  stdout: text
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: cli-fix}
spec:
  inputs: {max_turns: {type: integer, default: 5}}
  nodes:
    - id: fix
      capability: code_fixes
      with: {prompt: "Make the failing tests in test_ratelimit.py pass.", max_turns: "{{ inputs.max_turns }}"}
    - {id: test, agent: unit-tests, needs: [fix]}
"""


@pytest.fixture(scope="module")
def fake(agent_images: None) -> Iterator[FakeProvider]:
    """Served on the bridge's gateway address: this machine, reachable from the containers."""
    with Threaded(1, host=docker_bridge_address()) as (started,):
        yield started


def claude_config(fake: FakeProvider) -> str:
    return (
        f"    anthropic: {{kind: anthropic, base_url: '{fake.url}', api_key_secret: ANTHROPIC_KEY, "
        "default_model: claude-test, prices: {claude-test: {input: 3.0, output: 15.0}}}\n"
        "agents:\n  priorities: {code_fixes: [claude-code]}\n"
    )


def run(
    fake: FakeProvider, tmp_path: Path, *args: str, provider: str = "", secret: tuple[str, str] = ("ANTHROPIC_KEY", KEY)
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`flowyard run` of the workflow on the sample repo, the provider (default: Claude) in its config."""
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "flowyard.yaml").write_text("llm:\n  providers:\n" + (provider or claude_config(fake)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env |= {"FLOWYARD_CONFIG": str(tmp_path / "flowyard.yaml"), f"FLOWYARD_SECRET_{secret[0]}": secret[1]}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "run",
            str(tmp_path / "wf.yaml"),
            "--runtime",
            "docker",
            "--json",
            "--workspace",
            str(ROOT / "examples/sample-repo"),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, (json.loads(done.stdout) if done.stdout.strip() else {})


def test_claude_code_makes_the_failing_test_pass(fake: FakeProvider, tmp_path: Path) -> None:
    fake.script[:] = [
        calls(
            (
                "Edit",
                {
                    "file_path": "/workspace/ratelimit.py",
                    "old_string": "if self.tokens > 1:",
                    "new_string": "if self.tokens >= 1:",
                },
            ),
            input_tokens=900,
            output_tokens=40,
        ),
        answer(
            "Fixed the off-by-one in TokenBucket.allow: a bucket with one token left now allows.",
            input_tokens=1000,
            output_tokens=25,
        ),
    ]
    fake.seen.clear()
    out = tmp_path / "out"
    done, result = run(fake, tmp_path, "--workspace-out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fix = result["nodes"]["fix"]
    assert fix["agent"] == "claude-code" and fix["routing"] == [
        {"agent": "claude-code", "outcome": "chosen", "reason": ""}
    ]
    output = fix["output"]
    assert output["changed_files"] == ["ratelimit.py"]
    assert output["result"].startswith("Fixed the off-by-one")
    assert output["turns"] == 2 and output["session_id"]
    assert output["usage"] == {"input_tokens": 1900, "output_tokens": 65}
    assert output["cost_usd"] == pytest.approx((1900 * 3 + 65 * 15) / 1e6)
    assert result["nodes"]["test"]["status"] == "succeeded"  # the tests pass on the new version
    assert result["workspace"]["version"] == 1
    assert "if self.tokens >= 1:" in (out / "ratelimit.py").read_text()
    assert len(fake.seen) == 2 and all(s.headers["x-api-key"] == KEY for s in fake.seen)
    assert KEY not in done.stdout and KEY not in done.stderr


def test_out_of_turns_fails_saying_so(fake: FakeProvider, tmp_path: Path) -> None:
    looping = calls(("Read", {"file_path": "/workspace/ratelimit.py"}))
    fake.script[:] = [looping]  # it never stops calling tools
    done, result = run(fake, tmp_path, "-i", "max_turns=1")
    assert done.returncode == 1
    error = result["nodes"]["fix"]["error"]
    assert "max_turns: ran out of turns (max_turns 1) before it finished" in error, error
    assert result["nodes"]["test"]["status"] == "skipped"


# --- Codex -------------------------------------------------------------------------------------

OPENAI_KEY = "sk-codex-test-9d8c7b6a5f"


def run_codex(fake: FakeProvider, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    provider = (
        f"    openai: {{kind: openai, base_url: '{fake.url}/v1', api_key_secret: OPENAI_KEY, "
        "default_model: gpt-test, prices: {gpt-test: {input: 1.25, output: 10.0}}}\n"
        "agents:\n  priorities: {code_fixes: [codex]}\n"
    )
    return run(fake, tmp_path, *args, provider=provider, secret=("OPENAI_KEY", OPENAI_KEY))


def test_codex_makes_the_failing_test_pass(fake: FakeProvider, tmp_path: Path) -> None:
    sed = "sed -i 's/if self.tokens > 1:/if self.tokens >= 1:/' ratelimit.py"
    fake.script[:] = [
        calls(("exec_command", {"cmd": sed}), input_tokens=800, output_tokens=30),
        answer("Fixed the off-by-one in TokenBucket.allow.", input_tokens=900, output_tokens=20),
    ]
    fake.seen.clear()
    out = tmp_path / "out"
    done, result = run_codex(fake, tmp_path, "--workspace-out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fix = result["nodes"]["fix"]
    assert fix["agent"] == "codex"
    output = fix["output"]
    assert output["changed_files"] == ["ratelimit.py"]
    assert output["result"] == "Fixed the off-by-one in TokenBucket.allow."
    assert output["turns"] == 1 and output["session_id"]
    assert output["usage"] == {"input_tokens": 1700, "output_tokens": 50}
    assert output["cost_usd"] == pytest.approx((1700 * 1.25 + 50 * 10.0) / 1e6)
    assert result["nodes"]["test"]["status"] == "succeeded"
    assert "if self.tokens >= 1:" in (out / "ratelimit.py").read_text()
    responses = [s for s in fake.seen if s.path.endswith("/responses")]
    assert len(responses) == 2 and all(s.headers["Authorization"] == f"Bearer {OPENAI_KEY}" for s in responses)
    assert OPENAI_KEY not in done.stdout and OPENAI_KEY not in done.stderr


def test_codex_out_of_turns_fails_saying_so(fake: FakeProvider, tmp_path: Path) -> None:
    fake.script[:] = [calls(("exec_command", {"cmd": "cat ratelimit.py"}))]  # it never stops
    done, result = run_codex(fake, tmp_path, "-i", "max_turns=1")
    assert done.returncode == 1
    error = result["nodes"]["fix"]["error"]
    assert "max_turns: ran out of turns (max_turns 1) before it finished" in error, error


# --- OpenCode: the same task, its provider an OpenAI-compatible server (Chat Completions) ---------

COMPAT_KEY = "sk-compat-test-1a2b3c4d5e"


def run_opencode(fake: FakeProvider, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    provider = (
        f"    local: {{kind: openai-compatible, base_url: '{fake.url}/v1', api_key_secret: COMPAT_KEY, "
        "default_model: qwen-test, prices: {qwen-test: {input: 0.5, output: 1.5}}}\n"
        "agents:\n  priorities: {code_fixes: [opencode]}\n"
    )
    return run(fake, tmp_path, *args, provider=provider, secret=("COMPAT_KEY", COMPAT_KEY))


def test_opencode_makes_the_failing_test_pass(fake: FakeProvider, tmp_path: Path) -> None:
    sed = "sed -i 's/if self.tokens > 1:/if self.tokens >= 1:/' ratelimit.py"
    fake.script[:] = [
        calls(("bash", {"command": sed, "description": "fix the comparison"}), input_tokens=600, output_tokens=40),
        answer("Fixed the off-by-one in TokenBucket.allow.", input_tokens=700, output_tokens=10),
    ]
    fake.seen.clear()
    out = tmp_path / "out"
    done, result = run_opencode(fake, tmp_path, "--workspace-out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fix = result["nodes"]["fix"]
    assert fix["agent"] == "opencode"
    output = fix["output"]
    assert output["changed_files"] == ["ratelimit.py"]
    assert output["result"] == "Fixed the off-by-one in TokenBucket.allow."
    assert output["turns"] == 2 and output["session_id"].startswith("ses_")
    assert output["usage"] == {"input_tokens": 1300, "output_tokens": 50}
    assert output["cost_usd"] == pytest.approx((1300 * 0.5 + 50 * 1.5) / 1e6)
    assert result["nodes"]["test"]["status"] == "succeeded"
    assert "if self.tokens >= 1:" in (out / "ratelimit.py").read_text()
    chats = [s for s in fake.seen if s.path.endswith("/chat/completions")]
    # Every model call is the agent's (no title call), each with the key it was given.
    assert len(chats) == 2 and all(s.headers["Authorization"] == f"Bearer {COMPAT_KEY}" for s in chats)
    assert COMPAT_KEY not in done.stdout and COMPAT_KEY not in done.stderr


def test_opencode_out_of_turns_fails_saying_so(fake: FakeProvider, tmp_path: Path) -> None:
    fake.script[:] = [calls(("bash", {"command": "cat ratelimit.py", "description": "look"}))]  # never stops
    done, result = run_opencode(fake, tmp_path, "-i", "max_turns=1")
    assert done.returncode == 1
    error = result["nodes"]["fix"]["error"]
    assert "max_turns: ran out of turns (max_turns 1) before it finished" in error, error


def test_opencode_against_a_failing_provider_gives_up_as_routable(fake: FakeProvider, tmp_path: Path) -> None:
    """OpenCode retries a 500 for about 70 s before it says so; its error log is watched and the
    second retried failure ends the attempt with a routable reason instead."""
    fake.script[:] = [error(500)] * 6
    fake.seen.clear()
    done, result = run_opencode(fake, tmp_path)
    assert done.returncode == 1, done.stderr
    node = result["nodes"]["fix"]
    assert "opencode failed (provider_unavailable: " in node["error"], node["error"]
    assert "opencode's calls to the provider kept failing (AI_APICallError: scripted 500)" in node["error"]
    assert [step["outcome"] for step in node["routing"]] == ["failed"]
    assert len(fake.seen) == 2  # stopped at the second failure, not after its whole back-off


# --- Gemini CLI: the same task against the fake's Gemini API -------------------------------------

GEMINI_KEY = "gm-test-5f6e7d8c9b"


def run_gemini(fake: FakeProvider, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    provider = (
        f"    google: {{kind: gemini, base_url: '{fake.url}', api_key_secret: GEMINI_KEY, "
        "default_model: gemini-test, prices: {gemini-test: {input: 0.3, output: 2.5}}}\n"
        "agents:\n  priorities: {code_fixes: [gemini-cli]}\n"
    )
    return run(fake, tmp_path, *args, provider=provider, secret=("GEMINI_KEY", GEMINI_KEY))


def test_gemini_cli_makes_the_failing_test_pass(fake: FakeProvider, tmp_path: Path) -> None:
    sed = "sed -i 's/if self.tokens > 1:/if self.tokens >= 1:/' ratelimit.py"
    fake.script[:] = [
        calls(("run_shell_command", {"command": sed, "description": "fix it"}), input_tokens=500, output_tokens=30),
        answer("Fixed the off-by-one in TokenBucket.allow.", input_tokens=650, output_tokens=15),
    ]
    fake.seen.clear()
    out = tmp_path / "out"
    done, result = run_gemini(fake, tmp_path, "--workspace-out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fix = result["nodes"]["fix"]
    assert fix["agent"] == "gemini-cli"
    output = fix["output"]
    assert output["changed_files"] == ["ratelimit.py"]
    assert output["result"] == "Fixed the off-by-one in TokenBucket.allow."
    assert output["turns"] == 1 and output["session_id"]
    assert output["usage"] == {"input_tokens": 1150, "output_tokens": 45}
    assert output["cost_usd"] == pytest.approx((1150 * 0.3 + 45 * 2.5) / 1e6, abs=1e-6)  # kept to 6 places
    assert result["nodes"]["test"]["status"] == "succeeded"
    assert "if self.tokens >= 1:" in (out / "ratelimit.py").read_text()
    calls_made = [s for s in fake.seen if "GenerateContent" in s.path or "generateContent" in s.path]
    assert len(calls_made) == 2 and all(s.headers.get("x-goog-api-key") == GEMINI_KEY for s in calls_made)
    assert GEMINI_KEY not in done.stdout and GEMINI_KEY not in done.stderr


def test_gemini_cli_out_of_turns_fails_saying_so(fake: FakeProvider, tmp_path: Path) -> None:
    fake.script[:] = [calls(("run_shell_command", {"command": "cat ratelimit.py", "description": "look"}))]
    done, result = run_gemini(fake, tmp_path, "-i", "max_turns=1")
    assert done.returncode == 1
    error = result["nodes"]["fix"]["error"]
    assert "max_turns: ran out of turns (max_turns 1) before it finished" in error, error
