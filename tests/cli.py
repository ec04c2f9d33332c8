"""Running the CLI as a user would: `flowyard ...` as a child process, and `flowyard up`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any FLOWYARD_* setting, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")} | (extra or {})


def flowyard(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, runtime: str | None = "process"
) -> subprocess.CompletedProcess[str]:
    """``flowyard ARGS``; engine tests use the process runtime unless ``runtime`` says otherwise."""
    settings = {"FLOWYARD_EXECUTOR_RUNTIME": runtime} if runtime else {}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(settings | (env or {})),
    )


@contextlib.contextmanager
def flowyard_up(
    data_dir: Path, *, runtime: str = "process", env: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """A running `flowyard up` (``env`` added to its environment); yields the environment that
    points the CLI at it."""
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--data-dir", str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env({"FLOWYARD_EXECUTOR_RUNTIME": runtime, "FLOWYARD_GATEWAY_PORT": "0", **(env or {})}),
    )
    try:
        assert up.stdout is not None
        url = ""
        while not url:
            line = up.stdout.readline()
            assert line, "flowyard up ended before it was up"
            if "export FLOWYARD_NATS_URL=" in line:
                url = line.strip().split("=", 1)[1]
        yield {"FLOWYARD_NATS_URL": url}
    finally:
        up.terminate()
        up.wait(timeout=30)
