"""``flowyard images build``: the service image flowyard/flowyard:<version>, then the agents'.

Offline, like the agents' images: the base is made with debootstrap when missing; the Python
packages are installed on the host into a directory (``pip install --target``: from this
checkout, or the installed version from the package index or a wheelhouse) and copied into the
image, so the Docker build needs no network and no registry.
"""

from __future__ import annotations

import asyncio
import io
import sys
import tarfile
import tempfile
from pathlib import Path

import aiodocker

from shared.docker import client as dockerclient
from shared.telemetry.metrics import VERSION

from .agentbuild import _image, build_agents, ensure_base, service_tag
from .output import EXIT_BROKEN, EXIT_INVALID, EXIT_OK

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def default_tag() -> str:
    return service_tag()


async def build_images(*, tag: str, base: str, agents: bool) -> int:
    if not DOCKERFILE.is_file():
        print(f"flowyard: {DOCKERFILE} is not here; build the image from a checkout of flowyard", file=sys.stderr)
        return EXIT_INVALID
    docker = dockerclient.client()
    try:
        base_info = await ensure_base(docker, base)
        if isinstance(base_info, int):
            return base_info
        with tempfile.TemporaryDirectory(prefix="fy-image-") as tmp:
            site = Path(tmp) / "site"
            source = str(ROOT) if (ROOT / "pyproject.toml").is_file() else f"flowyard=={VERSION}"
            print(f"{tag}: installing {source} and its dependencies for the image", flush=True)
            pip = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site), source
            )
            if await pip.wait() != 0:
                print("flowyard: pip could not install the packages for the image", file=sys.stderr)
                return EXIT_BROKEN
            context = await asyncio.to_thread(_context, site)
        print(f"{tag}: building on {base}", flush=True)
        try:
            lines = await docker.images.build(
                fileobj=io.BytesIO(context),
                encoding="identity",
                tag=tag,
                buildargs={"BASE": base},
                labels={"io.flowyard.version": VERSION},
                rm=True,
                forcerm=True,
                pull=False,
            )
        except aiodocker.DockerError as exc:
            print(f"flowyard: {tag} did not build: {exc.message}", file=sys.stderr)
            return EXIT_BROKEN
        errors = [str(line["error"]).strip() for line in lines if isinstance(line, dict) and line.get("error")]
        if errors:
            print(f"flowyard: {tag} did not build: {errors[0]}", file=sys.stderr)
            return EXIT_BROKEN
        info = await _image(docker, tag)
        size = (info or {}).get("Size", 0)
        print(f"{tag}: built, {size / 1e6:.0f} MB")
    finally:
        await docker.close()
    return await build_agents((), base=base, force=False) if agents else EXIT_OK


def _context(site: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(DOCKERFILE, arcname="Dockerfile")
        tar.add(site, arcname="site", filter=_no_caches)
    return buf.getvalue()


def _no_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info
