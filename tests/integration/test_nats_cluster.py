"""The prod overlay's NATS, here on loopback: three servers on configurations `flowyard nats-config`
prints with routes (NATS_CLUSTER_NAME, NATS_SERVER_NAME, NATS_ROUTES, as k8s/overlays/prod sets
them), streams made three times over by `flowyard nats-bootstrap` (bus.replicas 3), every service
on its own user. A run succeeds; one server is SIGKILLed and the next run still succeeds on the
other two (the quorum); it comes back and catches up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus.server import NatsServer
from tests.chaos.harness import EXPECTED, WORKFLOWS, Sink, free_port

from .stack import ROOT
from .test_nats_users import PASSWORDS, UserStack

pytestmark = pytest.mark.timeout(600)


def cluster_configs(workdir: Path, cluster_ports: list[int]) -> list[Path]:
    routes = " ".join(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
    out = []
    for i, port in enumerate(cluster_ports):
        path = workdir / f"nats-{i}.conf"
        done = subprocess.run(
            [
                *(sys.executable, "-m", "services.cli", "nats-config", "--store-dir", str(workdir / f"js-{i}")),
                *("--monitor-port", str(free_port()), "--cluster-port", str(port), "-o", str(path)),
            ],
            cwd=ROOT,
            env={
                **os.environ,
                **PASSWORDS,
                "NATS_CLUSTER_NAME": "flowyard",
                "NATS_SERVER_NAME": f"nats-{i}",
                "NATS_ROUTES": routes,
                "FLOWYARD_BUS_REPLICAS": "3",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        conf = json.loads(path.read_text().split("\n", 1)[1])
        assert conf["server_name"] == f"nats-{i}" and len(conf["cluster"]["routes"]) == 3
        out.append(path)
    return out


@pytest.fixture(scope="module")
def cluster(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[NatsServer], Path]]:
    workdir = Path(tmp_path_factory.mktemp("nats-cluster"))
    configs = cluster_configs(workdir, [free_port() for _ in range(3)])
    servers = [NatsServer(workdir / f"s{i}", config=c) for i, c in enumerate(configs)]
    try:
        for s in servers:
            s.start()
        yield servers, workdir
    finally:
        for s in servers:
            s.stop()


def run_diamond(us: UserStack, workdir: Path) -> None:
    markers = workdir / f"m-{time.time_ns()}"
    markers.mkdir()
    done = us.stack.cli("run", str(WORKFLOWS), "--workflow", "chaos-diamond", "-i", f"dir={markers}", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == EXPECTED["chaos-diamond"][0]


def test_a_three_server_cluster_runs_on_and_loses_nothing_when_one_dies(
    cluster: tuple[list[NatsServer], Path],
) -> None:
    servers, workdir = cluster
    sink = Sink()
    us = UserStack(
        workdir,
        servers[0],
        sink,
        FLOWYARD_NATS_URL=",".join(s.url for s in servers),
        FLOWYARD_BUS_REPLICAS="3",
        FLOWYARD_NATS_CONNECT_TIMEOUT="60s",
    )
    try:
        us.start()  # nats-bootstrap as admin: R3 streams, the account's limit counting three copies
        run_diamond(us, workdir)
        servers[1].kill()
        run_diamond(us, workdir)
        servers[1].restart()
        run_diamond(us, workdir)
    finally:
        us.stack.stop_all()
        sink.server.shutdown()
