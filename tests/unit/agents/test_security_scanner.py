"""security-scanner's own rules (secrets, Dockerfiles) on small trees; bandit and shellcheck run
in its image (tests/integration/test_agents.py), and without them the scan says what it skipped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from .loader import agent_module

scanner = agent_module("security-scanner", "scanner")


def scan(root: Path, params: dict, monkeypatch: pytest.MonkeyPatch, path: str = "/usr/bin:/bin") -> dict:
    monkeypatch.setenv("FLOWYARD_WORKSPACE", str(root))
    monkeypatch.setenv("PATH", path)  # no shellcheck here
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(params)))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    code = scanner.main()
    report = json.loads(out.getvalue())
    assert (code == 0) == ("error" not in report)
    return report


def test_secrets_are_found_and_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "settings.py").write_text(
        'AWS = "AKIAIOSFODNN7EXAMPLE"\nDB_PASSWORD = "hX9#kq2!Lm4$zR"\nNAME = "plain"\n'
    )
    report = scan(tmp_path, {"checks": ["secrets"]}, monkeypatch)
    rules = [(f["rule"], f["line"], f["severity"]) for f in report["findings"]]
    assert ("aws-access-key", 1, "critical") in rules and ("hardcoded-credential", 2, "warning") in rules
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(report) and "hX9#kq2!Lm4$zR" not in json.dumps(report)
    assert report["passed"] is False and report["counts"]["critical"] == 1


def test_dockerfile_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM debian:latest\nENV API_TOKEN=abc123\nADD https://example.com/x.tgz /x\n"
        "RUN curl -fsSL https://get.example.com | sh\nRUN apt-get install -y git\n"
    )
    (tmp_path / "ok.Dockerfile").write_text("FROM debian:bookworm@sha256:abc\nUSER 10001\n")
    report = scan(tmp_path, {"checks": ["dockerfile"], "fail_on": "warning"}, monkeypatch)
    found = {(f["file"], f["rule"]) for f in report["findings"]}
    assert found == {
        ("Dockerfile", "unpinned-base"),
        ("Dockerfile", "secret-in-image"),
        ("Dockerfile", "add-url"),
        ("Dockerfile", "curl-pipe-shell"),
        ("Dockerfile", "apt-recommends"),
        ("Dockerfile", "runs-as-root"),
    }
    assert [f["severity"] for f in report["findings"]][:2] == ["critical", "critical"]  # worst first


def test_fail_on_and_a_clean_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm\nUSER app\nRUN apt-get install -y git\n")
    assert scan(tmp_path, {"checks": ["dockerfile"]}, monkeypatch)["passed"] is True  # info < critical
    assert scan(tmp_path, {"checks": ["dockerfile"], "fail_on": "info"}, monkeypatch)["passed"] is False


def test_a_missing_tool_is_reported_not_passed_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\nrm -rf $1/*\n")
    report = scan(tmp_path, {"checks": ["shell"]}, monkeypatch)
    assert report["skipped"] == [
        "shell: shellcheck is not installed where the agent ran (it comes with the agent's image)"
    ]


def test_a_path_outside_the_workspace_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = scan(tmp_path, {"path": "../.."}, monkeypatch)
    assert report["error"]["reason"] == "bad_request" and "inside the workspace" in report["error"]["message"]
