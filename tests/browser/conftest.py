"""The web UI in a real browser: Debian's chromium driven by Playwright, against the gateway and
the services as separate processes on a real nats-server (tests/integration's stack)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakellm import FakeProvider, Threaded
from tests.integration.gateway import TOKENS, gateway_stack

CHROMIUM = "/usr/bin/chromium"
WORKFLOWS = Path(__file__).parent / "workflows" / "ui.yaml"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _missing(what: str) -> None:
    if os.environ.get("FLOWYARD_REQUIRE_SERVERS"):
        pytest.fail(f"{what} is needed for the browser tests; .ci/run installs it")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="session", autouse=True)
def patient_assertions() -> None:
    """Playwright's assertions wait for the page; 5 s by default is a bet on an idle machine (a run
    of the suite shares two cores with every service): wait as long as actions do."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        return  # the browser fixture says what is missing
    expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        _missing("chromium (Debian's package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (the dev extra)")
        raise
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        yield b
        b.close()


def api(
    base: str, method: str, path: str, user: str, body: bytes | None = None, ctype: str = "application/json"
) -> object:
    request = urllib.request.Request(
        base + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {TOKENS[user]}", "Content-Type": ctype},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="session")
def model() -> Iterator[FakeProvider]:
    """The planning model: a fake Anthropic provider on loopback, scripted by the tests."""
    with Threaded(1) as (started,):
        yield started


@pytest.fixture(scope="session")
def gateway(nats_binary: str, tmp_path_factory: pytest.TempPathFactory, model: FakeProvider) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("ui")
    planning = (
        f"llm:\n  providers:\n    ui-model: {{kind: anthropic, base_url: '{model.url}', default_model: claude-ui, "
        "max_retries: 0}\nplanner:\n  llm: {provider: ui-model}\n"
    )
    with gateway_stack(workdir, planning) as (_, base):
        api(base, "POST", "/v1/workflows", "olga", WORKFLOWS.read_bytes(), "application/yaml")
        yield base
    shutil.rmtree(workdir, ignore_errors=True)
