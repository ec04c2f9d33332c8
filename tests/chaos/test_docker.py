"""The executor on the Docker runtime SIGKILLed at a uniformly random moment of a chain of five
container nodes and restarted after 0-2 s, 20 trials: the run ends with the right output, and
every attempt's container was created once and started once (the daemon's own events say so)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.integration.test_executor_crash import Events, chain, check_chain

from .harness import SEED, Chaos, trials

pytestmark = pytest.mark.docker


def test_docker_executor_sigkilled_at_random(base_image: str, nats_binary: str, tmp_path: Path) -> None:
    count = trials(20)
    rng = random.Random(f"{SEED}:executor-docker")
    print(f"seed {SEED}: {count} trials killing the Docker executor (FLOWYARD_TEST_SEED={SEED} replays them)")
    workflow = tmp_path / "chain.yaml"
    workflow.write_text(chain(base_image, sleep=0.3))
    chaos = Chaos(tmp_path, FLOWYARD_EXECUTOR_RUNTIME="docker").start()
    events = Events()
    try:
        for trial in range(count):
            at = rng.uniform(0, 4.0)  # five containers of about 0.8 s each
            down = rng.uniform(0, 2)
            where = f"trial {trial} (seed {SEED}): killed {at:.2f} s into the run, down {down:.2f} s"
            run = chaos.stack.cli_background("run", str(workflow), "--json")
            time.sleep(at)
            chaos.kill("executor")
            time.sleep(down)
            chaos.restart("executor")
            check_chain(run, events, where)
    finally:
        events.close()
        chaos.stop()
