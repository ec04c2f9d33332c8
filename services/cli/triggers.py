"""``flowyard triggers list``: every active trigger and what it did."""

from __future__ import annotations

from shared.api.views import to_json
from shared.config.settings import Config
from shared.state.triggering import list_triggers

from .client import connected
from .output import EXIT_OK, echo_json


async def show_triggers(config: Config, *, as_json: bool) -> int:
    async with connected(config) as bus:
        views = await list_triggers(bus)
    if as_json:
        echo_json(to_json(views))
        return EXIT_OK
    if not views:
        print("no triggers active; add spec.triggers to a workflow and `flowyard workflows apply` it")
        return EXIT_OK
    for v in views:
        c = v.counts
        nxt = f"; next {v.next_at}" if v.next_at else ""
        print(f"{v.id:<28} {v.kind:<12} {v.description}{nxt}")
        print(
            f"{'':<28} fired {c.fired}, deduplicated {c.deduplicated}, suppressed {c.suppressed}, "
            f"refused {c.refused}, skipped {c.skipped}"
        )
    return EXIT_OK
