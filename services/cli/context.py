"""What every command shares: the configuration it was given (:class:`Ctx`) and running its
coroutine with the documented exit codes (:func:`_run`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

import msgspec

from shared.bus.delivery import NatsUnavailable
from shared.config.settings import Config, load_config
from shared.contract.errors import ConfigurationError, ValidationFailed

from .output import EXIT_BROKEN, EXIT_INVALID
from .output import fail as _fail


def _run(coro: Coroutine[Any, Any, int]) -> NoReturn:
    try:
        code = asyncio.run(coro)
    except ValidationFailed as exc:
        _fail("invalid input:\n  " + "\n  ".join(exc.problems), EXIT_INVALID)
    except ConfigurationError as exc:
        text = str(exc)
        code = EXIT_INVALID if text.startswith(("invalid configuration", "config file")) else EXIT_BROKEN
        _fail(text, code)
    except TimeoutError as exc:
        _fail(
            f"{exc or 'timed out'}: NATS did not answer in time; a run already requested goes on without us "
            "(`flowyard runs show` follows it)",
            EXIT_BROKEN,
        )
    except NatsUnavailable as exc:
        _fail(f"{exc}; a run already requested goes on without us: `flowyard runs show` follows it", EXIT_BROKEN)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(code)


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def config(self, **overrides: dict[str, Any]) -> Config:
        try:
            cfg = load_config(self.config_path)
        except ConfigurationError as exc:
            _fail(str(exc), EXIT_INVALID)
        for section, values in overrides.items():
            if values:
                cfg = msgspec.structs.replace(
                    cfg, **{section: msgspec.structs.replace(getattr(cfg, section), **values)}
                )
        return cfg
