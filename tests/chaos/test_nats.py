"""The nats-server itself SIGKILLed (no clean shutdown) at a random moment of a run and started
again on its store after 0-2 s, 10 trials: services and clients reconnect, the run ends right,
nothing ran twice, the notice arrived once."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import Chaos, Scenario, run_trials, trials


def test_nats_server_sigkilled_mid_run(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    chaos = Chaos(Path(tmp_path_factory.mktemp("chaos-nats"))).start()
    try:
        run_trials(chaos, "nats", Scenario("chaos-diamond", window=1.5), trials(20) // 2)
    finally:
        chaos.stop()
