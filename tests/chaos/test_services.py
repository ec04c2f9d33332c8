"""Each service SIGKILLed at a uniformly random moment of a run that exercises it, 20 trials per
service: the run ends with the right outputs, every side effect happened once, the notice reached
the sink once. See harness.py for what one trial does and how to replay it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Chaos, Scenario, run_trials, trials

# The diamond takes about 1.5 s end to end, the gated run about 2.5 s (the approval included).
SCENARIOS = {
    "planner": Scenario("chaos-diamond", window=1.5),
    "scheduler": Scenario("chaos-diamond", window=1.5),
    "executor": Scenario("chaos-diamond", window=1.5),
    "approver": Scenario("chaos-gate", window=2.5),
    "notifier": Scenario("chaos-diamond", window=2.0),
    "gateway": Scenario("chaos-diamond", window=1.5, via="api"),
}


@pytest.fixture(scope="module")
def chaos(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    c = Chaos(Path(tmp_path_factory.mktemp("chaos"))).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("victim", list(SCENARIOS))
def test_a_service_sigkilled_at_random_loses_nothing_and_repeats_nothing(chaos: Chaos, victim: str) -> None:
    run_trials(chaos, victim, SCENARIOS[victim], trials(20))


def test_the_executor_sigkilled_while_warm_workers_hold_requests(chaos: Chaos) -> None:
    """Warm workers (spec.warm) finish the request they hold and leave the answer on file: the
    next executor reads it instead of running the attempt again."""
    run_trials(chaos, "executor", Scenario("chaos-warm", window=1.2), trials(10))
