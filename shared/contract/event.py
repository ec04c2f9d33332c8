"""The base of every event: tagged by ``type``, frozen, keyword-only, about one run (or plan)."""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    # The run the event belongs to. A plan's events carry the plan's id here: its subjects
    # (fy.run.<plan>.plan.*), its trace and its approval follow a run's without a second path.
    run_id: str
