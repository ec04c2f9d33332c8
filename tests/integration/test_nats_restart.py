"""The nats-server itself restarted mid-run (file storage): services reconnect and the run finishes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from shared.bus.server import NatsServer

from .stack import Stack

WORKFLOWS = Path(__file__).parent / "workflows"


def test_nats_server_restart_mid_run(nats_binary: str, tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(server, tmp_path)
    try:
        stack.start_all()
        markers = tmp_path / "markers"
        markers.mkdir()
        run = stack.cli_background(
            "run", str(WORKFLOWS / "slow-diamond.yaml"), "-i", f"dir={markers}", "-i", "sleep=2", "--json"
        )
        for _ in range(300):
            if all((markers / n).exists() for n in "bcd"):
                break
            time.sleep(0.05)
        server.restart()  # b, c and d finish while the server is down or just back
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        result = json.loads(out)
        assert result["status"] == "succeeded" and result["outputs"] == {"total": 7}
        for node in "abcde":
            assert (markers / node).read_text() == "1\n", f"node {node} ran more than once"
    finally:
        stack.stop_all()
        server.stop()
