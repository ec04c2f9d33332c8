"""The egress proxy's rules: what each allowlist entry lets through, and reading its refusals."""

from __future__ import annotations

import re

import pytest

from services.executor.runtimes import egressrules
from shared.workflow.loader import load_bundle
from shared.workflow.routing import agent_problems


def allowed(allow: list[str], request: str) -> bool:
    # tinyproxy matches case-insensitively with POSIX extended expressions; these patterns use
    # nothing Python reads differently.
    return any(re.search(p, request, re.IGNORECASE) for p in egressrules.filter_lines(allow))


@pytest.mark.parametrize(
    ("allow", "asked", "expected"),
    [
        (["api.anthropic.com:443"], "api.anthropic.com:443", True),
        (["api.anthropic.com:443"], "API.Anthropic.com:443", True),
        (["api.anthropic.com:443"], "api.anthropic.com:8443", False),
        (["api.anthropic.com:443"], "evil-api.anthropic.com:443", False),
        (["api.anthropic.com:443"], "api.anthropic.com.evil.net:443", False),
        (["api.anthropic.com:443"], "apixanthropic.com:443", False),  # the dots are literal
        (["*.example.com:443"], "a.b.example.com:443", True),
        (["*.example.com:443"], "example.com:443", False),
        (["*.example.com:443"], "badexample.com:443", False),
        (["10.0.0.5:8080"], "http://10.0.0.5:8080/v1/messages", True),
        (["10.0.0.5:8080"], "http://10.0.0.5:80801/", False),
        (["10.0.0.5:8080"], "http://10.0.0.5:8080.evil/", False),
        (["ollama:80"], "http://ollama/api", True),
        (["ollama:80"], "http://ollama:80/api", True),
        (["ollama:80"], "http://ollamaX/api", False),
    ],
)
def test_each_entry_allows_exactly_its_host_and_port(allow: list[str], asked: str, expected: bool) -> None:
    assert allowed(allow, asked) is expected


def test_the_configuration_denies_by_default_and_logs_what_it_refuses() -> None:
    conf = egressrules.config()
    assert "FilterDefaultDeny Yes" in conf and "FilterURLs On" in conf and "FilterType ere" in conf
    assert f"Port {egressrules.PORT}" in conf and "ConnectPort" not in conf and "LogLevel Info" in conf


def test_refusals_are_read_from_the_log_with_their_hosts() -> None:
    text = (
        'NOTICE    Dec 07 02:40:12.721 [1]: Proxying refused on filtered url "nope.example:443"\n'
        'NOTICE    Dec 07 02:40:13.000 [1]: Proxying refused on filtered url "http://10.1.2.3:8089/x"\n'
        'NOTICE    Dec 07 02:40:14.000 [1]: Proxying refused on filtered url "Nope.Example:443"\n'
        'NOTICE    Dec 07 02:40:15.000 [1]: Proxying refused on filtered url "http://plain.example/"\n'
        "CONNECT   Dec 07 02:40:12.707 [1]: Request (file descriptor 4): GET http://ok/ HTTP/1.1\n"
    )
    assert egressrules.refusals(text) == ["nope.example:443", "10.1.2.3:8089", "plain.example:80"]
    assert len(egressrules.refusals(text, every=True)) == 4


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("https://api.anthropic.com", "api.anthropic.com:443"),
        ("https://api.openai.com/v1", "api.openai.com:443"),
        ("http://localhost:11434/v1", "localhost:11434"),
        ("http://vllm.internal/v1", "vllm.internal:80"),
    ],
)
def test_a_providers_base_url_is_one_entry(url: str, entry: str) -> None:
    assert egressrules.provider_entry(url) == entry


def agent(network: str, llm: bool = False) -> str:
    return f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: a}}\nspec:\n  image: x\n  network: {network}\n" + (
        "  llm: {}\n" if llm else ""
    )


def problems_of(text: str) -> list[str]:
    return agent_problems(load_bundle(text, "a.yaml").agents["a"], "a.yaml")


def test_provider_true_needs_an_llm_agent_and_an_allowlist_needs_something() -> None:
    assert problems_of(agent("{provider: true}", llm=True)) == []
    assert problems_of(agent("{allow: [api.example.com:443], provider: true}", llm=True)) == []
    (why,) = problems_of(agent("{provider: true}"))
    assert "provider: true needs spec.llm" in why
    (why,) = problems_of(agent("{allow: []}"))
    assert "spec.network.allow is empty" in why and "provider: true" in why
    (why,) = problems_of(agent("{allow: ['api.example.com']}"))
    assert "must be host:port" in why
