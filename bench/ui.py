"""The web UI's figures, measured in headless Chromium (Debian's, driven by Playwright).

    .venv/bin/python bench/ui.py [--runs 1000] [--repeat 5]

Starts a nats-server and every service as its own process (process agents), registers three
workflows through the REST API, fills the registry with ``--runs`` finished runs, signs in
through the page, and measures:

  runs page      navigation to the runs page until its table is drawn and the page is idle
  200-node run   navigation to a run of 200 steps until all 200 are drawn in the graph
  status change  a step's end on the bus (its task.succeeded message, seen by a NATS subscriber
                 in this process) until the page shows the step succeeded (a MutationObserver in
                 the page); both clocks are this machine's

Prints median and p95 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import pct, quiet_env, start_with_gateway, stop_all  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402

TOKEN = "ui-bench-admin-0123456789abcdefghij"
CHROMIUM = "/usr/bin/chromium"


def workflows() -> str:
    quick = "command: [python3, -c, \"print('{}')\"]"
    slow = "command: [python3, -c, \"import time; time.sleep(1.5); print('{}')\"]"
    wide = "".join(
        f"    - {{id: s{layer}-{i}, agent: b-quick" + (f", needs: [s{layer - 1}-{i}]" if layer else "") + "}\n"
        for layer in range(20)
        for i in range(10)
    )
    return (
        f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: b-quick}}\nspec:\n  {quick}\n---\n"
        f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: b-slow}}\nspec:\n  {slow}\n---\n"
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: b-one}\nspec:\n  nodes:\n"
        "    - {id: only, agent: b-quick}\n---\n"
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: b-watch}\nspec:\n  nodes:\n"
        "    - {id: first, agent: b-quick}\n    - {id: slow, agent: b-slow, needs: [first]}\n---\n"
        f"apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: b-wide}}\nspec:\n  nodes:\n{wide}"
    )


def call(base: str, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
    request = urllib.request.Request(
        base + path, data=body, method=method, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def run(base: str, workflow: str) -> str:
    return str(call(base, "POST", "/v1/runs", json.dumps({"workflow": workflow}).encode())["run_id"])


def wait_ended(base: str, run_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while call(base, "GET", f"/v1/runs/{run_id}")["status"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not end")
        time.sleep(0.2)


def fill(base: str, count: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda _: run(base, "b-one"), range(count)))
    for run_id in ids[-20:]:
        wait_ended(base, run_id)
    while call(base, "GET", "/v1/runs?status=running&limit=1000"):
        time.sleep(0.5)
    print(f"registry: {count} runs started and finished in {time.monotonic() - started:.0f}s")


def figures(name: str, values: list[float]) -> None:
    print(
        f"{name:<16} median {statistics.median(values):7.0f} ms   p95 {pct(values, 0.95):7.0f} ms   (n={len(values)})"
    )


class Bus:
    """task.succeeded messages as this process hears them: (run, node) -> epoch ms."""

    def __init__(self, url: str) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._subscribe(url), self.loop).result(10)

    async def _subscribe(self, url: str) -> None:
        self.nc = nc = await nats.connect(url)

        async def on(msg: Any) -> None:
            at = time.time() * 1000
            parts = msg.subject.split(".")  # fy.run.RUN.task.NODE.succeeded
            with self.cond:
                self.seen[(parts[2], parts[4])] = at
                self.cond.notify_all()

        async def together(msg: Any) -> None:  # attempt events sent as one task.results message
            at = time.time() * 1000
            events = json.loads(msg.data).get("events", [])
            with self.cond:
                for e in events:
                    if e.get("type") == "task.succeeded":
                        self.seen[(e["run_id"], e["node_id"])] = at
                self.cond.notify_all()

        await nc.subscribe("fy.run.*.task.*.succeeded", cb=on)
        await nc.subscribe("fy.run.*.task.results", cb=together)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)

    def when(self, run_id: str, node: str, timeout: float = 60) -> float:
        with self.cond:
            assert self.cond.wait_for(lambda: (run_id, node) in self.seen, timeout), "no task.succeeded heard"
            return self.seen[(run_id, node)]


def measure(base: str, bus: Bus, repeat: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=base)
        page = context.new_page()
        page.goto("/")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("table.runs tbody tr")
        idle = "() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"

        listing = []
        for _ in range(repeat):
            page.goto("/#/workflows")
            page.wait_for_selector("h1:has-text('Workflows')")
            t0 = time.perf_counter()
            page.goto(f"{base}/?fresh={time.time_ns()}#/runs")  # a full load, as a new tab would
            page.wait_for_selector("table.runs tbody tr:nth-child(50)")
            page.evaluate(idle)
            listing.append((time.perf_counter() - t0) * 1000)
        rows = page.locator("table.runs tbody tr").count()

        wide = run(base, "b-wide")
        wait_ended(base, wide, 300)
        drawing = []
        for _ in range(repeat):
            page.goto("/#/runs")
            page.wait_for_selector("table.runs tbody tr")
            t0 = time.perf_counter()
            page.goto(f"/#/runs/{wide}")
            page.wait_for_function("() => document.querySelectorAll('svg.dag g.node').length === 200")
            page.evaluate(idle)
            drawing.append((time.perf_counter() - t0) * 1000)

        changes = []
        for _ in range(repeat * 2):
            run_id = run(base, "b-watch")
            page.goto(f"/#/runs/{run_id}")
            page.wait_for_selector("g.node[data-node='slow']")
            page.evaluate(
                """() => { window.__shown = null; const seen = () => {
                    const n = document.querySelector("g.node[data-node='slow']");
                    if (n && n.classList.contains('s-succeeded') && window.__shown === null) window.__shown = Date.now(); };
                  new MutationObserver(seen).observe(document.body, {subtree: true, attributes: true, childList: true}); seen(); }"""
            )
            on_bus = bus.when(run_id, "slow")
            page.wait_for_function("() => window.__shown !== null")
            changes.append(page.evaluate("() => window.__shown") - on_bus)
        browser.close()
    print(f"headless Chromium ({CHROMIUM}), 1440x900; the runs page lists the newest {rows} runs")
    figures("runs page", listing)
    figures("200-node run", drawing)
    figures("status change", changes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fy-ui-bench-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats").start()
        config = work / "flowyard.yaml"
        config.write_text(
            "gateway:\n  port: 0\n  rate_limit: {per_minute: 0}\n  users:\n"
            "    ui-bench: {token_secret: UI_BENCH, roles: [admin]}\nexecutor:\n  concurrency: 16\n"
        )
        env = quiet_env(
            {
                "FLOWYARD_NATS_URL": server.url,
                "FLOWYARD_CONFIG": str(config),
                "FLOWYARD_SECRET_UI_BENCH": TOKEN,
                "FLOWYARD_LOG_LEVEL": "info",
                "FLOWYARD_EXECUTOR_STATE_DIR": str(work / "spool"),
            }
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            base = start_with_gateway(work, env, procs)
            call(base, "POST", "/v1/workflows", workflows().encode(), "application/yaml")
            fill(base, args.runs)
            bus = Bus(server.url)
            try:
                measure(base, bus, args.repeat)
            finally:
                bus.close()
        finally:
            stop_all(procs, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
