"""Soak: steady mixed load while a chaos loop SIGKILLs random services, for N minutes.

    .venv/bin/python bench/soak.py --minutes 30 [--rate 0.5] [--chaos-every 20] [--seed S]

A nats-server and every service (planner, scheduler, executor, approver, notifier) as separate
processes. The load: one run every 1/rate seconds, in turn a diamond with a three-item fan-out,
a run with a step that needs approval (granted by this script as soon as it is asked), and a run
whose step fails once and succeeds on its retry; every agent execution appends its attempt to a
marker file. The chaos loop: every 0.5-1.5 x ``--chaos-every`` seconds a random service is
SIGKILLed and started again after 0-2 s. After the load, a drain of up to ``--drain`` seconds.

Prints: runs started, finished right, finished wrong, lost (never ended: must be 0); duplicate
side effects (a marker with more lines than its attempts: must be 0); kills per service; and the
RSS of every service at the start and end of its longest life (restarts begin a new life).
Exit 1 when a run was lost or wrong or a side effect doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import quiet_env, start, stop_all, wait_for  # noqa: E402
from shared.api import runs  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunRequested  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.state import approvals  # noqa: E402
from shared.state.decide import DecisionRequest, request_decision  # noqa: E402
from shared.workflow.loader import load_file  # noqa: E402

SERVICES = ("planner", "scheduler", "executor", "approver", "notifier")
CHAOS_YAML = ROOT / "tests/chaos/workflows/chaos.yaml"
FLAKY = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: soak-flaky}
spec:
  command:
    - python3
    - -c
    - |
      import json, os, sys
      req = json.load(sys.stdin)
      attempt = os.environ["FLOWYARD_ATTEMPT"]
      with open(os.path.join(req["dir"], "flaky"), "a") as f:
          f.write(attempt + "\\n")
      if attempt == "1":
          sys.exit("failing on purpose, the first time")
      print(json.dumps({"value": 5}))
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: soak-flaky}
spec:
  inputs: {dir: {type: string}}
  nodes:
    - {id: flaky, agent: soak-flaky, with: {dir: "{{ inputs.dir }}"}, retry: {attempts: 3, backoff: 200ms}}
  outputs: {total: "{{ nodes.flaky.output.value }}"}
"""
# What each workflow ends with, and its markers with the attempts that may write them.
EXPECTED = {
    "chaos-diamond": ({"total": 8}, {n: ["1"] for n in ("a", "b", "c", "f0", "f1", "f2", "e")}),
    "chaos-gate": ({"total": 3}, {n: ["1"] for n in ("a", "deploy", "after")}),
    "soak-flaky": ({"total": 5}, {"flaky": ["1", "2"]}),
}


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Life:
    started: float
    ended: float | None = None
    first: int = 0  # RSS once warmed up (60 s into the life)
    last: int = 0

    def length(self) -> float:
        return (self.ended or time.monotonic()) - self.started


@dataclass
class Soak:
    data: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lives: dict[str, list[Life]] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    starts: Counter[str] = field(default_factory=Counter)

    def start(self, name: str) -> None:
        self.starts[name] += 1
        log = self.data / f"{name}.{self.starts[name]}.log"
        self.procs[name] = start(name, self.env, log)
        wait_for(log, "service started", self.procs[name], timeout=60)
        self.lives.setdefault(name, []).append(Life(started=time.monotonic()))

    def sample(self) -> None:
        now = time.monotonic()
        for name, proc in self.procs.items():
            life = self.lives[name][-1]
            rss = rss_kib(proc.pid)
            if not rss:
                continue
            if not life.first and now - life.started >= 60:
                life.first = rss
            if life.first:
                life.last = rss


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=0.5, help="runs started per second")
    ap.add_argument("--chaos-every", type=float, default=20, help="mean seconds between kills; 0: no kills")
    ap.add_argument("--drain", type=float, default=180, help="seconds to wait for runs after the load")
    ap.add_argument("--seed", type=int, default=random.randrange(2**32))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"seed {args.seed} (--seed {args.seed} replays the kill schedule)", flush=True)
    with tempfile.TemporaryDirectory(prefix="fy-soak-") as tmp:
        data = Path(tmp)
        server = NatsServer(data / "nats").start()
        env = quiet_env(
            {
                "FLOWYARD_NATS_URL": server.url,
                "FLOWYARD_EXECUTOR_STATE_DIR": str(data / "spool"),
                "FLOWYARD_BUS_ACK_WAIT": "5s",
                "FLOWYARD_LOG_LEVEL": "info",  # `service started` is how a start is seen
            }
        )
        soak = Soak(data, env)
        try:
            for name in SERVICES:
                soak.start(name)
            code = await drive(soak, server, args, rng)
        finally:
            stop_all(soak.procs.values(), server)
    raise SystemExit(code)


