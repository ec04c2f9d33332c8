"""Workspaces: a run's files, kept as versions in the JetStream object store ``fy_workspaces``.

A version is a gzipped tar of the files with relative names, no owners and no special files; it
is named ``RUN_ID/v0`` (what ``flowyard run --workspace DIR`` packed) or ``RUN_ID/UNIT-ATTEMPT``
(what an ``rw`` agent left), so a redelivered attempt overwrites its own version instead of adding
one. Packing and unpacking are blocking and run in threads; every size is checked against a limit
and a breach names the limit and how to change it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.errors import PermanentError

AGENT_UID = 10001
MOUNT = "/workspace"


class WorkspaceError(ValueError):
    """A workspace that cannot be packed, stored or used; the message says what to change."""


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def too_large(what: str, limit: int) -> str:
    return (
        f"{what} is larger than {_mib(limit)} packed, the limit (bus.workspace_max_bytes); "
        "leave out build output and dependencies (--exclude) or raise the limit"
    )


def pack_dir(root: str | Path, *, max_bytes: int, exclude: Iterable[str] = ()) -> bytes:
    """DIR as a version: regular files, directories and symlinks that stay inside DIR."""
    root = Path(root)
    if not root.is_dir():
        raise WorkspaceError(f"workspace {str(root)!r} is not a directory; pass the folder to copy in")
    patterns = list(exclude)
    buf = _Capped(max_bytes, f"workspace {str(root)!r}")
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            dirnames[:] = sorted(d for d in dirnames if not _excluded(_join(rel_dir, d), patterns))
            for name in [*dirnames, *sorted(filenames)]:
                rel = _join(rel_dir, name)
                if _excluded(rel, patterns):
                    continue
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=rel)
                if info.issym():
                    if _escapes(rel, info.linkname):
                        continue  # would point outside the workspace: not copied
                elif not (info.isfile() or info.isdir()):
                    continue  # sockets, devices, fifos
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def unpack_to_dir(data: bytes, dest: str | Path) -> None:
    """Write a version out; names that would escape DEST are refused by the ``data`` filter."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise WorkspaceError(f"the workspace holds an entry that may not be written out: {exc}") from None
    except tarfile.TarError as exc:
        raise WorkspaceError(f"the workspace version is not a readable archive: {exc}") from None


def for_container(data: bytes | None, *, writable: bool) -> bytes:
    """The version as an archive for Docker's ``put_archive`` into the mount point.

    Read-only copies belong to root with no write bits, so the agent's user cannot change them;
    writable ones belong to the agent's user. The entry named ``/`` sets the owner of the mount
    point itself: Docker skips an entry named ``.``, and the mount point is created root-owned.
    """
    owner = AGENT_UID if writable else 0
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        top = tarfile.TarInfo("/")
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        top.uid = top.gid = owner
        dst.addfile(top)
        if data:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as src:
                for info in src:
                    if not (info.isfile() or info.isdir() or info.issym()) or _unsafe(info.name):
                        continue
                    info.uid = info.gid = owner
                    info.uname = info.gname = ""
                    info.mode = info.mode & 0o755 if writable else info.mode & 0o555
                    dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    return out.getvalue()


def from_container(data: bytes, *, max_bytes: int, prefix: str = "workspace") -> bytes:
    """Docker's archive of the mount point (entries under ``workspace/``) as a version."""
    buf = _Capped(max_bytes, "the workspace the agent left")
    with (
        tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as src,
        tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as dst,
    ):
        for info in src:
            name = info.name.lstrip("/")
            if name == prefix or not name.startswith(prefix + "/"):
                continue
            if not (info.isfile() or info.isdir() or info.issym()):
                continue
            info.name = name[len(prefix) + 1 :]
            if _unsafe(info.name) or (info.issym() and _escapes(info.name, info.linkname)):
                continue  # a link the agent made to somewhere outside its workspace is not kept
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    return buf.getvalue()


def digest(data: bytes | None) -> str:
    """What the files hold (names, kinds, modes, contents), ignoring times and owners."""
    h = hashlib.sha256()
    if data:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            entries = []
            for info in tar:
                body = b""
                if info.isfile():
                    f = tar.extractfile(info)
                    body = hashlib.sha256(f.read() if f else b"").digest()
                entries.append((info.name.rstrip("/"), info.type, info.mode & 0o777, info.linkname, body))
            for entry in sorted(entries):
                h.update(repr(entry).encode())
    return h.hexdigest()


def first_version(run_id: str) -> str:
    return f"{run_id}/v0"


def version_name(run_id: str, unit: str, attempt: int) -> str:
    return f"{run_id}/{unit}-{attempt}"


class WorkspaceStore:
    """Versions in the object store; the executor and the CLI both go through this."""

    def __init__(self, bus: Bus, *, max_bytes: int) -> None:
        self.bus = bus
        self.max_bytes = max_bytes

    async def store(self, name: str, data: bytes) -> str:
        if len(data) > self.max_bytes:
            raise WorkspaceError(too_large(f"workspace version {name!r}", self.max_bytes))
        obs = await self.bus.js.object_store(subjects.WORKSPACES_BUCKET)
        try:
            await obs.put(name, data)
        except nats.js.errors.ServiceUnavailableError:
            raise  # an outage: the delivery is retried
        except nats.js.errors.APIError as exc:
            # e.g. the store is full (bus.workspace_store_bytes) until old versions expire.
            raise PermanentError(f"the workspace store refused version {name!r}: {exc.description}") from None
        return name

    async def fetch(self, name: str) -> bytes:
        obs = await self.bus.js.object_store(subjects.WORKSPACES_BUCKET)
        out = io.BytesIO()
        try:
            # Into a buffer: without one nats-py concatenates the chunks into ever larger bytes.
            await obs.get(name, writeinto=out)
        except nats.js.errors.ObjectNotFoundError:
            raise WorkspaceError(
                f"workspace version {name!r} is no longer in the store (versions are kept for bus.workspace_retention)"
            ) from None
        return out.getvalue()


async def pack_dir_async(root: str | Path, *, max_bytes: int, exclude: Iterable[str] = ()) -> bytes:
    return await asyncio.to_thread(pack_dir, root, max_bytes=max_bytes, exclude=tuple(exclude))


class _Capped(io.BytesIO):
    """A buffer that refuses to grow past its limit, so a huge directory fails early."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()
        self.limit = limit
        self.what = what

    def write(self, b: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(b) > self.limit:
            raise WorkspaceError(too_large(self.what, self.limit))
        return super().write(b)


def _join(rel_dir: str, name: str) -> str:
    return name if rel_dir == "." else f"{rel_dir}/{name}"


def _excluded(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p) for p in patterns)


def _escapes(name: str, linkname: str) -> bool:
    target = os.path.normpath(os.path.join(os.path.dirname(name), linkname))
    return os.path.isabs(linkname) or target == ".." or target.startswith("../")


def _unsafe(name: str) -> bool:
    parts = Path(name).parts
    return not name or name.startswith("/") or ".." in parts
