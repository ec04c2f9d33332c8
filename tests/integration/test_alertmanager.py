"""A real Alertmanager (Debian's) delivering to the gateway: one run per alert however often it
is repeated, a resolved alert cancels its run, a storm is held to max_runs, tokens are checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.bus.server import NatsServer

from ..conftest import missing
from ..hooks import Hooks
from .gateway import TOKENS, gateway_config, start_gateway
from .stack import Stack
from .test_triggers import TRIGGERED, counts, runs_of, wait_for

ALERTMANAGER = "prometheus-alertmanager"


def alertmanager_config(gateway: str) -> str:
    return f"""
route:
  receiver: flowyard
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: flowyard
    webhook_configs:
      - url: {gateway}/v1/alerts/alertmanager
        send_resolved: true
        http_config:
          authorization: {{type: Bearer, credentials: {TOKENS["am"]}}}
"""


@pytest.fixture(scope="module")
def am(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, str]]:
    if shutil.which(ALERTMANAGER) is None:
        missing("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    workdir = tmp_path_factory.mktemp("alertmanager")
    server = NatsServer(workdir / "nats").start()
    hooks = Hooks()
    notify = (
        "notifier:\n"
        f"  sinks: {{hook: {{type: webhook, url: '{hooks.url}'}}}}\n"
        "  rules: [{on: [trigger.suppressed, trigger.refused], sinks: [hook]}]\n"
    )
    stack = Stack(server, workdir, **gateway_config(workdir, notify))
    stack.hooks = hooks  # type: ignore[attr-defined]
    proc = None
    try:
        stack.start_all()
        stack.start("notifier")
        gateway = start_gateway(stack)
        assert stack.cli("workflows", "apply", str(TRIGGERED)).returncode == 0
        config = workdir / "alertmanager.yml"
        config.write_text(alertmanager_config(gateway))
        checked = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        log = workdir / "alertmanager.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={config}",
                    f"--storage.path={workdir / 'am-data'}",
                    "--web.listen-address=127.0.0.1:0",
                    "--cluster.listen-address=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        found = wait_for(
            lambda: re.search(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', log.read_text()), what="alertmanager"
        )
        yield stack, gateway, f"http://{found.group(1)}"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        stack.stop_all()
        server.stop()


def post_alerts(am_url: str, alerts: list[dict]) -> None:
    req = urllib.request.Request(
        f"{am_url}/api/v2/alerts", data=json.dumps(alerts).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def status_of(stack: Stack, run_id: str) -> str:
    return json.loads(stack.cli("runs", "show", run_id, "--json").stdout)["status"]


def test_repeats_start_nothing_new_and_resolving_cancels_the_run(am) -> None:
    stack, _, am_url = am
    starts = datetime.now(UTC).isoformat()
    alert = {"labels": {"alertname": "HighLatency", "severity": "critical", "service": "api"}, "startsAt": starts}
    post_alerts(am_url, [alert])
    run = wait_for(lambda: runs_of(stack, "on-alert"), what="the alert's run")[0]
    assert run["trigger"]["type"] == "alertmanager" and run["trigger"]["status"] == "firing"
    assert run["trigger"]["labels"]["service"] == "api" and run["trigger"]["group"]["receiver"] == "flowyard"
    # Alertmanager repeats the firing alert (repeat_interval 2s): no new run.
    wait_for(lambda: counts(stack, "on-alert#0")["deduplicated"] >= 2, timeout=60, what="repeats")
    assert len(runs_of(stack, "on-alert")) == 1
    # A different severity does not match the workflow's matchers.
    post_alerts(am_url, [{"labels": {"alertname": "HighLatency", "severity": "info", "service": "x"}}])
    ended = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    post_alerts(am_url, [{**alert, "endsAt": ended}])
    wait_for(lambda: status_of(stack, run["run_id"]) == "cancelled", timeout=60, what="the run cancelled")
    assert len(runs_of(stack, "on-alert")) == 1


def test_a_storm_is_held_to_max_runs(am) -> None:
    stack, _, am_url = am
    post_alerts(am_url, [{"labels": {"alertname": "Storm", "instance": f"i{i}"}} for i in range(200)])
    wait_for(
        lambda: (lambda c: c["fired"] + c["suppressed"] >= 200)(counts(stack, "storm#0")), timeout=60, what="the storm"
    )
    c = counts(stack, "storm#0")
    assert c["fired"] == 5 and c["suppressed"] == 195
    assert len(runs_of(stack, "storm")) == 5
    # People hear about the storm once, not 195 times.
    storms = wait_for(lambda: [h for h in stack.hooks.received if h["type"] == "trigger.suppressed"], what="the notice")
    assert len(storms) == 1 and "Trigger storm: workflow storm trigger #1" in storms[0]["summary"]


def test_the_webhook_needs_a_token_with_the_alerts_role(am) -> None:
    _, gateway, _ = am
    body = json.dumps({"version": "4", "alerts": []}).encode()
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {TOKENS['vic']}"}, 403),
        ({"Authorization": f"Bearer {TOKENS['am']}"}, 200),
        ({"Authorization": f"Bearer {TOKENS['olga']}"}, 200),  # operators may deliver alerts too
    ):
        req = urllib.request.Request(
            f"{gateway}/v1/alerts/alertmanager", data=body, headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                got = r.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        assert got == status, headers
    req = urllib.request.Request(
        f"{gateway}/v1/alerts/alertmanager",
        data=b'{"version": "4", "alerts": "no"}',
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS['am']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 422


def test_on_resolved_run_starts_a_run_for_the_resolution(am) -> None:
    stack, _, am_url = am
    alert = {"labels": {"alertname": "Resolvable", "instance": "db1"}, "startsAt": datetime.now(UTC).isoformat()}
    post_alerts(am_url, [alert])
    wait_for(lambda: runs_of(stack, "on-resolve"), what="the firing run")
    post_alerts(am_url, [{**alert, "endsAt": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}])
    both = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(runs_of(stack, "on-resolve")), what="two runs")
    assert sorted(r["trigger"]["status"] for r in both) == ["firing", "resolved"]
