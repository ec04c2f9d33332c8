"""deploy/ checked with the real tools: promtool on the rules (and their unit tests), amtool on the
Alertmanager config, and a real Prometheus scraping a running stack, through which every dashboard
query is evaluated."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.bus.server import NatsServer
from shared.codegen import dashboards
from shared.telemetry import metrics
from tests.fakellm import Threaded, answer, error

from ..conftest import ROOT, missing
from ..hooks import Hooks
from .stack import Stack

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules"
OBSERVED = str(Path(__file__).parent / "workflows" / "observed.yaml")
SERVICES = ("planner", "scheduler", "executor", "approver", "notifier")
METRIC = re.compile(r"\b(flowyard_[a-z_]+|[a-z_]+:[a-z_]+:[a-z0-9_]+)\b")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install {package})")
    return path  # type: ignore[return-value]


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((RULES / "flowyard-alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


# --- promtool and amtool ------------------------------------------------------------------------


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    promtool = tool("promtool", "prometheus")
    for rules in sorted(RULES.glob("*.yml")):
        done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=DEPLOY / "prometheus", capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    promtool = tool("promtool", "prometheus")
    done = subprocess.run(
        [promtool, "test", "rules", "flowyard-alerts.test.yml"],
        cwd=DEPLOY / "prometheus" / "tests",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "flowyard-alerts.test.yml").read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fires == set(), f"alerts never shown firing: {names - fires}"
    assert names - silent == set(), f"alerts never shown staying quiet: {names - silent}"


def test_every_alert_explains_itself_and_links_a_runbook_that_exists() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    required = {
        "FlowyardRunsFailing",
        "FlowyardRunsStuck",
        "FlowyardConsumerLagGrowing",
        "FlowyardConsumerHasNoPuller",
        "FlowyardDeadLetters",
        "FlowyardExecutorSaturated",
        "FlowyardCircuitBreakerOpen",
        "FlowyardCapabilityUnroutable",
        "FlowyardApprovalExpiringSoon",
        "FlowyardServiceDown",
    }
    assert required <= {a["alert"] for a in alerts()}
    for alert in alerts():
        notes = alert["annotations"]
        assert notes.get("summary") and notes.get("description"), alert["alert"]
        url = notes["runbook_url"]
        assert url.split("#")[0].endswith("docs/operations.md"), url
        assert url.split("#")[1] in headings, f"{alert['alert']}: no section #{url.split('#')[1]} in docs/operations.md"


def test_rules_use_only_metrics_flowyard_exports() -> None:
    exported = metrics.names()
    recorded = {
        r["record"]
        for g in yaml.safe_load((RULES / "flowyard-recording.yml").read_text())["groups"]
        for r in g["rules"]
    }
    for path in RULES.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                used = set(METRIC.findall(rule["expr"]))
                unknown = {m for m in used if m not in exported and m not in recorded}
                assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_alertmanager_config_is_valid_and_routes_as_it_says() -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    done = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    def route(*labels: str) -> str:
        out = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={config}", *labels], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert route("alertname=FlowyardServiceDown", "severity=critical") == "flowyard-oncall"
    assert route("alertname=FlowyardDeadLetters", "severity=warning") == "flowyard-team"
    # Any alert marked for remediation reaches flowyard's webhook, and people as well.
    assert route("alertname=HighLatency", "remediation=flowyard") == "flowyard,platform-chat"
    assert route("alertname=DiskFull") == "platform-chat"


# --- a real Prometheus scraping a real stack -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        binary = tool("prometheus", "prometheus")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in sorted(RULES.glob("*.yml"))],
            "scrape_configs": [
                {"job_name": f"flowyard-{name}", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for name, port in targets.items()
            ],
        }
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda: self.get("/-/ready") is not None, "Prometheus to be ready")

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                body = r.read()
        except OSError:
            return None
        return json.loads(body) if body.startswith(b"{") else body

    def query(self, expr: str) -> dict[str, Any]:
        data = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(self.url + "/api/v1/query", data=data, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:
            return json.load(exc)

    def value(self, expr: str) -> float:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def wait(self, ok: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {what}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture(scope="module")
def watched(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Prometheus, Hooks]]:
    tool("prometheus", "prometheus")
    workdir = tmp_path_factory.mktemp("watched")
    hooks = Hooks()
    # Model providers for the LLM panels: one that always rate-limits, one that answers.
    providers = Threaded(2)
    limited, good = providers.__enter__()
    limited.script[:] = [error(429)]
    good.script[:] = [answer("all quiet", input_tokens=300, output_tokens=40)]
    config = workdir / "flowyard.yaml"
    config.write_text(
        "notifier:\n"
        f"  sinks: {{hook: {{type: webhook, url: '{hooks.url}'}}}}\n"
        "  rules: [{on: [run.failed, approval.requested], sinks: [hook]}]\n"
        "executor:\n  breaker_threshold: 1\n"
        "telemetry:\n  gauge_interval: 1s\n"
        "llm:\n  default_provider: limited\n  providers:\n"
        f"    limited: {{kind: anthropic, base_url: '{limited.url}', default_model: m, max_retries: 0}}\n"
        f"    good: {{kind: openai-compatible, base_url: '{good.url}/v1', default_model: g, "
        "prices: {g: {input: 1.0, output: 2.0}}}\n"
        "agents:\n  priorities: {triage: [llm, obs-llm-good]}\n"
        # The planner asks the good provider, whose prose is never a workflow: a plan that fails.
        "planner:\n  llm: {provider: good, max_rounds: 2}\n"
    )
    server = NatsServer(workdir / "nats").start()
    stack = Stack(server, workdir, FLOWYARD_CONFIG=str(config))
    prom = None
    try:
        for name in SERVICES:
            stack.start(name)
        prom = Prometheus(workdir, {name: stack.http_port(name) for name in SERVICES})
        yield stack, prom, hooks
    finally:
        if prom is not None:
            prom.stop()
        stack.stop_all()
        server.stop()
        providers.__exit__(None, None, None)


def _run_the_mix(stack: Stack, prom: Prometheus, workdir: Path) -> None:
    """Runs that succeed, fail, retry, wait for approval (granted) and cannot start their agent."""
    code, _, err = stack.run_json(OBSERVED, "--workflow", "obs-diamond")
    assert code == 0, err
    code, _, err = stack.run_json(OBSERVED, "--workflow", "obs-retry", "-i", f"dir={workdir}", "-i", "key=r1")
    assert code == 0, err
    code, _, _ = stack.run_json(OBSERVED, "--workflow", "obs-fail")
    assert code == 1
    code, _, _ = stack.run_json(OBSERVED, "--workflow", "obs-missing")
    assert code == 1
    # Model calls: triage falls back from the rate-limited llm to obs-llm-good (tokens, cost, a
    # fallback, a rate limit); classify has only llm, cooling down now: no agent can take it.
    llm = workdir / "llm.yaml"
    llm.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: obs-llm-good}\nspec:\n"
        "  command: [flowyard-agent-llm]\n  capabilities: [triage]\n  llm: {provider: good}\n---\n"
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: obs-llm}\nspec:\n  nodes:\n"
        "    - {id: triage, capability: triage, with: {prompt: 'how bad?'}}\n"
        "    - {id: sort, capability: classify, needs: [triage], with: {prompt: 'which team?'}}\n"
    )
    code, result, _ = stack.run_json(str(llm))
    assert code == 1 and result["nodes"]["triage"]["agent"] == "obs-llm-good", result
    assert "no agent offering capability 'classify'" in result["nodes"]["sort"]["error"]
    # A plan whose every answer is prose (two rounds), with no template to fall back on.
    planned = stack.cli("plan", "check the fleet", "--json")
    assert planned.returncode == 1 and json.loads(planned.stdout)["status"] == "failed", planned.stderr
    gate = stack.cli_background("run", OBSERVED, "--workflow", "obs-gate", "--as", "carol", "--json")
    # While it waits, Prometheus sees it active and its approval pending, with an expiry.
    prom.wait(lambda: prom.value('max(flowyard_runs_active{workflow="obs-gate"})') == 1, "an active run")
    prom.wait(lambda: prom.value('max(flowyard_approvals_pending{workflow="obs-gate"})') == 1, "a pending approval")
    expiry = prom.value('max(flowyard_approval_next_expiry_timestamp_seconds{workflow="obs-gate"})')
    assert 3000 < expiry - time.time() <= 3600  # the default expires_in is an hour
    listed = json.loads(stack.cli("approvals", "list", "--json").stdout or "[]")
    waiting = [a for a in listed if a["workflow"] == "obs-gate" and a["status"] == "pending"]
    done = stack.cli("approvals", "approve", waiting[0]["id"], "--as", "dave")
    assert done.returncode == 0, done.stderr
    _, err = gate.communicate(timeout=60)
    assert gate.returncode == 0, err
    # Scraped after everything ended: the run gone from the active ones, the approval decided.
    prom.wait(lambda: prom.value('sum(flowyard_runs_finished_total{workflow="obs-gate"})') >= 1, "the last run")
    prom.wait(lambda: prom.value('max(flowyard_runs_active{workflow="obs-gate"})') == 0, "no active run")
    prom.wait(lambda: prom.value('max(flowyard_approvals_pending{workflow="obs-gate"})') == 0, "no pending approval")
    prom.wait(lambda: prom.value("sum(flowyard_approval_wait_seconds_count)") >= 1, "the approval's wait")
    prom.wait(lambda: prom.value('sum(flowyard_notifications_total{outcome="sent"})') >= 3, "the notifications")
    prom.wait(lambda: prom.value('sum(flowyard_plans_total{outcome="failed"})') >= 1, "the failed plan")


@pytest.fixture(scope="module")
def mixed(
    watched: tuple[Stack, Prometheus, Hooks], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Stack, Prometheus]:
    stack, prom, _ = watched
    _run_the_mix(stack, prom, tmp_path_factory.mktemp("mix"))
    return stack, prom


def test_every_metric_is_exported_with_its_labels_after_runs(mixed: tuple[Stack, Prometheus]) -> None:
    _, prom = mixed
    expected = {
        "flowyard_runs_started_total": {"workflow", "trigger"},
        "flowyard_runs_finished_total": {"workflow", "status"},
        "flowyard_run_duration_seconds_bucket": {"workflow", "status", "le"},
        "flowyard_runs_active": {"workflow"},
        "flowyard_nodes_finished_total": {"workflow", "agent", "status"},
        "flowyard_agent_attempts_total": {"agent", "outcome"},
        "flowyard_agent_attempt_seconds_bucket": {"agent", "le"},
        "flowyard_executor_slots": {"state"},
        "flowyard_approvals_pending": {"workflow"},
        "flowyard_approval_wait_seconds_bucket": {"workflow", "outcome", "le"},
        "flowyard_notifications_total": {"sink", "outcome"},
        "flowyard_plans_total": {"outcome"},
        "flowyard_plan_rounds_bucket": {"le"},
        "flowyard_plan_seconds_bucket": {"outcome", "le"},
        "flowyard_consumer_pending": {"consumer"},
        "flowyard_consumer_ack_pending": {"consumer"},
        "flowyard_consumer_redelivered": {"consumer"},
        "flowyard_dead_letters_total": {"service"},
        "flowyard_build_info": {"version"},
    }
    for name, labels in expected.items():
        series = prom.query(name)["data"]["result"]
        assert series, f"{name} was never scraped"
        have = set(series[0]["metric"]) - {"__name__", "job", "instance"}
        assert have == labels, (name, have)
    build = prom.query("flowyard_build_info")["data"]["result"]
    assert {s["metric"]["job"] for s in build} == {f"flowyard-{n}" for n in SERVICES}
    # Bounded labels: no run id anywhere.
    assert prom.query('count({__name__=~"flowyard_.+", run_id!=""})')["data"]["result"] == []
    assert prom.value('sum(flowyard_runs_started_total{trigger="cli"})') >= 5
    assert prom.value('sum(flowyard_runs_finished_total{workflow="obs-fail",status="failed"})') == 1
    assert prom.value('sum(flowyard_agent_attempts_total{agent="flaky",outcome="exit"})') == 1
    assert prom.value('sum(flowyard_agent_attempts_total{agent="missing-tool",outcome="runtime"})') == 1
    assert prom.value('sum(flowyard_nodes_finished_total{workflow="obs-diamond",agent="step",status="succeeded"})') == 4
    assert prom.value('sum(flowyard_approval_wait_seconds_count{workflow="obs-gate",outcome="granted"})') == 1
    assert prom.value("max(flowyard_executor_breaker_trips_total)") == 1
    assert prom.value('sum(flowyard_consumer_pending{consumer="scheduler"})') == 0


def _substitute(expr: str) -> str:
    """What Grafana does before it sends a query: its variables, the "All" choice for ours."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$workflow", ".*")
        .replace("$agent", ".*")
    )


