"""``flowyard agents build``: the base image when missing, then every built-in agent's image.

Nothing is pulled: the base is made offline by ``deploy/base-image/build.sh`` (debootstrap and
``docker import``), or named with ``--base`` when a registry provides one. An image is rebuilt
only when its folder or its base changed: each image carries a label with the digest of both.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import aiodocker

from shared.docker import client as dockerclient
from shared.telemetry.metrics import VERSION
from shared.workflow.builtin import agent_dirs, agents_dir, builtin_agents

from . import vendor
from .output import EXIT_BROKEN, EXIT_INVALID, EXIT_OK

DEFAULT_BASE = "flowyard/base:bookworm"


def service_tag() -> str:
    """The service image, flowyard/flowyard:<version> (`flowyard images build`)."""
    return f"flowyard/flowyard:{VERSION}"


CONTEXT_LABEL = "io.flowyard.context"
_IGNORED = {"tests", "__pycache__", ".pytest_cache"}


def context_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not (set(rel.parts) & _IGNORED) and path.suffix != ".pyc":
            files.append(path)
    return files


def context_digest(folder: Path, base_id: str) -> str:
    h = hashlib.sha256(base_id.encode())
    for path in context_files(folder):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def context_tar(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in context_files(folder):
            tar.add(path, arcname=str(path.relative_to(folder)))
    return buf.getvalue()


async def build_agents(names: tuple[str, ...], *, base: str, force: bool) -> int:
    folders = await asyncio.to_thread(agent_dirs)
    shipped = await asyncio.to_thread(builtin_agents)
    unknown = [n for n in names if n not in folders]
    if unknown:
        print(
            f"flowyard: no built-in agent {', '.join(map(repr, unknown))}; there are: {', '.join(folders) or 'none'} "
            f"(in {agents_dir()})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    docker = dockerclient.client()
    try:
        base_info = await ensure_base(docker, base)
        if isinstance(base_info, int):
            return base_info
        # The egress proxy first: the built-in model and CLI agents reach their provider through it.
        failed = 0 if await _build_one(docker, egress_dir(), egress_tag(), base, base_info, force) else 1
        for name in names or tuple(folders):
            image = shipped[name].spec.image
            assert image is not None, f"built-in agent {name} has no image"
            if not await _build_one(docker, folders[name], image, base, base_info, force):
                failed += 1
        return EXIT_BROKEN if failed else EXIT_OK
    finally:
        await docker.close()


def egress_tag() -> str:
    """The egress proxy's image, flowyard/egress:<version> (executor.egress_image's default)."""
    return f"flowyard/egress:{VERSION}"


def egress_dir() -> Path:
    return Path(agents_dir()).parent / "deploy" / "egress"


async def _build_one(
    docker: aiodocker.Docker, folder: Path, image: str, base: str, base_info: dict[str, Any], force: bool
) -> bool:
    """Build ``image`` from ``folder`` unless it is up to date; False when it failed."""
    extra = vendor.read(folder)
    on, on_info = base, base_info
    if extra is not None and extra.base == "service":
        on = service_tag()
        found = await _image(docker, on)
        if found is None:
            print(f"flowyard: {image} builds on {on}, which is not here; `flowyard images build` makes both")
            return False
        on_info = found
    digest = await asyncio.to_thread(context_digest, folder, on_info["Id"])
    existing = await _image(docker, image)
    if not force and existing and (existing.get("Config") or {}).get("Labels", {}).get(CONTEXT_LABEL) == digest:
        print(f"{image}: up to date")
        return True
    print(f"{image}: building from {folder} on {on}", flush=True)
    error = await _build(docker, folder, image, on, digest, extra)
    if error:
        print(f"flowyard: {image} did not build: {error}", file=sys.stderr)
        return False
    print(f"{image}: built")
    return True


async def ensure_base(docker: aiodocker.Docker, base: str) -> dict[str, Any] | int:
    """The base image's details, built offline when it is the default and missing; else an exit code."""
    try:
        base_info = await _image(docker, base)
    except Exception as exc:
        if not dockerclient.is_unreachable(exc):
            raise
        print(f"flowyard: {dockerclient.unreachable(docker, exc)}", file=sys.stderr)
        return EXIT_BROKEN
    if base_info is not None:
        return base_info
    if base != DEFAULT_BASE:
        print(
            f"flowyard: base image {base!r} is not present and nothing is pulled; build or load it first",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if await _build_base() != 0:
        return EXIT_BROKEN
    built = await _image(docker, base)
    assert built is not None
    return built


async def _image(docker: aiodocker.Docker, name: str) -> dict[str, Any] | None:
    try:
        return await docker.images.inspect(name)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise


async def _build(
    docker: aiodocker.Docker, folder: Path, tag: str, base: str, digest: str, extra: vendor.Vendor | None = None
) -> str | None:
    context = await asyncio.to_thread(context_tar, folder)
    if extra is not None:
        print(f"{tag}: fetching {extra.what} for the image", flush=True)
        staged, problem = await vendor.stage(extra)
        try:
            if problem:
                return problem
            context = await asyncio.to_thread(vendor.add_to, context, staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    try:
        lines = await docker.images.build(
            fileobj=io.BytesIO(context),
            encoding="identity",
            tag=tag,
            buildargs={"BASE": base},
            labels={CONTEXT_LABEL: digest, "io.flowyard.agent": folder.name},
            rm=True,
            forcerm=True,
            pull=False,
        )
    except aiodocker.DockerError as exc:
        return exc.message
    for line in lines:
        if isinstance(line, dict) and line.get("error"):
            return str(line["error"]).strip()
    return None


async def _build_base() -> int:
    script = Path(agents_dir()).parent / "deploy" / "base-image" / "build.sh"
    if not script.is_file():
        print(f"flowyard: the base image is missing and {script} is not there to build it", file=sys.stderr)
        return 1
    print(f"{DEFAULT_BASE}: not present, building it with {script} (debootstrap, about a minute)", flush=True)
    proc = await asyncio.create_subprocess_exec("bash", str(script), DEFAULT_BASE)
    return await proc.wait()
