"""Journeys through the web UI in headless Chromium: sign in, start a workflow from its form and
watch it succeed live, read a failed step's error and log, approve and reject, what a viewer may
not do, sign out; the XSS, accessibility and phone-width checks; the screenshots in docs/."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.fakellm import structured
from tests.integration.gateway import TOKENS

from .conftest import DOCS, api

PAYLOAD = "<img src=x onerror=alert(1)>"


@pytest.fixture
def page(browser: Any, gateway: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=gateway)
    p = context.new_page()
    p.set_default_timeout(30_000)
    yield p
    context.close()


def sign_in(page: Page, user: str) -> None:
    page.goto("/")
    page.get_by_label("API token").fill(TOKENS[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def start(gateway: str, workflow: str, user: str = "olga", inputs: dict[str, Any] | None = None) -> str:
    body = json.dumps({"workflow": workflow, "inputs": inputs or {}}).encode()
    return str(api(gateway, "POST", "/v1/runs", user, body)["run_id"])  # type: ignore[index]


def pending_approval(gateway: str, run_id: str) -> dict[str, Any]:
    for _ in range(300):
        found = [a for a in api(gateway, "GET", "/v1/approvals?status=pending", "admin") if a["run_id"] == run_id]  # type: ignore[union-attr]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no approval was requested for run {run_id}")


def test_sign_in_run_from_the_form_watch_it_live_and_sign_out(page: Page) -> None:
    sign_in(page, "olga")
    # The token is nowhere the page keeps things, and never in a URL.
    stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}, location.href])")
    assert TOKENS["olga"] not in stored
    page.get_by_role("link", name="Workflows").click()
    page.get_by_role("link", name="ui-hello").click()
    # Validated before submit: the required input, and a typed one.
    page.get_by_role("button", name="Start run").click()
    expect(page.locator("#in-who-help")).to_have_text("must be required")
    page.get_by_label("who").fill("ops")
    page.get_by_label("times").fill("two")
    page.get_by_role("button", name="Start run").click()
    expect(page.locator("#in-times-help")).to_have_text("must be a whole number")
    page.get_by_label("times").fill("2")
    page.get_by_role("button", name="Start run").click()
    # The run page: the DAG reaches succeeded live, without a reload.
    expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
    expect(page.locator("g.node[data-node='again']")).to_have_class("node s-succeeded critical")
    expect(page.locator("text=hello hello ops")).to_be_visible()
    DOCS.mkdir(exist_ok=True)
    page.locator("g.node[data-node='greet']").click()
    expect(page.locator("pre.log")).to_contain_text("greeting ops")
    page.get_by_text("Input (secrets masked)").click()
    expect(page.get_by_role("complementary", name="step greet")).to_contain_text('"who": "ops"')
    page.screenshot(path=str(DOCS / "ui-run.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token")).to_be_visible()
    # Signed out on the server: the API no longer takes the old cookie.
    assert page.evaluate("() => fetch('/v1/runs').then(r => r.status)") == 401


def test_runs_list_updates_live_and_filters(page: Page, gateway: str) -> None:
    sign_in(page, "vic")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    run_id = start(gateway, "ui-hello", inputs={"who": "live"})
    row = page.locator(f"tr[data-run='{run_id}']")
    expect(row).to_be_visible()  # arrived through the events stream, no reload
    expect(row.locator(".badge")).to_have_text("succeeded")
    page.get_by_label("Status").select_option("failed")
    expect(row).to_have_count(0)


def test_a_failed_step_says_why_and_shows_its_log(page: Page, gateway: str) -> None:
    run_id = start(gateway, "ui-broken")
    sign_in(page, "olga")
    page.goto(f"/#/runs/{run_id}")
    expect(page.get_by_test_id("run-status")).to_have_text("failed")
    page.get_by_role("button", name="second").first.click()
    panel = page.get_by_role("complementary", name="step second")
    expect(panel.get_by_role("alert")).to_contain_text("exit")
    expect(panel.locator("pre.log")).to_contain_text("disk /var is full on db-3")
    # An operator may retry it; the retry is a new run of its own.
    page.get_by_role("button", name="Retry run").click()
    expect(page).not_to_have_url(f"/#/runs/{run_id}")


def test_a_capability_step_shows_its_routing(page: Page, gateway: str) -> None:
    run_id = start(gateway, "ui-routed")
    sign_in(page, "olga")
    page.goto(f"/#/runs/{run_id}")
    expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
    page.get_by_role("button", name="fix").first.click()
    panel = page.get_by_role("complementary", name="step fix")
    expect(panel).to_contain_text("ui_fix (ui-a-limited, ui-b-fixer)")
    tried = panel.get_by_role("list", name="candidates tried").get_by_role("listitem")
    expect(tried).to_have_count(2)
    expect(tried.nth(0)).to_contain_text("ui-a-limited failed rate_limited:")
    expect(tried.nth(1)).to_contain_text("ui-b-fixer chosen")


def test_approve_and_reject_in_the_inbox(page: Page, gateway: str) -> None:
    approve_run = start(gateway, "ui-gated", inputs={"version": "1.0"})
    reject_run = start(gateway, "ui-gated", inputs={"version": "2.0"})
    first, second = pending_approval(gateway, approve_run), pending_approval(gateway, reject_run)
    sign_in(page, "amy")
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f"article[data-approval='{first['id']}']")
    expect(card).to_contain_text("approved 0 of 1")
    expect(card).to_contain_text("expires in")
    page.screenshot(path=str(DOCS / "ui-approvals.png"), full_page=True)
    card.get_by_label("Comment (optional)").fill("looks right")
    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0)
    page.goto(f"/#/runs/{approve_run}")
    expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
    # A rejection needs a reason; with one, the run stops.
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f"article[data-approval='{second['id']}']")
    card.get_by_role("button", name="Reject").click()
    expect(card.get_by_role("alert")).to_contain_text("needs a reason")
    card.get_by_label("Reason (required to reject)").fill("wrong window")
    card.get_by_role("button", name="Reject").click()
    expect(card).to_have_count(0)
    page.goto(f"/#/runs/{reject_run}")
    expect(page.get_by_test_id("run-status")).to_have_text("failed")


def test_a_refusal_is_shown_in_the_approvers_words(page: Page, gateway: str) -> None:
    run_id = start(gateway, "ui-gated", user="ops")
    approval = pending_approval(gateway, run_id)
    sign_in(page, "ops")  # an approver of it, but it is ops's own run: no self-approval
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f"article[data-approval='{approval['id']}']")
    card.get_by_role("button", name="Approve").click()
    expect(card.get_by_role("alert")).to_contain_text("started this run and may not approve its steps")


def test_a_viewer_gets_no_buttons_and_the_api_refuses_them_anyway(page: Page, gateway: str) -> None:
    run_id = start(gateway, "ui-gated", inputs={"version": "3.0"})
    approval = pending_approval(gateway, run_id)
    sign_in(page, "vic")
    page.goto(f"/#/runs/{run_id}")
    expect(page.get_by_test_id("run-status")).to_have_text("waiting")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f"article[data-approval='{approval['id']}']")
    expect(card).to_be_visible()
    expect(card.get_by_role("button", name="Approve")).to_have_count(0)
    page.get_by_role("link", name="Workflows").click()
    page.get_by_role("link", name="ui-hello").click()
    expect(page.get_by_role("button", name="Start run")).to_have_count(0)
    # The same calls made by hand from the page, with the session's CSRF token: refused by role.
    status = page.evaluate(
        """async (id) => {
            const s = await (await fetch('/v1/session')).json();
            const r = await fetch('/v1/approvals/' + id + '/approve', {method: 'POST',
                headers: {'X-CSRF-Token': s.csrf_token, 'Content-Type': 'application/json'}, body: '{}'});
            return r.status;
        }""",
        approval["id"],
    )
    assert status == 403
    api(gateway, "POST", f"/v1/runs/{run_id}/cancel", "olga")


def test_markup_from_workflows_agents_and_events_is_shown_as_text(page: Page, gateway: str) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    run_id = start(gateway, "ui-evil")
    approval = pending_approval(gateway, run_id)
    sign_in(page, "amy")
    for where in (f"/#/runs/{run_id}", "/#/approvals", "/#/workflows/ui-evil", "/#/workflows", "/#/agents", "/#/runs"):
        page.goto(where)
        page.wait_for_load_state("networkidle")
    page.goto(f"/#/runs/{run_id}")
    page.locator("g.node[data-node='markup']").click()
    expect(page.locator("pre.log")).to_contain_text(PAYLOAD)
    page.goto("/#/approvals")
    card = page.locator(f"article[data-approval='{approval['id']}']")
    expect(card).to_contain_text(PAYLOAD)
    # The step before the gated one is its preview: shown, as text too.
    expect(card.get_by_text("Preview: what the steps before it produced")).to_be_visible()
    expect(card.locator("h3", has_text="markup")).to_be_visible()
    page.goto("/#/workflows")
    expect(page.locator("td", has_text=PAYLOAD)).to_be_visible()
    assert dialogs == []
    assert page.locator("img").count() == 0  # nothing became an element
    api(gateway, "POST", f"/v1/runs/{run_id}/cancel", "olga")


def test_security_headers_on_the_page(page: Page, gateway: str) -> None:
    response = page.goto("/")
    assert response is not None
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert headers["x-frame-options"] == "DENY"


def test_no_serious_accessibility_violations_on_the_main_pages(page: Page, gateway: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    run_id = start(gateway, "ui-broken")
    gated = start(gateway, "ui-gated", inputs={"version": "4.0"})
    pending_approval(gateway, gated)
    axe = Axe()
    page.goto("/")
    found = {"sign-in": axe.run(page)}
    sign_in(page, "admin")
    for name, where in (
        ("runs", "/#/runs"),
        ("run", f"/#/runs/{run_id}"),
        ("approvals", "/#/approvals"),
        ("workflows", "/#/workflows"),
        ("workflow", "/#/workflows/ui-hello"),
        ("agents", "/#/agents"),
        ("audit", "/#/audit"),
    ):
        page.goto(where)
        page.wait_for_load_state("networkidle")
        found[name] = axe.run(page)
    bad = {
        name: [
            (v["id"], v["impact"], v["help"])
            for v in result.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        for name, result in found.items()
    }
    assert not any(bad.values()), bad
    api(gateway, "POST", f"/v1/runs/{gated}/cancel", "olga")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_phone_width_page_does_not_scroll_sideways(browser: Any, gateway: str, scheme: str) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, base_url=gateway, color_scheme=scheme)
    page = context.new_page()
    try:
        run_id = start(gateway, "ui-hello", inputs={"who": "phone"})
        sign_in(page, "olga")
        for where in ("/#/runs", f"/#/runs/{run_id}", "/#/approvals", "/#/workflows/ui-hello"):
            page.goto(where)
            page.wait_for_load_state("networkidle")
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 360, f"{where} is {width}px wide at 360px ({scheme})"
    finally:
        context.close()


def test_a_workflows_versions_and_definition(page: Page, gateway: str) -> None:
    first = (
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: ui-versions, description: first cut}\n"
        "spec:\n  nodes:\n    - {id: a, agent: ui-greeter, with: {who: one}}\n"
    )
    api(gateway, "POST", "/v1/workflows", "olga", first.encode(), "application/yaml")
    api(gateway, "POST", "/v1/workflows", "olga", first.replace("first cut", "second cut").encode(), "application/yaml")
    sign_in(page, "vic")
    page.goto("/#/workflows/ui-versions")
    expect(page.locator("pre")).to_contain_text("description: second cut")
    page.get_by_label("Version").select_option("1")
    expect(page.locator("pre")).to_contain_text("description: first cut")


def test_no_serious_accessibility_violations_in_the_dark(browser: Any, gateway: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=gateway, color_scheme="dark")
    page = context.new_page()
    try:
        run_id = start(gateway, "ui-broken")
        sign_in(page, "admin")
        found = {}
        for where in ("/#/runs", f"/#/runs/{run_id}", "/#/approvals", "/#/workflows/ui-hello"):
            page.goto(where)
            page.wait_for_load_state("networkidle")
            if where.startswith("/#/runs/"):
                page.locator("g.node[data-node='second']").click()
            result = Axe().run(page)
            found[where] = [
                (v["id"], v["impact"]) for v in result.response["violations"] if v["impact"] in ("serious", "critical")
            ]
        assert not any(found.values()), found
    finally:
        context.close()


def test_a_proposed_plan_in_the_inbox_shows_its_graph_yaml_and_rounds(page: Page, gateway: str, model: Any) -> None:
    def workflow(agent: str) -> dict[str, Any]:
        return {
            "apiVersion": "flowyard/v1",
            "kind": "Workflow",
            "metadata": {"name": "ui-planned"},
            "spec": {
                "nodes": [
                    {"id": "hello", "agent": agent, "with": {"who": "on-call"}},
                    {
                        "id": "again",
                        "agent": "ui-greeter",
                        "needs": ["hello"],
                        "with": {"who": "{{ nodes.hello.output.greeting }}"},
                    },
                ]
            },
        }

    model.script[:] = [
        structured({"workflow": workflow("ui-greetr")}),
        structured({"workflow": workflow("ui-greeter"), "explanation": "greet twice"}),
    ]
    body = json.dumps({"goal": "greet the on-call twice"}).encode()
    plan_id = str(api(gateway, "POST", "/v1/plans", "olga", body)["id"])  # type: ignore[index]
    for _ in range(300):
        plan = api(gateway, "GET", f"/v1/plans/{plan_id}", "admin")
        if plan["status"] != "drafting":  # type: ignore[index]
            break
        time.sleep(0.1)
    assert plan["status"] == "proposed", plan  # type: ignore[index]
    sign_in(page, "amy")
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f"article[data-approval='{plan_id}.plan']")
    expect(card).to_contain_text("Plan: ui-planned")
    expect(card).to_contain_text("greet the on-call twice")
    expect(card).to_contain_text("Drafted by claude-ui in 2 round(s)")
    expect(card.locator("svg.dag g.node")).to_have_count(2)
    expect(card.locator("pre")).to_contain_text("agent: ui-greeter")
    expect(card.locator("ol.rounds li").first).to_contain_text("ui-greetr")
    expect(card.locator("ol.rounds li").nth(1)).to_have_text("valid")
    card.locator("svg.dag g.node[data-node='again']").click()
    expect(card).to_contain_text("again: ui-greeter with")
    card.screenshot(path=str(DOCS / "ui-plan.png"))
    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0)
    for _ in range(300):
        plan = api(gateway, "GET", f"/v1/plans/{plan_id}", "admin")
        if plan["status"] != "proposed":  # type: ignore[index]
            break
        time.sleep(0.1)
    assert plan["status"] == "approved" and plan["decided_by"] == ["amy"], plan  # type: ignore[index]
