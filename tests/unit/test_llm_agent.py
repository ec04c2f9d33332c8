"""The llm agent against the fake provider (tests/fakellm.py) on loopback: every protocol, plain
and streamed, structured output and its repair round, retries, and the failure contract."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.config.llm import ProviderConfig
from shared.llm import agent as llm_agent
from shared.llm.client import Endpoint, retry_after
from shared.llm.errors import LlmError
from tests.fakellm import FakeProvider, answer, error, structured

KEY = "sk-test-NEVER-LOGGED-4242"
SCHEMA = {
    "type": "object",
    "required": ["severity", "summary"],
    "properties": {"severity": {"enum": ["low", "high"]}, "summary": {"type": "string"}},
}
PROTOCOLS = [("anthropic", "chat"), ("openai-compatible", "chat"), ("openai-compatible", "responses")]


def endpoint(fake: FakeProvider, kind: str = "anthropic", api: str = "chat", **extra: Any) -> Endpoint:
    base = fake.url if kind == "anthropic" else fake.url + "/v1"
    settings = {"backoff": 0.01, "max_backoff": 0.05, "default_model": "m-1", **extra}
    config = ProviderConfig(kind=kind, base_url=base, api=api, **settings)  # type: ignore[arg-type]
    return Endpoint(name="fake", config=config, api_key=KEY)


async def ask(ep: Endpoint, given: dict[str, Any], *, seconds: float = 10.0) -> tuple[dict[str, Any], llm_agent.Spent]:
    spent = llm_agent.Spent()
    out = await llm_agent.run(given, ep, deadline=time.monotonic() + seconds, spent=spent)
    return out, spent


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("kind", "api"), PROTOCOLS)
async def test_text_answer_on_every_protocol(kind: str, api: str, stream: bool) -> None:
    async with FakeProvider().then(answer("the disk is full", input_tokens=30, output_tokens=9)) as fake:
        out, _ = await ask(endpoint(fake, kind, api, stream=stream), {"prompt": "why?", "system": "be brief"})
    assert out["text"] == "the disk is full"
    assert out["usage"] == {"input_tokens": 30, "output_tokens": 9}
    assert out["model"] == "m-1" and out["provider"] == "fake" and out["cost_usd"] is None
    body = fake.seen[0].body
    assert body["model"] == "m-1" and body.get("stream", False) is stream
    if kind == "anthropic":
        assert body["system"] == "be brief" and fake.seen[0].headers["x-api-key"] == KEY
        assert fake.seen[0].headers["anthropic-version"]
    else:
        assert fake.seen[0].headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("kind", "api"), PROTOCOLS)
async def test_schema_uses_structured_output(kind: str, api: str, stream: bool) -> None:
    data = {"severity": "high", "summary": "disk full"}
    async with FakeProvider().then(structured(data)) as fake:
        out, _ = await ask(endpoint(fake, kind, api, stream=stream), {"prompt": "triage", "schema": SCHEMA})
    assert out["json"] == data and "text" not in out
    body = fake.seen[0].body
    if kind == "anthropic":
        assert body["tool_choice"] == {"type": "tool", "name": "answer"}
        assert body["tools"][0]["input_schema"] == SCHEMA
    elif api == "chat":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    else:
        assert body["text"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize(("kind", "api"), PROTOCOLS)
async def test_one_repair_round_sends_the_validation_error_back(kind: str, api: str) -> None:
    bad, good = {"severity": "urgent", "summary": "x"}, {"severity": "low", "summary": "fine"}
    replies = [structured(bad, input_tokens=10, output_tokens=5), structured(good, input_tokens=20, output_tokens=6)]
    async with FakeProvider().then(*replies) as fake:
        out, _ = await ask(endpoint(fake, kind, api), {"prompt": "triage", "schema": SCHEMA})
    assert out["json"] == good
    assert out["usage"] == {"input_tokens": 30, "output_tokens": 11}  # both calls count
    assert len(fake.seen) == 2
    second = json.dumps(fake.seen[1].body)
    assert "urgent" in second and "not valid against the required JSON Schema" in second
    if kind == "anthropic":
        last = fake.seen[1].body["messages"][-1]["content"][0]
        assert last["type"] == "tool_result" and last["is_error"] is True


async def test_a_second_mismatch_fails_naming_the_error() -> None:
    async with FakeProvider().then(structured({"severity": "urgent", "summary": "x"})) as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake), {"prompt": "triage", "schema": SCHEMA})
    assert caught.value.reason == "bad_answer"
    assert "after one repair round" in caught.value.message and "severity" in caught.value.message
    assert len(fake.seen) == 2


async def test_text_that_is_not_json_is_repaired_or_fails() -> None:
    async with FakeProvider().then(
        answer("Sure! here it is"), answer('```json\n{"severity": "low", "summary": "ok"}\n```')
    ) as fake:
        out, _ = await ask(endpoint(fake, "openai-compatible"), {"prompt": "triage", "schema": SCHEMA})
    assert out["json"] == {"severity": "low", "summary": "ok"}


async def test_429_with_retry_after_is_retried_within_the_attempt() -> None:
    async with FakeProvider().then(error(429, retry_after="0"), error(529), answer("done")) as fake:
        out, _ = await ask(endpoint(fake), {"prompt": "go"})
    assert out["text"] == "done" and len(fake.seen) == 3


async def test_5xx_that_persists_ends_as_provider_unavailable() -> None:
    async with FakeProvider().then(error(500)) as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake, "openai-compatible", max_retries=2), {"prompt": "go"})
    assert caught.value.reason == "provider_unavailable" and "after 3 tries" in caught.value.message
    assert len(fake.seen) == 3


async def test_a_retry_after_past_the_deadline_is_not_waited_for() -> None:
    async with FakeProvider().then(error(429, retry_after="60")) as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake), {"prompt": "go"}, seconds=2)
    assert caught.value.reason == "rate_limited" and "would pass the attempt's timeout" in caught.value.message
    assert len(fake.seen) == 1


async def test_401_is_auth_refused_and_not_retried() -> None:
    async with FakeProvider().then(error(401)) as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake), {"prompt": "go"})
    assert caught.value.reason == "auth_refused" and len(fake.seen) == 1
    assert KEY not in caught.value.message


async def test_a_body_that_is_not_json_is_a_bad_answer() -> None:
    async with FakeProvider().then(answer(not_json=True)) as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake, "openai-compatible"), {"prompt": "go"})
    assert caught.value.reason == "bad_answer"


async def test_a_slow_provider_times_out_within_the_deadline() -> None:
    async with FakeProvider().then(answer(delay=1.5)) as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake, request_timeout=0.2, max_retries=0), {"prompt": "go"})
    assert caught.value.reason == "provider_unavailable" and "did not answer within" in caught.value.message


async def test_cost_comes_from_the_price_table() -> None:
    prices = {"m-1": {"input": 3.0, "output": 15.0}}
    async with FakeProvider().then(answer(input_tokens=1000, output_tokens=200)) as fake:
        config = msgspec.convert({**msgspec.to_builtins(endpoint(fake).config), "prices": prices}, ProviderConfig)
        out, _ = await ask(Endpoint("fake", config, KEY), {"prompt": "go"})
    assert out["cost_usd"] == pytest.approx((1000 * 3 + 200 * 15) / 1e6)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({}, "`prompt` must be non-empty"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": 5}, "temperature"),
        ({"prompt": "x", "schema": {"type": "array"}}, "Schema of an object"),
        ({"prompt": "x", "schema": {"type": "object", "properties": 3}}, "not a valid JSON Schema"),
        ({"prompt": "x", "colour": "red"}, "unknown input field(s) colour"),
    ],
)
async def test_bad_input_is_a_bad_request(given: dict[str, Any], words: str) -> None:
    async with FakeProvider() as fake:
        with pytest.raises(LlmError) as caught:
            await ask(endpoint(fake), given)
    assert caught.value.reason == "bad_request" and words in caught.value.message and not fake.seen


async def test_the_failure_contract_on_stdout() -> None:
    """What the executor reads: {"error": {"reason", "message"}, "usage"} and exit 1, never the key."""
    async with FakeProvider().then(error(401)) as fake:
        provider = {"name": "fake", **msgspec.to_builtins(endpoint(fake).config)}
        env = {"FLOWYARD_LLM_PROVIDER": json.dumps(provider), "FLOWYARD_LLM_API_KEY": KEY, "FLOWYARD_TIMEOUT_S": "10"}
        out, code = await llm_agent.amain(json.dumps({"prompt": "hi"}), env)
    assert code == 1 and out["error"]["reason"] == "auth_refused"
    assert out["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert KEY not in json.dumps(out)
    out, code = await llm_agent.amain(json.dumps({"prompt": "hi"}), {})
    assert code == 1 and out["error"]["reason"] == "no_provider"


def test_retry_after_forms() -> None:
    import httpx

    assert retry_after(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    assert retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after(httpx.Headers({})) is None


# --- the coding-CLI wrapper's reading of Claude Code's result --------------------------------

from shared.llm import cli  # noqa: E402

ASK = cli.Ask("fix it", 5, None, autonomous=True)
USAGE = {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3}


def test_a_claude_success_becomes_the_output() -> None:
    report = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "done",
        "num_turns": 2,
        "session_id": "s1",
        "total_cost_usd": 0.5,
        "usage": USAGE,
    }
    assert cli.claude_result(report, ASK) == {
        "result": "done",
        "usage": {"input_tokens": 15, "output_tokens": 3},
        "cost_usd": 0.5,
        "turns": 2,
        "session_id": "s1",
    }


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        ({"subtype": "error_max_turns"}, "max_turns"),
        ({"subtype": "success", "is_error": True, "api_error_status": 429, "result": "rate"}, "rate_limited"),
        ({"subtype": "success", "is_error": True, "api_error_status": 401, "result": "key"}, "auth_refused"),
        (
            {"subtype": "success", "is_error": True, "result": "API Error: Connection refused (ECONNREFUSED)"},
            "provider_unavailable",
        ),
        ({"subtype": "error_during_execution", "is_error": True, "result": "boom"}, "cli_failed"),
    ],
)
def test_claude_failures_have_their_reasons(report: dict[str, Any], reason: str) -> None:
    with pytest.raises(LlmError) as caught:
        cli.claude_result({"type": "result", "usage": USAGE, **report}, ASK)
    assert caught.value.reason == reason and caught.value.usage == {"input_tokens": 15, "output_tokens": 3}


def test_a_claude_that_asked_for_permission_fails_saying_so() -> None:
    report = {
        "type": "result",
        "subtype": "success",
        "result": "I need to edit",
        "usage": USAGE,
        "permission_denials": [{"tool_name": "Edit"}, {"tool_name": "Bash"}],
    }
    with pytest.raises(LlmError) as caught:
        cli.claude_result(report, cli.Ask("x", 5, None, autonomous=False))
    assert caught.value.reason == "needs_permission" and "Bash, Edit" in caught.value.message


def test_changed_files_compare_contents(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("1")
    (tmp_path / "b.py").write_text("2")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    before = cli.snapshot(tmp_path)
    (tmp_path / "a.py").write_text("one")
    (tmp_path / "b.py").unlink()
    (tmp_path / "c.py").write_text("3")
    (tmp_path / ".git" / "HEAD").write_text("y")
    assert cli.changed(before, cli.snapshot(tmp_path)) == ["a.py", "b.py", "c.py"]


async def test_a_missing_cli_is_unstartable(tmp_path: Path) -> None:
    async with FakeProvider() as fake:
        provider = {"name": "fake", **msgspec.to_builtins(endpoint(fake).config)}
        env = {"FLOWYARD_LLM_PROVIDER": json.dumps(provider), "PATH": str(tmp_path)}
        out, code = await cli.amain("claude-code", json.dumps({"prompt": "fix"}), env, tmp_path)
    assert code == 1 and out["error"]["reason"] == "unstartable"


async def test_doctor_probe_says_what_is_wrong() -> None:
    from shared.llm.client import probe

    async with FakeProvider() as fake:
        assert await probe(endpoint(fake)) is None
        assert fake.seen[0].path == "/v1/models" and fake.seen[0].headers["x-api-key"] == KEY
        fake.script[:] = [error(401)]
        assert "refused the key (HTTP 401)" in str(await probe(endpoint(fake, "openai-compatible")))
        assert fake.seen[1].path == "/v1/models"  # base_url …/v1 + /models
    assert "could not be reached" in str(await probe(endpoint(fake)))
