"""Workspace versions: packing, the container archive form, digests and limits."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from shared.state import workspace as ws


def make_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("print(1)\n")
    (root / "README.md").write_text("hi\n")
    (root / "build").mkdir()
    (root / "build" / "big.bin").write_bytes(os.urandom(2048))
    os.symlink("src/a.py", root / "inside-link")
    os.symlink("/etc/passwd", root / "outside-link")
    return root


def names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name for m in tar}


def test_pack_and_unpack_round_trip(tmp_path: Path) -> None:
    data = ws.pack_dir(make_tree(tmp_path / "in"), max_bytes=1 << 20, exclude=["build"])
    assert names(data) == {"src", "src/a.py", "README.md", "inside-link"}  # no outside link, no build/
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert all(m.uid == 0 and m.uname == "" for m in tar)
    ws.unpack_to_dir(data, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "a.py").read_text() == "print(1)\n"
    assert os.readlink(tmp_path / "out" / "inside-link") == "src/a.py"


def test_limits_and_bad_directories_say_what_to_do(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    with pytest.raises(ws.WorkspaceError, match=r"larger than 0.0 MiB.*workspace_max_bytes.*--exclude"):
        ws.pack_dir(tmp_path / "in", max_bytes=100)
    with pytest.raises(ws.WorkspaceError, match="not a directory"):
        ws.pack_dir(tmp_path / "missing", max_bytes=1 << 20)


def test_unpacking_refuses_names_that_escape(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ws.WorkspaceError, match="may not be written out"):
        ws.unpack_to_dir(buf.getvalue(), tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()
    with pytest.raises(ws.WorkspaceError, match="not a readable archive"):
        ws.unpack_to_dir(b"garbage", tmp_path / "dest")


def test_links_an_agent_points_outside_are_not_kept() -> None:
    docker = io.BytesIO()
    with tarfile.open(fileobj=docker, mode="w") as tar:
        for name, target in (("workspace/etc", "/etc/passwd"), ("workspace/up", "../../x"), ("workspace/ok", "sub/f")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    assert names(ws.from_container(docker.getvalue(), max_bytes=1 << 20)) == {"ok"}


@pytest.mark.parametrize(("writable", "owner", "mode"), [(True, ws.AGENT_UID, 0o644), (False, 0, 0o444)])
def test_container_archive_ownership(tmp_path: Path, writable: bool, owner: int, mode: int) -> None:
    data = ws.pack_dir(make_tree(tmp_path / "in"), max_bytes=1 << 20)
    archive = ws.for_container(data, writable=writable)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        top, *rest = tar.getmembers()
        members = {m.name: m for m in rest}
    assert top.isdir() and top.uid == owner  # "/": the mount point itself (Python reads the name as "")
    assert members["src/a.py"].uid == owner and members["src/a.py"].mode & 0o777 == mode
    assert ws.for_container(None, writable=True)  # an empty workspace still sets the owner


def test_from_container_strips_the_mount_and_digest_ignores_times(tmp_path: Path) -> None:
    data = ws.pack_dir(make_tree(tmp_path / "in"), max_bytes=1 << 20)
    # Docker's archive of /workspace: everything under "workspace/", owned by the agent.
    docker = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=docker, mode="w") as dst:
        top = tarfile.TarInfo("workspace")
        top.type = tarfile.DIRTYPE
        dst.addfile(top)
        for m in src:
            m.name = "workspace/" + m.name
            m.uid = ws.AGENT_UID
            m.mtime = time.time() + 100
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    back = ws.from_container(docker.getvalue(), max_bytes=1 << 20)
    assert names(back) == names(data)
    assert ws.digest(back) == ws.digest(data)
    (tmp_path / "in" / "README.md").write_text("changed\n")
    assert ws.digest(ws.pack_dir(tmp_path / "in", max_bytes=1 << 20)) != ws.digest(data)
    assert ws.digest(None) == ws.digest(b"")
