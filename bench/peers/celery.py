"""The same three shapes as Celery tasks on Redis, for the side-by-side figures (bench/compare.py).

    .venv/bin/pip install -e '.[bench]'; apt-get install redis-server
    .venv/bin/python bench/peers/celery.py [--runs 100] [--items 1000] [--concurrency 2]

Starts Debian's redis-server on a free loopback port (no persistence) and a Celery worker (prefork
pool, one process per core by default), both stopped by PID at the end. The shapes: a five-node
diamond (``a -> (b, c, d) -> e`` as a chain with a chord), a fan-out/fan-in of N items (``make ->
group of N -> join``) and K diamonds submitted at once. The task is a no-op that returns its
input, like flowyard's `cat` agent. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow Celery's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from celery import Celery, chain, chord, group  # noqa: E402

APP = Celery("flowyard_bench_peer")
APP.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@APP.task(name="noop")
def noop(value: object = None, *rest: object) -> object:
    return value


@APP.task(name="make")
def make(n: int) -> list[int]:
    return list(range(n))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Peer:
    """redis-server and a Celery worker, started and stopped by PID."""

    concurrency: int
    url: str = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[Peer]:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(server):
            raise SystemExit("bench/peers/celery.py needs Debian's redis-server: apt-get install redis-server")
        port = _free_port()
        with tempfile.TemporaryDirectory(prefix="fy-celery-") as tmp:
            redis = subprocess.Popen(
                [
                    server,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    tmp,
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
            )
            self.url = f"redis://127.0.0.1:{port}/0"
            _wait_for_port(port)
            APP.conf.broker_url = APP.conf.result_backend = self.url
            env = {**os.environ, "FY_CELERY_URL": self.url, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.peers.celery:APP",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    str(self.concurrency),
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--prefetch-multiplier",
                    "4",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                noop.delay(1).get(timeout=60)  # the worker is up and connected
                yield self
            finally:
                gc.collect()  # results still referenced unsubscribe now, while Redis is there
                APP.close()  # its result consumer, before Redis goes
                for proc in (worker, redis):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
                for proc in (worker, redis):
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()

    # --- the shapes ----------------------------------------------------------------------------

    @staticmethod
    def diamond(n: int = 1) -> object:
        return chain(noop.s(n), chord(group(noop.s(), noop.s(), noop.s()), noop.s()))

    def one_diamond(self, n: int = 1) -> float:
        t0 = time.perf_counter()
        self.diamond(n).apply_async().get(timeout=60)
        return time.perf_counter() - t0

    def fan_out(self, items: int) -> float:
        """Tasks per second of the N items: N over the time from submit to the join's result."""
        t0 = time.perf_counter()
        numbers = make.delay(items).get(timeout=300)
        t1 = time.perf_counter()
        chord(group(noop.s(i) for i in numbers), noop.s()).apply_async().get(timeout=600)
        return items / (time.perf_counter() - t1) if time.perf_counter() > t0 else 0.0

    def concurrent(self, count: int) -> float:
        t0 = time.perf_counter()
        results = [self.diamond(i).apply_async() for i in range(count)]
        for result in results:
            result.get(timeout=120)
        return time.perf_counter() - t0


APP.conf.broker_url = APP.conf.result_backend = os.environ.get("FY_CELERY_URL", "redis://127.0.0.1:6379/0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with Peer(args.concurrency).running() as peer:
        for _ in range(10):
            peer.one_diamond()
        lat = [peer.one_diamond(i) * 1000 for i in range(args.runs)]
        print(f"celery diamond: median {statistics.median(lat):.1f} ms over {args.runs} runs")
        print(f"celery fan-out of {args.items}: {peer.fan_out(args.items):.0f} tasks/s")
        for count in (10, 100):
            print(f"celery {count} concurrent diamonds: makespan {peer.concurrent(count) * 1000:.0f} ms")


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit("redis-server did not start")


if __name__ == "__main__":
    main()
