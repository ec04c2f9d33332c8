"""``--workspace DIR`` on the way in, ``runs workspace RUN_ID --out DIR`` on the way out."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from pathlib import Path

from shared.bus.connection import Bus
from shared.config.settings import Config
from shared.contract.errors import ValidationFailed
from shared.state import workspace as ws

from . import client
from .client import connected
from .output import EXIT_INVALID, EXIT_OK


async def pack(directory: Path, config: Config, exclude: Iterable[str]) -> bytes:
    """DIR packed, or the reason it cannot be (as invalid input: exit 2)."""
    try:
        return await ws.pack_dir_async(directory, max_bytes=config.bus.workspace_max_bytes, exclude=exclude)
    except ws.WorkspaceError as exc:
        raise ValidationFailed([f"--workspace: {exc}"]) from None
    except OSError as exc:
        raise ValidationFailed(
            [f"--workspace {str(directory)!r}: cannot read {exc.filename}: {exc.strerror}"]
        ) from None


def check_out_dir(out: Path) -> None:
    """Refuse to write a workspace over files that are already there."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationFailed(
            [f"--out {str(out)!r} exists and is not an empty folder; name a new or empty one (nothing was written)"]
        )


async def write_out(bus: Bus, config: Config, name: str, out: Path) -> None:
    store = ws.WorkspaceStore(bus, max_bytes=config.bus.workspace_max_bytes)
    data = await store.fetch(name)
    await asyncio.to_thread(ws.unpack_to_dir, data, out)


async def save_workspace(config: Config, run_id: str, out: Path) -> int:
    await asyncio.to_thread(check_out_dir, out)
    async with connected(config) as bus:
        record = await client.get_record(bus, run_id, whole=False)
        if record is None:
            print(f"flowyard: no run {run_id!r}; `flowyard runs list` shows the runs this stack knows", file=sys.stderr)
            return EXIT_INVALID
        if not record.workspace:
            print(
                f"flowyard: run {run_id} has no workspace (start a run with --workspace DIR, or use an agent "
                "with `workspace: rw`)",
                file=sys.stderr,
            )
            return EXIT_INVALID
        try:
            await write_out(bus, config, record.workspace, out)
        except ws.WorkspaceError as exc:
            print(f"flowyard: {exc}", file=sys.stderr)
            return EXIT_INVALID
    note = "" if record.status != "running" else " (the run is still running: this is its latest version so far)"
    print(f"wrote workspace version {record.workspace_version} of run {run_id} to {out}{note}")
    return EXIT_OK