async def drive(soak: Soak, server: NatsServer, args: argparse.Namespace, rng: random.Random) -> int:
    bus = Bus(NatsConfig(url=server.url), BusConfig(), name="soak")
    await bus.connect()
    (soak.data / "flaky.yaml").write_text(FLAKY)
    definitions = {}
    for path in (CHAOS_YAML, soak.data / "flaky.yaml"):
        bundle = load_file(path)
        await registry.register(bus, bundle.agents.values())
        for wf in bundle.workflows:
            definitions[wf.metadata.name] = msgspec.to_builtins(wf)
    outstanding: dict[str, tuple[str, Path]] = {}  # run id -> (workflow, markers)
    results: Counter[str] = Counter()
    problems: list[str] = []
    end_load = time.monotonic() + args.minutes * 60
    kinds = list(EXPECTED)

    async def load() -> None:
        i = 0
        while time.monotonic() < end_load:
            workflow = kinds[i % len(kinds)]
            markers = soak.data / "markers" / f"{i:06d}"
            markers.mkdir(parents=True)
            run_id = f"soak{time.time_ns():x}"
            request = RunRequested(
                run_id=run_id,
                workflow=workflow,
                definition=definitions[workflow],
                inputs={"dir": str(markers)},
                requested_by="soak",
                trigger={"type": "manual"},
            )
            try:
                await bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
            except Exception as exc:  # NATS itself is not killed here; a publish that fails is a finding
                problems.append(f"could not request run {i}: {exc!r}")
            else:
                outstanding[run_id] = (workflow, markers)
                results["started"] += 1
            i += 1
            await asyncio.sleep(1 / args.rate)

    async def chaos() -> None:
        while args.chaos_every > 0 and time.monotonic() < end_load:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * args.chaos_every)
            if time.monotonic() >= end_load:
                return
            victim = rng.choice(SERVICES)
            soak.procs[victim].send_signal(signal.SIGKILL)
            await asyncio.to_thread(soak.procs[victim].wait)
            soak.lives[victim][-1].ended = time.monotonic()
            soak.kills[victim] += 1
            await asyncio.sleep(rng.uniform(0, 2))
            await asyncio.to_thread(soak.start, victim)

    async def approve() -> None:
        while time.monotonic() < end_load + args.drain and (time.monotonic() < end_load or outstanding):
            try:
                for record in await approvals.records(bus):
                    if record.status == "pending":
                        decision = DecisionRequest(
                            approval_id=record.request.approval_id, decision="approve", user="soak-approver"
                        )
                        await request_decision(bus, decision, timeout=2)
            except Exception:  # the approver is down (the chaos loop): ask again shortly
                pass
            await asyncio.sleep(0.5)

    async def follow() -> None:
        while time.monotonic() < end_load + args.drain and (time.monotonic() < end_load or outstanding):
            for run_id in list(outstanding):
                try:
                    record = await runs.get_record(bus, run_id, whole=False)
                except Exception:
                    continue
                if record is None or record.status == "running":
                    continue
                workflow, markers = outstanding.pop(run_id)
                outputs, marks = EXPECTED[workflow]
                if record.status != "succeeded" or record.outputs != outputs:
                    results["wrong"] += 1
                    problems.append(f"run {run_id} ({workflow}) {record.status}: {record.error}")
                    continue
                results["finished"] += 1
                for name, allowed in marks.items():
                    lines = (markers / name).read_text().splitlines() if (markers / name).exists() else []
                    if lines != allowed:
                        results["duplicate side effects"] += 1
                        problems.append(f"run {run_id} ({workflow}): {name} ran {lines}, expected {allowed}")
            soak.sample()
            await asyncio.sleep(1)

    started = time.monotonic()
    await asyncio.gather(load(), chaos(), approve(), follow())
    results["lost"] = len(outstanding)
    for run_id, (workflow, _) in outstanding.items():
        problems.append(f"run {run_id} ({workflow}) never ended")
    await bus.close()
    minutes = (time.monotonic() - started) / 60
    print(f"soak: {minutes:.1f} min ({args.minutes:g} of load), rate {args.rate:g} runs/s, seed {args.seed}")
    for what in ("started", "finished", "wrong", "lost", "duplicate side effects"):
        print(f"  runs {what}: {results[what]}" if what != "duplicate side effects" else f"  {what}: {results[what]}")
    print(f"  kills: {dict(sorted(soak.kills.items()))} (total {sum(soak.kills.values())})")
    print("  RSS (KiB), longest life of each service: first sample 60 s in -> last sample")
    for name in SERVICES:
        life = max(soak.lives[name], key=lambda lf: (lf.last > 0, lf.length()))
        span = life.length() / 60
        print(
            f"    {name:<9} {life.first:>7} -> {life.last:>7}  (life of about {span:.0f} min, {soak.starts[name]} starts)"
        )
    for p in problems[:20]:
        print(f"  problem: {p}")
    return 1 if results["lost"] or results["wrong"] or results["duplicate side effects"] or problems else 0


if __name__ == "__main__":
    asyncio.run(main())
