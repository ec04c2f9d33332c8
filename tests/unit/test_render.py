"""How the CLI shows a run's outputs to people."""

from __future__ import annotations

import io

from services.cli.render import print_outcome


def test_lists_of_lines_print_a_line_each_and_the_rest_as_json() -> None:
    out = io.StringIO()
    print_outcome(
        "succeeded",
        {"findings": ["critical a.py:3  eval", "info     a.py:1  TODO"], "score": 71, "counts": {"critical": 1}},
        None,
        out,
    )
    assert out.getvalue().splitlines() == [
        "run succeeded",
        "outputs:",
        "  findings:",
        "    critical a.py:3  eval",
        "    info     a.py:1  TODO",
        "  score: 71",
        '  counts: {"critical": 1}',
    ]


def test_runs_list_offers_exactly_the_statuses_a_run_view_has() -> None:
    from services.cli.groups.runs import RUN_STATUSES
    from shared.api.views import ViewStatus

    assert ViewStatus.__args__ == RUN_STATUSES  # type: ignore[attr-defined]
