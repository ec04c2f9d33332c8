"""Agents whose image carries a tool from the npm registry (the coding CLIs): ``vendor.yaml``.

The package is installed on the host at build time (``npm install``, from the registry or a
tarball packed here) and only the named files go into the image, under ``vendor/``; nothing is
downloaded when an agent runs. ``base: service`` builds the agent on flowyard's own service image,
whose Python runs the agent's wrapper (``flowyard-agent-cli``).

    npm: "@anthropic-ai/claude-code@2.1.332"     # exact version: the image is reproducible
    files: {claude: node_modules/@anthropic-ai/claude-code-linux-x64/claude}
    base: service
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

VENDOR_FILE = "vendor.yaml"


@dataclass(frozen=True, slots=True)
class Vendor:
    npm: str
    files: dict[str, str]  # name under vendor/ -> path inside the npm install
    base: str = "agent"  # agent: the offline base image; service: flowyard/flowyard:<version>


def read(folder: Path) -> Vendor | None:
    path = folder / VENDOR_FILE
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    npm, files, base = doc.get("npm"), doc.get("files"), doc.get("base", "agent")
    if not isinstance(npm, str) or "@" not in npm.lstrip("@") or not isinstance(files, dict) or not files:
        raise ValueError(f"{path}: needs `npm: <package>@<exact version>` and `files: {{name: path in the install}}`")
    if base not in ("agent", "service"):
        raise ValueError(f"{path}: base is `agent` or `service`, not {base!r}")
    return Vendor(npm=npm, files={str(k): str(v) for k, v in files.items()}, base=base)


async def stage(vendor: Vendor) -> tuple[Path, str | None]:
    """A directory holding ``vendor/<name>`` for every file, or (dir, why it failed)."""
    tmp = Path(tempfile.mkdtemp(prefix="fy-vendor-"))
    npm = shutil.which("npm")
    if npm is None:
        return tmp, "npm is not installed on this host (apt-get install npm); it fetches the CLI at build time"
    proc = await asyncio.create_subprocess_exec(
        npm,
        "install",
        "--prefix",
        str(tmp / "npm"),
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--loglevel=error",
        vendor.npm,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return tmp, f"npm install {vendor.npm} failed: {err.decode(errors='replace').strip()[-400:]}"
    out = tmp / "vendor"
    out.mkdir()
    for name, rel in vendor.files.items():
        source = tmp / "npm" / rel
        if not source.is_file():
            return tmp, f"{vendor.npm} has no {rel} (this platform's build missing?)"
        shutil.copy2(source, out / name)
    return tmp, None


def add_to(context: bytes, staged: Path) -> bytes:
    """The agent's build context with ``vendor/`` added."""
    merged = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(context)) as src, tarfile.open(fileobj=merged, mode="w") as tar:
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member) if member.isfile() else None)
        tar.add(staged / "vendor", arcname="vendor")
    return merged.getvalue()