# Panels only a sandbox runtime feeds: the mix runs on the process runtime, which has no egress
# proxy to refuse anything. The metric each one reads is counted on real Docker and on the fake
# kubelet by tests/integration/test_egress.py and test_kubernetes_egress.py.
SANDBOX_ONLY = {"flowyard-agents / Egress refused": "flowyard_egress_denied_total"}


def test_every_dashboard_query_runs_and_the_overview_and_agents_show_data(mixed: tuple[Stack, Prometheus]) -> None:
    _, prom = mixed
    empty: list[str] = []
    for uid, queries in dashboards.queries().items():
        for title, expr in queries:
            answer = prom.query(_substitute(expr))
            assert answer["status"] == "success", f"{uid} / {title}: {answer.get('error')} in {expr}"
            if f"{uid} / {title}" in SANDBOX_ONLY:
                assert SANDBOX_ONLY[f"{uid} / {title}"] in expr, expr
                continue
            if uid in ("flowyard-overview", "flowyard-agents") and not answer["data"]["result"]:
                empty.append(f"{uid} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # The recording and alerting rules evaluate cleanly against the real series.
    prom.wait(
        lambda: all(r["health"] != "unknown" for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]),
        "every rule to be evaluated once",
    )
    rules = prom.get("/api/v1/rules")["data"]["groups"]
    bad = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    evaluated = [r for g in rules for r in g["rules"]]
    assert evaluated and not bad, bad
