"""The alert-driven use case end to end, exactly as docs/triggers.md tells it: the example
workflow applied, a real Alertmanager routing HighLatency to the gateway, a run that diagnoses,
waits for an approver, restarts, and a notification when it is done."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ..cli import ROOT, clean_env, flowyard
from ..conftest import missing
from ..hooks import Hooks

EXAMPLE = ROOT / "examples/alert-remediation.yaml"
ROUTE = ROOT / "examples/alerting/alertmanager.yml"
TOKENS = {"alertmanager": "am-token-0123456789abcdef", "pat": "pat-token-0123456789abcdef"}


def wait_for(check, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def api(base: str, user: str, path: str, body: dict | None = None) -> dict | list:
    req = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKENS[user]}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def world(nats_binary: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("prometheus-alertmanager") is None:
        missing("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    hooks = Hooks()
    config = tmp_path / "flowyard.yaml"
    config.write_text(
        "gateway:\n  port: 0\n  users:\n"
        "    alertmanager: {token_secret: AM_TOKEN, roles: [alerts]}\n"
        "    pat: {token_secret: PAT_TOKEN, roles: [approver, viewer]}\n"
        "notifier:\n"
        f"  sinks: {{oncall: {{type: webhook, url: '{hooks.url}'}}}}\n"
        "  rules: [{on: [run.succeeded, run.failed, approval.requested], workflows: ['high-latency-*'], sinks: [oncall]}]\n"
    )
    env = clean_env(
        {
            "FLOWYARD_EXECUTOR_RUNTIME": "process",
            "FLOWYARD_CONFIG": str(config),
            "FLOWYARD_SECRET_AM_TOKEN": TOKENS["alertmanager"],
            "FLOWYARD_SECRET_PAT_TOKEN": TOKENS["pat"],
        }
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    am = None
    try:
        assert up.stdout is not None
        banner: dict[str, str] = {}
        while "gateway" not in banner:
            line = up.stdout.readline()
            assert line, "flowyard up ended before it was up"
            if "export FLOWYARD_NATS_URL=" in line:
                banner["nats"] = line.strip().split("=", 1)[1]
            elif "gateway (REST API)" in line:
                banner["gateway"] = line.split("gateway (REST API)")[1].split()[0]
        # Alertmanager with the example's route, pointed at this gateway, timers shortened.
        route = yaml.safe_load(ROUTE.read_text())
        route["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
        hook = route["receivers"][1]["webhook_configs"][0]
        hook["url"] = f"{banner['gateway']}/v1/alerts/alertmanager"
        token_file = tmp_path / "flowyard-token"
        token_file.write_text(TOKENS["alertmanager"])
        hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(route))
        log = tmp_path / "am.log"
        with log.open("wb") as out:
            am = subprocess.Popen(
                [
                    "prometheus-alertmanager",
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'am'}",
                    "--web.listen-address=127.0.0.1:0",
                    "--cluster.listen-address=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        found = wait_for(lambda: re.search(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', log.read_text()))
        banner["alertmanager"] = f"http://{found.group(1)}"
        banner["hooks"] = hooks  # type: ignore[assignment]
        yield banner
    finally:
        if am is not None:
            am.terminate()
            am.wait(10)
        up.terminate()
        up.wait(30)
        hooks.server.shutdown()


def test_high_latency_alert_to_remediation(world: dict) -> None:
    applied = flowyard("workflows", "apply", str(EXAMPLE), env={"FLOWYARD_NATS_URL": world["nats"]})
    assert applied.returncode == 0 and "high-latency-remediation version 1" in applied.stdout
    triggers = json.loads(flowyard("triggers", "list", "--json", env={"FLOWYARD_NATS_URL": world["nats"]}).stdout)
    assert [t["kind"] for t in triggers] == ["alertmanager"]
    over_http = api(world["gateway"], "pat", "/v1/triggers")
    assert [t["id"] for t in over_http] == ["high-latency-remediation#0"]
    assert "HighLatency" in over_http[0]["description"] and over_http[0]["counts"]["fired"] == 0

    alert = {
        "labels": {"alertname": "HighLatency", "severity": "critical", "service": "checkout"},
        "annotations": {"summary": "checkout: p99 latency above 500 ms"},
    }
    req = urllib.request.Request(
        f"{world['alertmanager']}/api/v2/alerts",
        data=json.dumps([alert]).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()

    base = world["gateway"]
    waiting = wait_for(lambda: api(base, "pat", "/v1/approvals?status=pending"), what="the approval request")
    assert waiting[0]["workflow"] == "high-latency-remediation" and waiting[0]["node"] == "restart"
    assert waiting[0]["inputs"] == {"service": "checkout", "replicas": 3}
    run_id = waiting[0]["run_id"]
    run = api(base, "pat", f"/v1/runs/{run_id}")
    assert run["status"] == "waiting" and run["trigger"]["labels"]["service"] == "checkout"
    assert run["nodes"]["diagnose"]["output"]["suspect"] == "connection pool"

    decided = api(base, "pat", f"/v1/approvals/{waiting[0]['id']}/approve", {"comment": "pool exhausted; restart"})
    assert decided["status"] == "granted"
    done = wait_for(
        lambda: (lambda r: r if r["status"] not in ("pending", "running", "waiting") else None)(
            api(base, "pat", f"/v1/runs/{run_id}")
        )
    )
    assert done["status"] == "succeeded" and done["outputs"]["restarted"] == "checkout"
    notes = wait_for(lambda: [n for n in world["hooks"].received if n["type"] == "run.succeeded"], what="the notice")
    assert notes[0]["run_id"] == run_id and notes[0]["workflow"] == "high-latency-remediation"
    assert any(n["type"] == "approval.requested" for n in world["hooks"].received)
    fired = wait_for(lambda: api(base, "pat", "/v1/triggers")[0]["counts"]["fired"] == 1, what="the count")
    assert fired
