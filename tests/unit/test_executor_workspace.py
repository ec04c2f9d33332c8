"""Workspaces and streamed logs through `handlers.execute` on the process runtime (no servers)."""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

import msgspec

from services.executor import handlers
from services.executor.logstream import LogStream
from services.executor.runtimes import ProcessRuntime
from shared.contract.messages import AgentSnapshot, Event, TaskDispatched, TaskLog, TaskSucceeded
from shared.state import workspace as ws


class MemoryWorkspaces:
    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.objects: dict[str, bytes] = {}

    async def fetch(self, name: str) -> bytes:
        if name not in self.objects:
            raise ws.WorkspaceError(f"workspace version {name!r} is no longer in the store")
        return self.objects[name]

    async def store(self, name: str, data: bytes) -> str:
        self.objects[name] = data
        return name


def task(code: str, mode: str, version: str | None) -> TaskDispatched:
    agent = AgentSnapshot(name="t", command=[sys.executable, "-c", textwrap.dedent(code)], workspace=mode)  # type: ignore[arg-type]
    return TaskDispatched(run_id="r1", workflow="w", node_id="fix", attempt=1, agent=agent, workspace=version)


async def run(t: TaskDispatched, store: MemoryWorkspaces) -> tuple[handlers.Judgement, list[Event], list[TaskLog]]:
    sent: list[Event] = []
    logs: list[TaskLog] = []

    async def publish(event: Event, kind: str) -> None:
        sent.append(event)

    async def publish_log(event: TaskLog) -> None:
        logs.append(event)

    runtime = ProcessRuntime(max_output_bytes=4096, log_tail_bytes=512, state_dir=tempfile.mkdtemp(prefix="fy-spool-"))
    verdict = await handlers.execute(
        t,
        runtime=runtime,
        publish=publish,
        executor_id="x",
        log_tail_bytes=512,
        workspaces=store,
        logs=lambda task, secrets: LogStream(task, publish_log, secrets=secrets, max_bytes=1 << 20),
    )
    await runtime.close()
    return verdict, sent, logs


def files(data: bytes, root: Path) -> dict[str, str]:
    ws.unpack_to_dir(data, root)
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


EDIT = """
    import json, os, pathlib, sys
    root = pathlib.Path(os.environ["FLOWYARD_WORKSPACE"])
    print("editing", root == pathlib.Path.cwd(), file=sys.stderr)
    (root / "a.txt").write_text((root / "a.txt").read_text() + "more\\n")
    (root / "new.txt").write_text("new\\n")
    print(json.dumps({"ok": True}))
"""


async def test_an_rw_agent_changes_become_the_next_version(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one\n")
    store = MemoryWorkspaces()
    store.objects["r1/v0"] = ws.pack_dir(tmp_path / "in", max_bytes=1 << 20)
    verdict, sent, logs = await run(task(EDIT, "rw", "r1/v0"), store)
    assert verdict.ok, verdict.error
    done = sent[-1]
    assert isinstance(done, TaskSucceeded) and done.workspace == "r1/fix-1"
    assert files(store.objects["r1/fix-1"], tmp_path / "out") == {"a.txt": "one\nmore\n", "new.txt": "new\n"}
    assert [line for e in logs for line in e.lines] == ["editing True"]  # streamed, and cwd is the workspace


async def test_an_rw_agent_that_changes_nothing_makes_no_version(tmp_path: Path) -> None:
    store = MemoryWorkspaces()
    verdict, sent, _ = await run(task("print('{}')", "rw", None), store)
    assert verdict.ok and isinstance(sent[-1], TaskSucceeded) and sent[-1].workspace is None
    assert store.objects == {}


async def test_an_ro_agent_cannot_keep_changes(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one\n")
    store = MemoryWorkspaces()
    store.objects["r1/v0"] = ws.pack_dir(tmp_path / "in", max_bytes=1 << 20)
    code = """
        import json, os, pathlib
        root = pathlib.Path(os.environ["FLOWYARD_WORKSPACE"])
        print(json.dumps({"a": (root / "a.txt").read_text()}))
    """
    verdict, sent, _ = await run(task(code, "ro", "r1/v0"), store)
    assert verdict.ok and verdict.output == {"a": "one\n"}
    assert isinstance(sent[-1], TaskSucceeded) and sent[-1].workspace is None
    assert list(store.objects) == ["r1/v0"]


async def test_a_workspace_too_large_fails_the_node_and_keeps_nothing() -> None:
    code = """
        import json, os, pathlib
        pathlib.Path(os.environ["FLOWYARD_WORKSPACE"], "big").write_bytes(os.urandom(50_000))
        print(json.dumps({}))
    """
    store = MemoryWorkspaces(max_bytes=10_000)
    verdict, _, _ = await run(task(code, "rw", None), store)
    assert not verdict.ok and "workspace_max_bytes" in verdict.error
    assert store.objects == {}


async def test_an_expired_version_is_a_clear_failure() -> None:
    verdict, _, _ = await run(task("print('{}')", "ro", "r1/gone"), MemoryWorkspaces())
    assert not verdict.ok and verdict.reason == "runtime" and "no longer in the store" in verdict.error


async def test_task_events_carry_the_workspace_fields() -> None:
    t = task("print('{}')", "rw", "r1/v0")
    back = msgspec.json.decode(msgspec.json.encode(t), type=TaskDispatched)
    assert back.workspace == "r1/v0" and back.agent.workspace == "rw"


async def test_a_full_store_fails_the_node_instead_of_redelivering_it() -> None:
    from shared.contract.errors import PermanentError

    class Full(MemoryWorkspaces):
        async def store(self, name: str, data: bytes) -> str:
            raise PermanentError("maximum bytes exceeded")

    verdict, sent, _ = await run(task(EDIT.replace('(root / "a.txt").read_text() + ', ""), "rw", None), Full())
    assert not verdict.ok and "workspace could not be kept" in verdict.error and "maximum bytes" in verdict.error
    assert not isinstance(sent[-1], TaskSucceeded)
