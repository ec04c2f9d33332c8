"""Planner, scheduler and executor as separate OS processes (``flowyard serve``), sharing only NATS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared.bus.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("planner", "scheduler", "executor")


class Stack:
    def __init__(self, server: NatsServer, workdir: Path, **env: str) -> None:
        self.server = server
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}
        self.env = {
            **os.environ,
            "FLOWYARD_NATS_URL": server.url,
            "FLOWYARD_BUS_ACK_WAIT": "3s",
            "FLOWYARD_HTTP_PORT": "0",
            "FLOWYARD_LOG_FORMAT": "json",
            "FLOWYARD_EXECUTOR_SHUTDOWN_GRACE": "5s",
            "FLOWYARD_EXECUTOR_STATE_DIR": str(workdir / "executor-state"),
            **env,
        }

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.{self.starts.get(name, 0)}.log"

    def start(self, name: str, *extra: str) -> None:
        self.starts[name] = self.starts.get(name, 0) + 1
        log = self.log_path(name).open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", *extra],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_for_log(name, "service started")

    def start_replica(self, name: str) -> None:
        """A second process of the same service (its logs under NAME-2)."""
        replica = f"{name}-2"
        self.starts[replica] = self.starts.get(replica, 0) + 1
        log = self.log_path(replica).open("wb")
        self.procs[replica] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.wait_for_log(replica, "service started")

    def replica_log(self, name: str) -> str:
        return "".join(p.read_text(errors="replace") for p in self.workdir.glob(f"{name}.*.log"))

    def wait_for_log(self, name: str, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log_path(name).read_text(errors="replace")
            if text in content:
                return content
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited with {self.procs[name].returncode}:\n{content[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{name} did not log {text!r} in {timeout}s")

    def http_port(self, name: str) -> int:
        content = self.wait_for_log(name, "http endpoints")
        return int(re.search(r"http://127\.0\.0\.1:(\d+)", content).group(1))  # type: ignore[union-attr]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(30)

    def start_all(self) -> Stack:
        for name in SERVICES:
            self.start(name)
        return self

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_json(self, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
        done = self.cli("run", *args, "--json", timeout=timeout)
        body = json.loads(done.stdout) if done.stdout.strip() else {}
        return done.returncode, body, done.stderr
