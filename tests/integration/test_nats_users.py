"""Least-privilege NATS: a nats-server on the configuration `flowyard nats-config` prints, the
streams made by `flowyard nats-bootstrap` as admin, every service and the CLI on its own user.

The whole stack runs a diamond with a fan-out, an approval and a notification without one
permissions violation in the server's log; and each user is refused — a permissions violation,
at once, not a hang — what another service owns. Then the same over TLS with a CA, a server
certificate and a client certificate made here with openssl.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from shared.bus.connection import Bus
from shared.bus.server import NatsServer
from shared.config.settings import BusConfig, NatsConfig, NatsTls
from shared.contract.errors import ConfigurationError, PermanentError
from shared.contract.messages import AgentSnapshot, TaskDispatched, TaskSucceeded
from shared.contract.permissions import SERVICES, USERS
from tests.chaos.harness import EXPECTED, TOKEN, WORKFLOWS, Sink, free_port
from tests.fakellm import Threaded, structured

from .stack import ROOT, Stack
from .test_durability import MANY

PASSWORDS = {f"FLOWYARD_SECRET_NATS_PASSWORD_{u.upper()}": f"pw-{u}-{os.getpid()}-secret" for u in USERS}


def as_user(user: str) -> dict[str, str]:
    return {"FLOWYARD_NATS_USER": user, "FLOWYARD_NATS_PASSWORD_SECRET": f"NATS_PASSWORD_{user.upper()}"}


def nats_config(workdir: Path, *tls: str) -> Path:
    out = workdir / "nats.conf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "nats-config",
            "--store-dir",
            str(workdir / "js"),
            "--monitor-port",
            str(free_port()),
            "-o",
            str(out),
            *tls,
        ],
        cwd=ROOT,
        env={**os.environ, **PASSWORDS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert "pw-" not in out.read_text(), "a password in clear in the server's configuration"
    return out


class UserStack:
    """The services and the CLI, each on its own NATS user."""

    def __init__(self, workdir: Path, server: NatsServer, sink: Sink, config_extra: str = "", **extra: str) -> None:
        self.gateway_port = free_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        config = workdir / "flowyard.yaml"
        config.write_text(
            "gateway:\n"
            f"  port: {self.gateway_port}\n"
            f"  data_dir: {workdir}\n"
            "  users: {olga: {token_secret: OLGA_TOKEN, roles: [operator]}}\n"
            "notifier:\n"
            f"  sinks: {{hook: {{type: webhook, url: 'http://127.0.0.1:{sink.port}/hook'}}}}\n"
            "  rules: [{on: [run.succeeded, run.failed], workflows: ['chaos-*'], sinks: [hook]}]\n" + config_extra
        )
        # Values over 1 KiB travel through the object store, so the users' rights on it are used.
        self.stack = Stack(
            server,
            workdir,
            FLOWYARD_CONFIG=str(config),
            FLOWYARD_BUS_INLINE_BYTES="1024",
            FLOWYARD_SECRET_OLGA_TOKEN=TOKEN,
            **PASSWORDS,
            **extra,
        )
        self.base = dict(self.stack.env)
        self.planning = "planner:" in config_extra  # a planning model is configured

    def start(self) -> UserStack:
        self.stack.env = {**self.base, **as_user("admin")}
        done = self.stack.cli("nats-bootstrap")
        assert done.returncode == 0, done.stderr
        for name in SERVICES:
            self.stack.env = {**self.base, **as_user(name)}
            self.stack.start(name)
        self.stack.env = {**self.base, **as_user("cli")}
        return self


@pytest.fixture(scope="module")
def users(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UserStack, Sink]]:
    workdir = Path(tmp_path_factory.mktemp("nats-users"))
    server = NatsServer(workdir / "nats", config=nats_config(workdir)).start()
    sink = Sink()
    with Threaded(1) as (model,):
        # The planner's model: answers with the chaos diamond under a new name (a drafted plan).
        docs = list(yaml.safe_load_all(WORKFLOWS.read_text()))
        diamond = next(d for d in docs if d["kind"] == "Workflow" and d["metadata"]["name"] == "chaos-diamond")
        model.script[:] = [structured({"workflow": {**diamond, "metadata": {"name": "users-planned"}}})]
        planning = (
            f"llm:\n  providers:\n    planning: {{kind: anthropic, base_url: '{model.url}', default_model: m}}\n"
            "planner:\n  llm: {provider: planning}\n"
        )
        s = UserStack(workdir, server, sink, planning)
        try:
            yield s.start(), sink
        finally:
            s.stack.stop_all()
            server.stop()
            sink.server.shutdown()


def run_all(us: UserStack, sink: Sink, workdir: Path) -> None:
    """A diamond with a fan-out, then a gated run approved through the approver, both notified."""
    cli = us.stack
    assert cli.cli("workflows", "apply", str(WORKFLOWS)).returncode == 0
    for workflow in ("chaos-diamond", "chaos-gate"):
        markers = workdir / f"m-{workflow}-{time.time_ns()}"
        markers.mkdir()
        run = cli.cli_background(
            "run", str(WORKFLOWS), "--workflow", workflow, "-i", f"dir={markers}", "--as", "carol", "--json"
        )
        if workflow == "chaos-gate":
            approval = ""
            deadline = time.monotonic() + 60
            while not approval and time.monotonic() < deadline:
                listed = json.loads(cli.cli("approvals", "list", "--pending", "--json").stdout or "[]")
                approval = next((a["id"] for a in listed if a["inputs"].get("dir") == str(markers)), "")
            done = cli.cli("approvals", "approve", approval, "--as", "amy")
            assert done.returncode == 0, done.stderr
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        result = json.loads(out)
        assert result["outputs"] == EXPECTED[workflow][0]
        assert len(sink.wait_for(result["run_id"])) == 1
    if us.planning:
        plan_and_run(us, workdir)
    assert cli.cli("runs", "list").returncode == 0
    assert cli.cli("logs", result["run_id"]).returncode == 0
    # A fan-out whose list of outputs (about 5 KB) goes through the object store.
    doc = workdir / "many.yaml"
    doc.write_text(MANY)
    markers = workdir / f"ticks-{time.time_ns()}"
    markers.mkdir()
    items = json.dumps(list(range(20)))
    done = cli.cli("run", str(doc), "-i", f"dir={markers}", "-i", f"items={items}", "--json")
    assert done.returncode == 0, done.stderr
    assert [x["i"] for x in json.loads(done.stdout)["outputs"]["all"]] == list(range(20))
    # Through the gateway, on its own user: start a run, read it to its end.
    body = json.dumps({"workflow": "chaos-diamond", "inputs": {"dir": str(markers)}}).encode()
    run_id = http(us.url, "POST", "/v1/runs", body)["run_id"]
    deadline = time.monotonic() + 60
    while (view := http(us.url, "GET", f"/v1/runs/{run_id}"))["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    assert view["status"] == "succeeded" and view["outputs"] == EXPECTED["chaos-diamond"][0]
    assert http(us.url, "GET", "/v1/runs")
    # A browser session: the gateway's user keeps it in fy_sessions.
    signin = urllib.request.Request(
        us.url + "/v1/session",
        data=json.dumps({"token": TOKEN}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(signin, timeout=30) as response:
        cookie = response.headers["Set-Cookie"].split(";")[0]
    with urllib.request.urlopen(urllib.request.Request(us.url + "/v1/runs", headers={"Cookie": cookie})) as r:
        assert json.loads(r.read())


def plan_and_run(us: UserStack, workdir: Path) -> None:
    """A plan asked for through the gateway, approved on the CLI: the planner registers it and runs it."""
    markers = workdir / f"plan-{time.time_ns()}"
    markers.mkdir()
    body = json.dumps({"goal": "run the diamond", "inputs": {"dir": str(markers)}, "run": True}).encode()
    plan_id = http(us.url, "POST", "/v1/plans", body)["id"]
    deadline = time.monotonic() + 120
    while (plan := http(us.url, "GET", f"/v1/plans/{plan_id}"))["status"] == "drafting":
        assert time.monotonic() < deadline, plan
        time.sleep(0.1)
    assert plan["status"] == "proposed", plan
    done = us.stack.cli("plans", "approve", plan_id, "--as", "amy")
    assert done.returncode == 0, done.stderr
    while not (plan := http(us.url, "GET", f"/v1/plans/{plan_id}"))["run_id"]:
        assert time.monotonic() < deadline, plan
        time.sleep(0.1)
    while (view := http(us.url, "GET", f"/v1/runs/{plan['run_id']}"))["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    assert view["status"] == "succeeded" and view["plan_id"] == plan_id, view
    assert view["outputs"] == EXPECTED["chaos-diamond"][0]


def http(base: str, method: str, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(
        base + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_stack_runs_with_every_service_on_its_own_user(users: tuple[UserStack, Sink], tmp_path: Path) -> None:
    us, sink = users
    run_all(us, sink, tmp_path)
    log = us.stack.server.log_path.read_text(errors="replace")
    violations = [line for line in log.splitlines() if "Permissions Violation" in line]
    assert not violations, "\n".join(violations[:20])


def test_nats_config_refuses_missing_passwords_naming_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_SECRET_NATS_PASSWORD_")}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "nats-config"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "FLOWYARD_SECRET_NATS_PASSWORD_EXECUTOR" in done.stderr


def test_a_service_user_is_refused_at_once_what_another_owns(users: tuple[UserStack, Sink]) -> None:
    us, _ = users
    url = us.stack.server.url

    async def bus_for(user: str) -> Bus:
        secret = PASSWORDS[f"FLOWYARD_SECRET_NATS_PASSWORD_{user.upper()}"]
        bus = Bus(NatsConfig(url=url, user=user, password=secret), BusConfig(), name=f"probe-{user}")
        await bus.connect()
        return bus

    async def refused(user: str, attempt: object) -> str:
        """The server's refusal, as the client hears it."""
        secret = PASSWORDS[f"FLOWYARD_SECRET_NATS_PASSWORD_{user.upper()}"]
        heard: asyncio.Queue[str] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            await heard.put(str(exc))

        nc = await nats.connect(url, user=user, password=secret, error_cb=on_error, inbox_prefix=f"_INBOX_{user}")
        try:
            task = asyncio.ensure_future(attempt(nc))  # type: ignore[operator]
            text = await asyncio.wait_for(heard.get(), timeout=5)
            task.cancel()
            return text
        finally:
            await nc.close()

    async def go() -> None:
        # The notifier publishing a task result.
        text = await refused("notifier", lambda nc: nc.jetstream().publish("fy.run.r1.task.a.succeeded", b"{}"))
        assert "permissions violation" in text.lower() and "fy.run.r1.task.a.succeeded" in text
        # The executor reading approvals.
        text = await refused("executor", lambda nc: nc.jetstream().key_value("fy_approvals"))
        assert "permissions violation" in text.lower()
        # The gateway publishing a dispatch: through the bus, a clear error, not a wait.
        bus = await bus_for("gateway")
        task = TaskDispatched(run_id="r1", workflow="w", node_id="a", attempt=1, agent=AgentSnapshot(name="x"))
        started = time.monotonic()
        with pytest.raises(PermanentError, match="permissions violation"):
            await bus.publish("fy.task.dispatch.default", task, msg_id="probe")
        assert time.monotonic() - started < 15
        await bus.close()
        # The notifier, through the bus, reporting a task it never ran.
        bus = await bus_for("notifier")
        with pytest.raises(PermanentError, match="permissions violation"):
            await bus.publish(
                "fy.run.r1.task.a.succeeded", TaskSucceeded(run_id="r1", node_id="a", attempt=1), msg_id="p2"
            )
        await bus.close()
        # The CLI may not create streams; nats-bootstrap as cli says to use admin.

    asyncio.run(go())
    done = us.stack.cli("nats-bootstrap")
    assert done.returncode == 2 and "admin" in done.stderr


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_tls_with_a_ca_server_and_client_certificates(nats_binary: str, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flowyard test CA",
        cwd=pki,
    )
    (pki / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=pki,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            cwd=pki,
        )
    conf = nats_config(
        tmp_path,
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-ca",
        str(pki / "ca.pem"),
    )
    server = NatsServer(tmp_path / "nats", config=conf).start()
    sink = Sink()
    us = UserStack(tmp_path, server, sink)
    # The TLS settings in the config file every service reads.
    config = Path(us.base["FLOWYARD_CONFIG"])
    config.write_text(
        config.read_text()
        + f"nats:\n  tls: {{ca: {pki / 'ca.pem'}, cert: {pki / 'client.pem'}, key: {pki / 'client.key'}}}\n"
    )
    try:
        us.start()
        run_all(us, sink, tmp_path)

        async def without_ca() -> None:
            bus = Bus(
                NatsConfig(
                    url=server.url,
                    user="cli",
                    password=PASSWORDS["FLOWYARD_SECRET_NATS_PASSWORD_CLI"],
                    connect_timeout="2s",
                    tls=NatsTls(),
                ),
                BusConfig(),
                name="no-ca",
            )
            with pytest.raises(ConfigurationError, match="not trusted.*nats.tls.ca"):
                await bus.connect()

        asyncio.run(without_ca())
    finally:
        us.stack.stop_all()
        server.stop()
        sink.server.shutdown()
