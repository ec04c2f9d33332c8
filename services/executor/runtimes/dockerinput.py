"""How an agent's input reaches it in a container without depending on the executor that started
it (docs/adr/0010-agent-input-in-the-container.md).

The input is in the container before it starts, and a `/bin/sh` wrapper makes it the agent's
stdin. An input that fits in one environment variable (nearly all: up to ``ENV_MAX`` bytes) is
part of the container's configuration, created in the same request as the container; a larger
one is a file copied into an anonymous volume before the start. An executor that dies at any
moment leaves either a container not yet started (whoever adopts it starts it, copying a file
input again first) or one whose agent already has its whole input: never an agent reading a
cut-off stdin.

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
INPUT_ENV = "FLOWYARD_INPUT"
# Linux caps one environment string at 128 KiB (MAX_ARG_STRLEN); keep clear of it.
ENV_MAX = 120 * 1024
SHELL = "/bin/sh"
Mode = Literal["env", "file", "stdin"]

# The variable becomes a file on the container's own tmpfs, opened as stdin, removed, and unset:
# the agent sees its input on stdin only. `exec` leaves the agent as the process.
_FROM_ENV = (
    f'printf "%s" "${INPUT_ENV}" > /tmp/.flowyard-input && exec 0< /tmp/.flowyard-input'
    f' && rm -f /tmp/.flowyard-input && unset {INPUT_ENV} && exec "$@"'
)
_FROM_FILE = f'exec "$@" < {INPUT_FILE}'


def mode_for(stdin: bytes, *, shell: bool) -> Mode:
    if not shell:
        return "stdin"
    return "env" if len(stdin) <= ENV_MAX and b"\x00" not in stdin else "file"


def wrapped(command: list[str], mode: Mode) -> tuple[list[str], list[str]]:
    """(Entrypoint, Cmd): the agent's own command, run by `exec` with its stdin from the input."""
    return [SHELL, "-c", _FROM_ENV if mode == "env" else _FROM_FILE, "flowyard-agent"], list(command)


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
    """Whether the (created, not started) container's image has ``/bin/sh``: read through the
    archive API, no exec (a HEAD would do, but aiodocker cannot read its empty 404)."""
    try:
        async with docker._query(
            f"containers/{container.id}/archive", method="GET", params={"path": SHELL}
        ) as response:
            return response.status == 200
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
