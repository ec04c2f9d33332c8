"""LLM steps and capability routing across real processes: planner, scheduler and executor over a
real nats-server, the llm agent on the process runtime, and fake providers on loopback.

Primary rate-limited -> the fallback runs and both are recorded; every candidate unusable -> the
node fails naming each one and why; a spent budget stops the next LLM step before it starts; and
no provider key reaches a log, an event, an output or the JetStream store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer
from tests.fakellm import FakeProvider, Threaded, answer, error, structured

from .stack import Stack

PRIMARY_KEY = "sk-ant-primary-7c1d9e0f3a"
BACKUP_KEY = "sk-backup-51b2c8d4e6"
DENIED_KEY = "sk-denied-0a9b8c7d6e"
TRIAGE = {"severity": "high", "summary": "disk full on db-1"}
SCHEMA = (
    "{type: object, required: [severity, summary], properties: "
    "{severity: {enum: [low, high]}, summary: {type: string}}}"
)


def agent(name: str, provider: str, capabilities: str) -> str:
    return (
        f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n"
        f"  command: [flowyard-agent-llm]\n  capabilities: [{capabilities}]\n"
        f"  llm: {{provider: {provider}}}\n  timeout: 30s\n---\n"
    )


@pytest.fixture(scope="module")
def fakes() -> Iterator[list[FakeProvider]]:
    with Threaded(3) as started:
        yield started


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory, fakes: list[FakeProvider]) -> Iterator[Stack]:
    primary, backup, denied = fakes
    workdir = tmp_path_factory.mktemp("llm")
    config = workdir / "flowyard.yaml"
    retry = "max_retries: 1, backoff: 0.01, max_backoff: 0.02"
    config.write_text(
        "llm:\n  default_provider: primary\n  providers:\n"
        f"    primary: {{kind: anthropic, base_url: '{primary.url}', api_key_secret: PRIMARY_KEY, "
        f"default_model: claude-test, {retry}}}\n"
        f"    backup: {{kind: openai-compatible, base_url: '{backup.url}/v1', api_key_secret: BACKUP_KEY, "
        f"default_model: gpt-test, prices: {{gpt-test: {{input: 2.0, output: 10.0}}}}, {retry}}}\n"
        f"    nokey: {{kind: openai-compatible, base_url: '{backup.url}/v1', api_key_secret: NOKEY_KEY, "
        "default_model: gpt-test}\n"
        f"    denied: {{kind: anthropic, base_url: '{denied.url}', api_key_secret: DENIED_KEY, "
        "default_model: claude-test}\n"
        "agents:\n  priorities:\n    triage: [llm, llm-backup]\n    classify: [fy-nokey, fy-denied]\n"
        "  rate_limit_cooldown: 10m\n"
    )
    server = NatsServer(workdir / "nats").start()
    s = Stack(
        server,
        workdir,
        FLOWYARD_CONFIG=str(config),
        FLOWYARD_EXECUTOR_RUNTIME="process",
        FLOWYARD_SECRET_PRIMARY_KEY=PRIMARY_KEY,
        FLOWYARD_SECRET_BACKUP_KEY=BACKUP_KEY,
        FLOWYARD_SECRET_DENIED_KEY=DENIED_KEY,
    )
    try:
        yield s.start_all()
    finally:
        s.stop_all()
        server.stop()


def test_rate_limited_primary_falls_back_and_both_are_recorded(
    stack: Stack, fakes: list[FakeProvider], tmp_path: Path
) -> None:
    primary, backup, _ = fakes
    primary.script[:] = [error(429, retry_after="0")]
    backup.script[:] = [structured(TRIAGE, input_tokens=100, output_tokens=20), answer("page the db on-call")]
    workflow = tmp_path / "triage.yaml"
    workflow.write_text(
        agent("llm-backup", "backup", "triage")
        + "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: llm-triage}\nspec:\n"
        "  inputs: {alert: {type: string}}\n  nodes:\n"
        "    - id: triage\n      capability: triage\n"
        f"      with: {{prompt: 'Triage this alert: {{{{ inputs.alert }}}}', schema: {SCHEMA}}}\n"
        "    - id: advise\n      agent: llm-backup\n      needs: [triage]\n"
        "      with: {prompt: 'Severity {{ nodes.triage.output.json.severity }}: what now?'}\n"
        "  outputs: {severity: '{{ nodes.triage.output.json.severity }}', advice: '{{ nodes.advise.output.text }}'}\n"
    )
    code, result, err = stack.run_json(str(workflow), "-i", "alert=DiskFull db-1")
    assert code == 0, json.dumps(result, indent=1) + err
    assert result["outputs"] == {"severity": "high", "advice": "page the db on-call"}
    node = result["nodes"]["triage"]
    assert node["capability"] == "triage" and node["candidates"] == ["llm", "llm-backup"]
    assert node["agent"] == "llm-backup"
    assert [(r["agent"], r["outcome"]) for r in node["routing"]] == [("llm", "failed"), ("llm-backup", "chosen")]
    assert node["routing"][0]["reason"].startswith("rate_limited: ")
    assert node["output"]["json"] == TRIAGE and node["output"]["provider"] == "backup"
    assert node["usage"] == {"input_tokens": 100, "output_tokens": 20, "cost_usd": pytest.approx(0.0004)}
    assert result["usage"]["input_tokens"] == 100 + 12 and result["usage"]["output_tokens"] == 20 + 7
    assert len(primary.seen) == 2  # one retry inside the attempt, then the hand-over
    assert primary.seen[0].headers["x-api-key"] == PRIMARY_KEY
    assert backup.seen[0].headers["Authorization"] == f"Bearer {BACKUP_KEY}"
    shown = stack.cli("runs", "show", result["run_id"])
    assert "capability triage (llm, llm-backup), ran llm-backup" in shown.stdout
    assert "→ llm failed: rate_limited:" in shown.stdout and "→ llm-backup chosen" in shown.stdout


def test_every_candidate_unusable_fails_the_node_naming_each(
    stack: Stack, fakes: list[FakeProvider], tmp_path: Path
) -> None:
    fakes[2].script[:] = [error(401)]
    workflow = tmp_path / "classify.yaml"
    workflow.write_text(
        agent("fy-nokey", "nokey", "classify")
        + agent("fy-denied", "denied", "classify")
        + "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: llm-classify}\nspec:\n  nodes:\n"
        "    - {id: sort, capability: classify, with: {prompt: 'classify: disk full'}}\n"
    )
    code, result, _ = stack.run_json(str(workflow))
    assert code == 1
    node = result["nodes"]["sort"]
    assert node["status"] == "failed"
    routing = [(r["agent"], r["outcome"], r["reason"].split(":")[0]) for r in node["routing"]]
    assert routing == [("fy-nokey", "skipped", "no_provider"), ("fy-denied", "failed", "auth_refused")]
    assert "no agent offering capability 'classify' could do it" in node["error"]
    assert "fy-nokey skipped (no_provider: provider 'nokey''s key (secret NOKEY_KEY)" in node["error"]
    assert "fy-denied failed (auth_refused:" in node["error"]


def test_a_spent_budget_stops_the_next_llm_step(stack: Stack, fakes: list[FakeProvider], tmp_path: Path) -> None:
    fakes[1].script[:] = [answer("first", input_tokens=40, output_tokens=30)]
    seen = len(fakes[1].seen)
    workflow = tmp_path / "budget.yaml"
    workflow.write_text(
        agent("llm-budget", "backup", "summarise")
        + "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: llm-budget}\nspec:\n"
        "  budget: {tokens: 50}\n  nodes:\n"
        "    - {id: one, agent: llm-budget, with: {prompt: a}}\n"
        "    - {id: two, agent: llm-budget, needs: [one], with: {prompt: b}}\n"
    )
    code, result, _ = stack.run_json(str(workflow))
    assert code == 1
    assert result["nodes"]["one"]["status"] == "succeeded"
    two = result["nodes"]["two"]
    assert two["status"] == "failed" and two["attempts"] == 0
    assert "spec.budget.tokens 50; spent 70" in two["error"]
    assert len(fakes[1].seen) == seen + 1  # the second step never called the provider
    assert result["usage"] == {"input_tokens": 40, "output_tokens": 30, "cost_usd": pytest.approx(0.00038)}


def test_no_provider_key_reaches_logs_events_outputs_or_the_store(stack: Stack) -> None:
    """After the runs above (their events, records and logs are in the store and the logs)."""
    stored = [p for p in (stack.workdir / "nats").rglob("*") if p.is_file()]
    assert stored, "the nats-server keeps its store under the work dir"
    logs = [p for p in stack.workdir.glob("*.log")]
    for path in stored + logs:
        data = path.read_bytes()
        for key in (PRIMARY_KEY, BACKUP_KEY, DENIED_KEY):
            assert key.encode() not in data, f"{key[:8]}… found in {path}"
    listing = stack.cli("runs", "list", "--json")
    for run in json.loads(listing.stdout):
        shown = stack.cli("runs", "show", run["run_id"], "--json").stdout
        assert all(k not in shown for k in (PRIMARY_KEY, BACKUP_KEY, DENIED_KEY))


def test_doctor_checks_each_provider(stack: Stack, fakes: list[FakeProvider]) -> None:
    fakes[1].script[:] = [answer()]
    fakes[2].script[:] = [error(401)]
    done = stack.cli("doctor")
    assert done.returncode == 1, done.stdout
    assert "ok   provider backup: openai-compatible at" in done.stdout
    assert "FIX  provider denied: anthropic at" in done.stdout and "refused the key (HTTP 401)" in done.stdout
    assert "FIX  provider nokey: key (secret NOKEY_KEY)" in done.stdout
    assert all(k not in done.stdout for k in (PRIMARY_KEY, BACKUP_KEY, DENIED_KEY))
