"""The Docker client every part of flowyard uses (executor runtime, doctor, agents build).

aiodocker finds the daemon by the docker context, ``DOCKER_HOST`` or a socket that exists, and
asserts when it finds none — which is exactly the moment an on-call engineer needs a plain
sentence. Falling back to the standard socket turns a stopped daemon into a connection error,
which :func:`is_unreachable` recognises (aiodocker reports it as a ``DockerError`` with status
900) and :func:`unreachable` words.
"""

from __future__ import annotations

import aiodocker
import aiohttp

DEFAULT_HOST = "unix:///var/run/docker.sock"
_NO_CONNECTION = 900  # aiodocker's status for "could not connect"


def client() -> aiodocker.Docker:
    try:
        return aiodocker.Docker()
    except (AssertionError, ValueError):  # no daemon socket found (ValueError under python -O)
        return aiodocker.Docker(url=DEFAULT_HOST)


def is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, aiodocker.DockerError):
        return exc.status == _NO_CONNECTION
    # Only connection failures: any other error (a file the executor lacks, say) must not pass for
    # a daemon outage, which hands the dispatch back instead of failing it.
    return isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError))


def unreachable(docker: aiodocker.Docker, exc: BaseException) -> str:
    return (
        f"cannot reach the Docker daemon at {_address(docker)} ({_reason(exc)}); start it (dockerd, or "
        "systemctl start docker) or point DOCKER_HOST at it — `flowyard doctor` checks"
    )


def _address(docker: aiodocker.Docker) -> str:
    # What the client was given; its docker_host reads unix://localhost for every socket.
    return str(getattr(docker, "_connection_info", None) or docker.docker_host)


def _reason(exc: BaseException) -> str:
    """The operating system's words (``No such file or directory``), found along the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__
