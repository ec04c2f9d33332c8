"""The executor on the Docker runtime SIGKILLed at a random moment while warm containers (spec.warm)
hold requests, and restarted after 0-2 s: every run ends with the right output, each node in one
attempt, and each agent's side effect — a request to a counter on this machine, made by the agent
in its container — happened exactly once. A request a dead executor's container held is answered
from that container's files, not run again."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fakellm import docker_bridge_address

from .harness import SEED, Chaos, trials

pytestmark = pytest.mark.docker
WORKFLOW = "chaos-docker-warm"


def workflow(image: str) -> str:
    agent = f"""apiVersion: flowyard/v1
kind: Agent
metadata: {{name: warm-step}}
spec:
  image: {image}
  network: egress
  warm: {{min: 1, max: 2, reuse: agent}}
  timeout: 30s
  command:
    - python3
    - -c
    - |
      import json, sys, time, urllib.request
      for line in sys.stdin:
          req = json.loads(line)
          mark = urllib.request.Request(req["mark"], data=json.dumps({{"name": req["name"]}}).encode(), method="POST")
          urllib.request.urlopen(mark, timeout=10).read()
          time.sleep(req["sleep"])
          print(json.dumps({{"n": req["n"] + 1}}), flush=True)
"""
    nodes = (
        '    - {id: s1, agent: warm-step, with: {n: 0, name: s1, mark: "{{ inputs.mark }}", sleep: 0.4}}\n'
        + "".join(
            f'    - {{id: s{i}, agent: warm-step, needs: [s{i - 1}], with: {{n: "{{{{ nodes.s{i - 1}.output.n }}}}", '
            f'name: s{i}, mark: "{{{{ inputs.mark }}}}", sleep: 0.4}}}}\n'
            for i in range(2, 6)
        )
    )
    return (
        agent
        + f"---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: {WORKFLOW}}}\nspec:\n"
        + "  inputs:\n    mark: {type: string}\n  nodes:\n"
        + nodes
        + '  outputs:\n    n: "{{ nodes.s5.output.n }}"\n'
    )


@contextmanager
def counter() -> Iterator[tuple[str, Counter[tuple[str, str]]]]:
    """An HTTP server on the Docker bridge's gateway that counts (trial, node) marks."""
    marks: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    class Mark(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                marks[(self.path.strip("/"), body["name"])] += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((docker_bridge_address(), 0), Mark)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}", marks
    finally:
        server.shutdown()
        server.server_close()


def test_docker_executor_sigkilled_while_warm_containers_hold_requests(
    base_image: str, nats_binary: str, tmp_path: Path
) -> None:
    count = trials(8)
    rng = random.Random(f"{SEED}:executor-docker-warm")
    print(f"seed {SEED}: {count} trials killing the Docker executor with warm containers (FLOWYARD_TEST_SEED={SEED})")
    path = tmp_path / "warm-chain.yaml"
    path.write_text(workflow(base_image))
    chaos = Chaos(tmp_path, FLOWYARD_EXECUTOR_RUNTIME="docker").start()
    try:
        with counter() as (url, marks):
            for trial in range(count):
                at = rng.uniform(0, 2.5)  # five requests of about 0.4 s each, the first on a new container
                down = rng.uniform(0, 2)
                where = f"trial {trial} (seed {SEED}): killed {at:.2f} s into the run, down {down:.2f} s"
                run = chaos.stack.cli_background("run", str(path), "-i", f"mark={url}/t{trial}", "--json")
                time.sleep(at)
                chaos.kill("executor")
                time.sleep(down)
                chaos.restart("executor")
                out, err = run.communicate(timeout=180)
                assert run.returncode == 0, f"{where}: {err}\n{out}"
                result = json.loads(out)
                assert result["outputs"] == {"n": 5}, where
                assert all(n["attempts"] == 1 for n in result["nodes"].values()), (where, result["nodes"])
                mine = {name: n for (t, name), n in marks.items() if t == f"t{trial}"}
                assert mine == {f"s{i}": 1 for i in range(1, 6)}, (where, mine)  # each side effect once
    finally:
        chaos.stop()
        # The killed executors' containers keep their answers for adoption until the sweeper
        # sees their runs ended; this trial's go now.
        subprocess.run(
            f"docker ps -aq --filter label=io.flowyard.workflow={WORKFLOW} | xargs -r docker rm -f",
            shell=True,
            capture_output=True,
            check=False,
        )
