"""A stack for benchmarks: `flowyard up`, or one `flowyard serve` process per service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType

from shared.bus.connection import Bus
from shared.bus.server import NatsServer
from shared.bus.topology import ensure_topology
from shared.config.settings import BusConfig, NatsConfig

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank: every bench reports its p95 the same way."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def quiet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    return (
        env
        # Orchestration benches time the engine with process agents; container.py asks for docker.
        | {
            "FLOWYARD_LOG_LEVEL": "warning",
            "FLOWYARD_LOG_FORMAT": "json",
            "FLOWYARD_HTTP_PORT": "-1",
            "FLOWYARD_EXECUTOR_RUNTIME": "process",
            "FLOWYARD_GATEWAY_PORT": "0",  # `flowyard up` runs the gateway: any free port
        }
        | (extra or {})
    )


def start(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env, stdout=out, stderr=out)
    out.close()
    return proc


def wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if proc.poll() is not None:
            raise SystemExit(f"{log.name} ended: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit(f"{log.name}: no {pattern!r} in {timeout}s")


def start_with_gateway(work: Path, env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> str:
    """The gateway, then planner, scheduler, executor and approver, each its own process (appended
    to ``procs`` as they start, so the caller stops what did start); the gateway's base URL."""
    log = work / "gateway.log"
    procs.append(start("gateway", env, log))
    port = wait_for(log, r'"url": "http://127\.0\.0\.1:(\d+)", "users"', procs[-1]).group(1)
    for name in ("planner", "scheduler", "executor", "approver"):
        log = work / f"{name}.log"
        procs.append(start(name, env, log))
        wait_for(log, "service started", procs[-1])
    return f"http://127.0.0.1:{port}"


def stop_all(procs: Iterable[subprocess.Popen[bytes]], server: NatsServer) -> None:
    """SIGTERM every service process (killed if it lingers), then the nats-server."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    server.stop()


class BenchStack:
    def __init__(
        self,
        data: Path,
        *,
        separate: bool,
        env: dict[str, str] | None = None,
        services: tuple[str, ...] = ("planner", "scheduler", "executor"),
    ) -> None:
        self.services = services
        self.data = data
        self.separate = separate
        self.env = env or {}
        self.procs: list[subprocess.Popen[str]] = []
        self.server: NatsServer | None = None
        self.url = ""

    def describe(self) -> str:
        return "nats-server + one process per service" if self.separate else "flowyard up (one process)"

    async def __aenter__(self) -> BenchStack:
        if self.separate:
            self.server = await asyncio.to_thread(NatsServer(self.data / "nats").start)
            self.url = self.server.url
            env = quiet_env(
                self.env | {"FLOWYARD_NATS_URL": self.url, "FLOWYARD_EXECUTOR_STATE_DIR": str(self.data / "spool")}
            )
            for name in self.services:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", f"services.{name}"],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )
            await asyncio.sleep(4)
            return self
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--data-dir", str(self.data)],
            cwd=ROOT,
            env=quiet_env(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        while line and "export FLOWYARD_NATS_URL=" not in line:
            line = await asyncio.to_thread(proc.stdout.readline)
        m = re.search(r"export FLOWYARD_NATS_URL=(\S+)", line)
        if not m:
            raise SystemExit("flowyard up did not start")
        self.url = m.group(1)
        await asyncio.sleep(1)
        return self

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            await asyncio.to_thread(p.wait, 30)
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)


@contextlib.asynccontextmanager
async def bare_bus(name: str) -> AsyncIterator[Bus]:
    """A nats-server in a temporary directory and a bus on it with the topology: for benchmarks
    of one piece of the kit, no services."""
    with tempfile.TemporaryDirectory(prefix=f"fy-{name}-") as data:
        server = NatsServer(Path(data) / "nats").start()
        try:
            bus = Bus(NatsConfig(url=server.url), BusConfig(), name=name)
            await bus.connect()
            try:
                await ensure_topology(bus)
                yield bus
            finally:
                await bus.close()
        finally:
            server.stop()
