"""Chaos trials: every service as its own process, one SIGKILLed at a uniformly random moment of a
run that exercises it and restarted after a random 0-2 s; the run must end right, every side
effect must have happened exactly once, and its notification must reach the sink exactly once.

Seeded: the seed is printed, ``FLOWYARD_TEST_SEED`` replays every trial's kill moment and pause;
``FLOWYARD_CHAOS_TRIALS`` sets how many trials per service (20 in the chaos tier).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.bus.server import NatsServer
from shared.contract.permissions import SERVICES
from tests.integration.stack import Stack

SEED = int(os.environ.get("FLOWYARD_TEST_SEED", random.randrange(2**32)))
WORKFLOWS = Path(__file__).parent / "workflows" / "chaos.yaml"
TOKEN = "chaos-operator-token-0123456789"
APPROVER = "amy"
# What each workflow must end with, and the marker files its agents leave (one line per execution).
EXPECTED = {
    "chaos-diamond": ({"total": 8}, ("a", "b", "c", "f0", "f1", "f2", "e")),
    "chaos-gate": ({"total": 3}, ("a", "deploy", "after")),
    "chaos-warm": ({"total": 8}, ("a", "b", "c", "f0", "f1", "f2", "e")),
}


def trials(default: int) -> int:
    return int(os.environ.get("FLOWYARD_CHAOS_TRIALS", default))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """A webhook receiver that, like a careful one, keeps each delivery id once and counts repeats."""

    def __init__(self) -> None:
        self.deliveries: dict[str, list[dict[str, Any]]] = {}  # X-Flowyard-Delivery -> bodies
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with sink.cond:
                    sink.deliveries.setdefault(self.headers["X-Flowyard-Delivery"], []).append(body)
                    sink.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_run(self, run_id: str) -> dict[str, int]:
        """Delivery id -> how many times it arrived, for this run's notices."""
        with self.cond:
            return {k: len(v) for k, v in self.deliveries.items() if v[0].get("run_id") == run_id}

    def wait_for(self, run_id: str, timeout: float = 60) -> dict[str, int]:
        with self.cond:
            self.cond.wait_for(lambda: self.for_run(run_id), timeout)
        return self.for_run(run_id)


