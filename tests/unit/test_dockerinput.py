"""How an agent's input is put in its container (docs/adr/0010)."""

from __future__ import annotations

import io
import tarfile

from services.executor.runtimes import dockerinput
from services.executor.runtimes.docker import DockerRuntime
from shared.contract.messages import AgentSnapshot, TaskDispatched


def test_small_inputs_go_in_the_environment_large_ones_in_a_file_and_no_shell_means_the_attach() -> None:
    assert dockerinput.mode_for(b'{"n": 1}', shell=True) == "env"
    assert dockerinput.mode_for(b"x" * (dockerinput.ENV_MAX + 1), shell=True) == "file"
    assert dockerinput.mode_for(b'{"n": 1}', shell=False) == "stdin"


def test_the_wrapper_execs_the_agents_own_command() -> None:
    entry, cmd = dockerinput.wrapped(["python3", "-c", "print(1)"], "file")
    assert entry == ["/bin/sh", "-c", 'exec "$@" < /flowyard/input/input.json', "flowyard-agent"]
    assert cmd == ["python3", "-c", "print(1)"]
    entry, _ = dockerinput.wrapped(["agent"], "env")
    assert "unset FLOWYARD_INPUT" in entry[2] and entry[2].endswith('exec "$@"')


def test_the_input_file_is_roots_and_read_only() -> None:
    with tarfile.open(fileobj=io.BytesIO(dockerinput.archive(b'{"n": 1}'))) as tar:
        info = tar.getmember("input.json")
        assert (info.uid, info.mode) == (0, 0o444)
        assert tar.extractfile(info).read() == b'{"n": 1}'  # type: ignore[union-attr]


def test_the_container_spec_carries_the_input_only_where_the_mode_says() -> None:
    rt = DockerRuntime(max_output_bytes=1024, log_tail_bytes=1024)
    task = TaskDispatched(
        run_id="r1", workflow="w", node_id="n", attempt=1, agent=AgentSnapshot(name="a", image="img", command=["x"])
    )
    env_mode = rt.spec(task, {}, command=["x"], stdin=b'{"n": 1}')
    assert 'FLOWYARD_INPUT={"n": 1}' in env_mode["Env"] and not env_mode["OpenStdin"]
    assert env_mode["Labels"]["io.flowyard.input"] == "env" and "Volumes" not in env_mode
    big = rt.spec(task, {}, command=["x"], stdin=b"y" * 200_000)
    assert big["Labels"]["io.flowyard.input"] == "file" and "/flowyard/input" in big["Volumes"]
    assert not any(e.startswith("FLOWYARD_INPUT=") for e in big["Env"])
    attach = rt.spec(task, {}, command=None, stdin=b'{"n": 1}')
    assert attach["Labels"]["io.flowyard.input"] == "stdin" and attach["OpenStdin"] and attach["StdinOnce"]
    assert attach["Entrypoint"] == ["x"]
