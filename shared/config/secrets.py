"""Where an agent's declared secrets come from: files in a directory (a mounted Kubernetes Secret:
one file per name) or ``FLOWYARD_SECRET_<NAME>`` variables of the executor. Values go to the agent
and nowhere else."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

SECRET_ENV_PREFIX = "FLOWYARD_SECRET_"


class SecretSource:
    def __init__(self, directory: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self.environ = os.environ if environ is None else environ

    async def resolve(self, names: list[str]) -> tuple[dict[str, str], list[str]]:
        """The values of ``names``, and the names that could not be found."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for name in names:
            value = await asyncio.to_thread(self._file, name) if self.directory else None
            if value is None:
                value = self.environ.get(SECRET_ENV_PREFIX + name)
            if value is None:
                missing.append(name)
            else:
                found[name] = value
        return found, missing

    def where(self, name: str) -> str:
        places = [f"{SECRET_ENV_PREFIX}{name}"]
        if self.directory:
            places.insert(0, str(self.directory / name))
        return " or ".join(places)

    def _file(self, name: str) -> str | None:
        assert self.directory is not None
        try:
            return (self.directory / name).read_text().rstrip("\n")
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return None