class Chaos:
    """The whole stack (every service, the gateway on a fixed port, a webhook sink) on one nats-server."""

    def __init__(self, workdir: Path, *, extra_config: str = "", **env: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.sink = Sink()
        self.gateway_port = free_port()
        config = workdir / "flowyard.yaml"
        config.write_text(
            f"""
gateway:
  port: {self.gateway_port}
  data_dir: {workdir}
  users:
    olga: {{token_secret: OLGA_TOKEN, roles: [operator]}}
notifier:
  backoff: 100ms
  max_backoff: 500ms
  sinks:
    hook: {{type: webhook, url: "http://127.0.0.1:{self.sink.port}/hook"}}
  rules:
    - {{on: [run.succeeded, run.failed], workflows: ["chaos-*"], sinks: [hook]}}
"""
            + extra_config
        )
        self.server = NatsServer(workdir / "nats").start()
        self.stack = Stack(self.server, workdir, FLOWYARD_CONFIG=str(config), FLOWYARD_SECRET_OLGA_TOKEN=TOKEN, **env)
        self.url = f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> Chaos:
        for name in SERVICES:
            self.stack.start(name)
        done = self.stack.cli("workflows", "apply", str(WORKFLOWS))
        assert done.returncode == 0, done.stderr
        return self

    def stop(self) -> None:
        self.stack.stop_all()
        self.server.stop()
        self.sink.server.shutdown()

    def kill(self, victim: str) -> None:
        if victim == "nats":
            self.server.kill()
        else:
            self.stack.kill(victim, signal.SIGKILL)

    def restart(self, victim: str) -> None:
        if victim == "nats":
            self.server.restart()
        else:
            self.stack.start(victim)

    # --- ways a run is started and followed --------------------------------------------------

    def run_cli(self, workflow: str, markers: Path) -> Callable[[], dict[str, Any]]:
        proc = self.stack.cli_background(
            "run", str(WORKFLOWS), "--workflow", workflow, "-i", f"dir={markers}", "--as", "carol", "--json"
        )

        def result() -> dict[str, Any]:
            out, err = proc.communicate(timeout=180)
            assert out.strip(), f"flowyard run printed nothing (exit {proc.returncode}): {err}"
            return dict(json.loads(out))

        return result

    def run_api(self, workflow: str, markers: Path) -> Callable[[], dict[str, Any]]:
        """POST with an Idempotency-Key, retried through the gateway's death; then poll to the end."""
        key = f"chaos-{markers.name}"
        box: dict[str, Any] = {}

        def go() -> None:
            body = json.dumps({"workflow": workflow, "inputs": {"dir": str(markers)}}).encode()
            started = self._call("POST", "/v1/runs", body, {"Idempotency-Key": key})
            run_id = started["run_id"]
            box["run_ids"] = {run_id}
            while True:
                view = self._call("GET", f"/v1/runs/{run_id}")
                if view["status"] not in ("pending", "running"):
                    box["view"] = view
                    # A repeat of the same request after the end still names the same run.
                    again = self._call("POST", "/v1/runs", body, {"Idempotency-Key": key})
                    box["run_ids"].add(again["run_id"])
                    return
                time.sleep(0.1)

        thread = threading.Thread(target=go, daemon=True)
        thread.start()

        def result() -> dict[str, Any]:
            thread.join(180)
            assert "view" in box, "the run did not end within 180 s"
            assert len(box["run_ids"]) == 1, f"one Idempotency-Key gave runs {box['run_ids']}"
            return box["view"]

        return result

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        """One API call, retried while the gateway is down (refused) or died mid-request."""
        deadline = time.monotonic() + 120
        while True:
            request = urllib.request.Request(
                self.url + path,
                data=body,
                method=method,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(headers or {})},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from None
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: the gateway did not answer for 120 s")
            time.sleep(0.1)

    def approve_when_asked(self, markers: Path) -> threading.Thread:
        """A person who approves the run's request as soon as it is listed, retrying while the
        approver is away; a reply that it was already granted counts as done."""

        def go() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                listed = self.stack.cli("approvals", "list", "--json")
                mine = [
                    a
                    for a in (json.loads(listed.stdout) if listed.returncode == 0 else [])
                    if a["inputs"].get("dir") == str(markers)
                ]
                if mine and mine[0]["status"] != "pending":
                    return
                if mine:
                    done = self.stack.cli("approvals", "approve", mine[0]["id"], "--as", APPROVER, "--json")
                    if done.returncode == 0 or '"decided"' in done.stdout:
                        return
                time.sleep(0.2)

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread


@dataclass
class Scenario:
    """How a trial's run is started, and how long a run of it takes (kills fall in that window)."""

    workflow: str
    window: float
    via: str = "cli"  # or "api"
    notes: list[str] = field(default_factory=list)


def run_trials(chaos: Chaos, victim: str, scenario: Scenario, count: int) -> None:
    rng = random.Random(f"{SEED}:{victim}:{scenario.workflow}:{scenario.via}")
    print(f"seed {SEED}: {count} trials killing {victim} (FLOWYARD_TEST_SEED={SEED} replays them)")
    repeats = 0
    for trial in range(count):
        at = rng.uniform(0, scenario.window)
        down = rng.uniform(0, 2)
        where = f"{victim} trial {trial} (seed {SEED}): killed {at:.2f} s into the run, down {down:.2f} s"
        markers = chaos.workdir / f"{victim}-{scenario.workflow}-{trial}-{time.time_ns()}"
        markers.mkdir()
        result = (chaos.run_api if scenario.via == "api" else chaos.run_cli)(scenario.workflow, markers)
        approving = chaos.approve_when_asked(markers) if scenario.workflow == "chaos-gate" else None
        time.sleep(at)
        chaos.kill(victim)
        time.sleep(down)
        chaos.restart(victim)
        try:
            ended = result()
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        repeats += check(chaos, scenario.workflow, markers, ended, where)
        if approving is not None:
            approving.join(30)
    print(f"{victim}: {count} trials passed; {repeats} notification(s) arrived again under the same delivery id")


def check(chaos: Chaos, workflow: str, markers: Path, result: dict[str, Any], where: str) -> int:
    """Assert the run's outcome and its side effects; return how many notification repeats the sink saw."""
    outputs, names = EXPECTED[workflow]
    assert result["status"] == "succeeded", f"{where}: {result.get('error')}\n{json.dumps(result)[:3000]}"
    assert result["outputs"] == outputs, where
    for name in names:
        path = markers / name
        lines = path.read_text().splitlines() if path.exists() else []
        assert lines == ["1"], f"{where}: {name} ran {len(lines)} times (attempts {lines})"
    for nid, node in result["nodes"].items():
        assert node["attempts"] == 1, f"{where}: node {nid} took {node['attempts']} attempts"
    deliveries = chaos.sink.wait_for(result["run_id"])
    assert len(deliveries) == 1, f"{where}: the run's notice arrived under {len(deliveries)} delivery ids"
    return sum(deliveries.values()) - 1
