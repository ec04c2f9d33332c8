"""What every CLI command shares: exit codes, printing, and the process set-up.

A leaf module: it imports nothing of the CLI, so the command modules and ``main`` can all use it
without importing each other in a circle.

Exit codes: 0 the run succeeded (or the command did what it was asked), 1 the run failed or was
cancelled, 2 the input is invalid (workflow, inputs, configuration; the message names the place
and the fix), 3 flowyard could not do its job (NATS unreachable, a service failed to start).
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from shared.config.settings import Config
from shared.service.host import configure_process

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_BROKEN = 0, 1, 2, 3


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"flowyard: {message}", err=True)
    sys.exit(code)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def configure(config: Config, service: str, *, quiet: bool = False) -> None:
    configure_process(config, service, quiet=quiet)
