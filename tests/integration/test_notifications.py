"""Notifications to a real HTTP server and a real SMTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from shared.bus.server import NatsServer

from .stack import Stack

WORKFLOWS = Path(__file__).parent / "workflows"
KEY = "hook-signing-key-123"


class Hooks:
    """An HTTP server that records what it is sent; /flaky fails twice before it accepts."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.flaky_calls = 0
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/flaky":
                    hooks.flaky_calls += 1
                    if hooks.flaky_calls <= 2:
                        self.send_response(503)
                        self.end_headers()
                        return
                hooks.received.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, _, body in self.received if p == path]


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Hooks, Mailbox]]:
    workdir = tmp_path_factory.mktemp("notify")
    hooks = Hooks()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    config = workdir / "flowyard.yaml"
    config.write_text(f"""
notifier:
  attempts: 4
  backoff: 100ms
  max_backoff: 300ms
  sinks:
    hook: {{type: webhook, url: "http://127.0.0.1:{hooks.port}/hook", signing_secret: HOOK_KEY}}
    chat: {{type: slack, url_secret: SLACK_URL}}
    flaky: {{type: webhook, url: "http://127.0.0.1:{hooks.port}/flaky"}}
    dead: {{type: webhook, url: "http://127.0.0.1:{free_port()}/gone"}}
    mail: {{type: smtp, host: 127.0.0.1, port: {smtp.port}, sender: flowyard@example.com, to: [oncall@example.com]}}
    audit: {{type: log}}
  rules:
    - {{on: [run.failed, run.succeeded], workflows: ["fail*", "garbage"], sinks: [hook, mail, audit]}}
    - {{on: [node.failed], sinks: [flaky, chat]}}
    - {{on: [run.failed], workflows: [garbage], sinks: [dead]}}
""")
    server = NatsServer(workdir / "nats").start()
    s = Stack(
        server,
        workdir,
        FLOWYARD_CONFIG=str(config),
        FLOWYARD_SECRET_HOOK_KEY=KEY,
        FLOWYARD_SECRET_SLACK_URL=f"http://127.0.0.1:{hooks.port}/slack",
    )
    try:
        for name in ("planner", "scheduler", "executor", "notifier"):
            s.start(name)
        yield s, hooks, mailbox
    finally:
        s.stop_all()
        server.stop()
        smtp.stop()
        hooks.server.shutdown()


def wait(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("not delivered in time")


def test_webhook_slack_and_mail_get_the_right_content(setup: tuple[Stack, Hooks, Mailbox]) -> None:
    stack, hooks, mailbox = setup
    code, result, _ = stack.run_json(str(WORKFLOWS / "failing.yaml"))
    assert code == 1
    wait(lambda: hooks.bodies("/hook") and mailbox.messages and hooks.bodies("/slack"))
    (body,) = [b for b in hooks.bodies("/hook") if b["run_id"] == result["run_id"]]
    assert body["type"] == "run.failed" and body["workflow"] == "failing" and body["status"] == "failed"
    assert "node 'b' failed: exited with code 3" in body["summary"] and body["failed_nodes"] == ["b"]
    _, headers, raw = next(x for x in hooks.received if x[0] == "/hook")
    expected = "sha256=" + hmac.new(KEY.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["X-Flowyard-Signature"] == expected and headers["X-Flowyard-Event"] == "run.failed"
    mail = mailbox.messages[0]
    assert mail.rcpt_tos == ["oncall@example.com"]
    text = mail.content.decode()
    assert "Subject: [flowyard] failing: run.failed" in text and "exited with code 3" in text
    slack = hooks.bodies("/slack")[0]
    assert "*failing*" in slack["text"] and "Node b of workflow failing" in slack["text"]


def test_a_sink_that_fails_twice_then_recovers_gets_exactly_one_delivery(setup: tuple[Stack, Hooks, Mailbox]) -> None:
    _, hooks, _ = setup
    wait(lambda: hooks.bodies("/flaky"))
    time.sleep(1.5)  # room for any duplicate to arrive
    flaky = hooks.bodies("/flaky")
    assert len(flaky) == 1 and hooks.flaky_calls == 3
    assert flaky[0]["type"] == "node.failed" and flaky[0]["node"] == "b" and flaky[0]["attempts"] == 1


def test_a_sink_that_never_recovers_is_given_up_visibly(setup: tuple[Stack, Hooks, Mailbox]) -> None:
    stack, _, _ = setup
    code, result, _ = stack.run_json(str(WORKFLOWS / "garbage.yaml"))
    assert code == 1
    log = stack.wait_for_log("notifier", "notification given up")
    line = next(json.loads(x) for x in log.splitlines() if "notification given up" in x)
    assert line["sink"] == "dead" and line["attempts"] == 4 and "cannot reach the sink" in line["error"]
    assert "/gone" not in line["error"]  # webhook URLs are secrets: never in logs
    # ... and the failure is an event in the run's audit log.
    import asyncio

    from shared.bus.connection import Bus
    from shared.config.settings import BusConfig, NatsConfig
    from shared.contract.messages import NotificationFailed, decode_event

    async def read() -> NotificationFailed:
        bus = Bus(NatsConfig(url=stack.server.url), BusConfig(), name="t")
        await bus.connect()
        msg = await bus.js.get_last_msg("FY_RUNS", f"fy.run.{result['run_id']}.notification.failed")
        await bus.close()
        event = decode_event(msg.data or b"")
        assert isinstance(event, NotificationFailed)
        return event

    failure = asyncio.run(read())
    assert failure.sink == "dead" and failure.event_type == "run.failed" and failure.attempts == 4


def test_bad_notifier_configuration_is_refused_with_the_reason(tmp_path: Path) -> None:
    from shared.config.settings import load_config
    from shared.contract.errors import ConfigurationError

    path = tmp_path / "c.yaml"
    path.write_text("notifier:\n  sinks: {a: {type: webhook}}\n  rules: [{on: [run.failed], sinks: [b]}]\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(path, env={})
    assert "unknown sink 'b'" in str(info.value) or "needs url or url_secret" in str(info.value)
