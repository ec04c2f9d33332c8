"""examples/alert-triage-fix.yaml exactly as its header says, against the fake provider on the
Docker bridge: the llm agent triages with a schema, the real Claude Code fixes the sample repo,
a person approves the diff, the patcher applies it and the tests pass."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakellm import Threaded, answer, calls, docker_bridge_address, structured

from ..cli import ROOT, clean_env, flowyard, flowyard_up

pytestmark = pytest.mark.docker
KEY = "sk-ant-example-9d8c7b6a5f"
ALERT = "RateLimiterRejectsLastToken: 429s from checkout at full burst"


def test_alert_triage_fix_end_to_end(agent_images: None, tmp_path: Path) -> None:
    with Threaded(1, host=docker_bridge_address()) as (fake,):
        fake.then(
            structured({"severity": "high", "component": "ratelimit.py", "change": "allow the last token"}),
            calls(
                (
                    "Edit",
                    {
                        "file_path": "/workspace/ratelimit.py",
                        "old_string": "if self.tokens > 1:",
                        "new_string": "if self.tokens >= 1:",
                    },
                )
            ),
            answer("TokenBucket.allow now spends the last token."),
        )
        config = tmp_path / "flowyard.yaml"
        config.write_text(
            "llm:\n  providers:\n"
            f"    anthropic: {{kind: anthropic, base_url: '{fake.url}', api_key_secret: ANTHROPIC_KEY, "
            "default_model: claude-test}\n"
            "agents:\n  priorities: {code_fixes: [claude-code]}\n"
        )
        settings = {"FLOWYARD_CONFIG": str(config), "FLOWYARD_SECRET_ANTHROPIC_KEY": KEY}
        with flowyard_up(tmp_path / "data", runtime="docker", env=settings) as env:
            out = tmp_path / "fixed"
            run = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", "examples/alert-triage-fix.yaml",
                 "--workspace", "examples/sample-repo", "-i", f"alert={ALERT}", "--workspace-out", str(out), "--json"],
                cwd=ROOT, env=clean_env({**env, "FLOWYARD_CONFIG": str(config)}), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 240
            pending: list[dict] = []
            while not pending:
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "no approval was asked for"
                listed = flowyard("approvals", "list", "--pending", "--json", env=env, runtime=None)
                pending = json.loads(listed.stdout or "[]")
                time.sleep(0.2)
            request = pending[0]
            assert request["node"] == "apply" and request["agent"] == "patcher"
            patch = request["inputs"]["patch"]
            assert "-        if self.tokens > 1:" in patch and "+        if self.tokens >= 1:" in patch
            decided = flowyard("approvals", "approve", request["id"], "--as", "alice", env=env, runtime=None)
            assert decided.returncode == 0, decided.stderr
            stdout, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
        result = json.loads(stdout)
        assert result["outputs"]["severity"] == "high"
        assert result["outputs"]["changed_files"] == ["ratelimit.py"]
        assert result["outputs"]["summary"] == "TokenBucket.allow now spends the last token."
        assert result["nodes"]["test"]["status"] == "succeeded"
        assert "if self.tokens >= 1:" in (out / "ratelimit.py").read_text()
        assert result["usage"]["input_tokens"] > 0
        assert KEY not in stdout and KEY not in stderr
