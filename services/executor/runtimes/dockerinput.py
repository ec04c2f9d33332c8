"""How an agent's input reaches it in a container without depending on the executor that started
it (docs/adr/0010-agent-input-in-the-container.md).

The input is copied into the container before it starts — a file in an anonymous volume — and a
`/bin/sh` wrapper makes that file the agent's stdin. An executor that dies at any moment leaves
either a container not yet started (whoever adopts it copies the input again and starts it) or
one whose agent already has its whole input: never an agent reading a cut-off stdin.

An image without `/bin/sh` cannot run the wrapper: its agents get their input through the attach
as before (the executor must live until the input is written; a crash in that window fails the
attempt). Whether an image has a shell is learnt once per image, from its first container.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any, Literal

import aiodocker

INPUT_DIR = "/flowyard/input"
INPUT_FILE = f"{INPUT_DIR}/input.json"
SHELL = "/bin/sh"
Mode = Literal["file", "stdin"]


def wrapped(command: list[str]) -> tuple[list[str], list[str]]:
    """(Entrypoint, Cmd): the agent's own command, run by `exec` with stdin from the input file."""
    return [SHELL, "-c", f'exec "$@" < {INPUT_FILE}', "flowyard-agent"], list(command)


def archive(stdin: bytes) -> bytes:
    """The input as an archive for ``put_archive`` into ``INPUT_DIR``: root's, read-only to all."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        top = tarfile.TarInfo("/")
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        tar.addfile(top)
        info = tarfile.TarInfo("input.json")
        info.size = len(stdin)
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(stdin))
    return out.getvalue()


async def image_command(docker: aiodocker.Docker, image: str) -> tuple[bool, list[str]]:
    """(whether the image is here, the command it runs: its ENTRYPOINT then CMD)."""
    try:
        config = (await docker.images.inspect(image)).get("Config") or {}
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False, []
        raise
    return True, [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]


async def has_shell(docker: aiodocker.Docker, container: Any) -> bool:
    """Whether the (created, not started) container's image has ``/bin/sh``: a stat, no exec."""
    try:
        async with docker._query(
            f"containers/{container.id}/archive", method="HEAD", params={"path": SHELL}
        ) as response:
            return response.status == 200
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
