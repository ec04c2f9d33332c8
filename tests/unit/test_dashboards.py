"""The Grafana dashboards: generated, current, and built only from metrics flowyard exports."""

from __future__ import annotations

import json
import re

from shared.codegen import dashboards
from shared.telemetry import metrics

METRIC = re.compile(r"\b(flowyard_[a-z_]+)\b")


def test_the_committed_dashboards_are_what_the_code_generates() -> None:
    stale = dashboards.stale()
    assert not stale, (
        f"deploy/grafana/dashboards is stale ({', '.join(stale)}): run `python -m shared.codegen.dashboards`"
    )
    assert sorted(p.name for p in dashboards.OUT.glob("*.json")) == sorted(dashboards.render())


def test_every_panel_has_a_title_a_description_and_a_unit() -> None:
    for name in dashboards.render():
        board = json.loads((dashboards.OUT / name).read_text())
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels, name
        for p in panels:
            assert p["title"] and p["description"], (name, p)
            assert p["fieldConfig"]["defaults"]["unit"], (name, p["title"])
            assert p["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
            assert p["gridPos"]["w"] > 0 and p["gridPos"]["h"] > 0


def test_every_query_uses_only_metrics_flowyard_exports() -> None:
    exported = metrics.names()
    for uid, queries in dashboards.queries().items():
        for title, expr in queries:
            used = set(METRIC.findall(expr))
            assert used, (uid, title, expr)
            unknown = used - exported
            assert not unknown, f"{uid} / {title}: {sorted(unknown)} are not flowyard metrics"
            # Never a run id, or anything else unbounded, in a label.
            assert "run_id" not in expr


def test_the_overview_covers_what_an_operator_asks_first() -> None:
    exprs = " ".join(e for _, e in dashboards.queries()["flowyard-overview"])
    for needed in (
        "flowyard_runs_finished_total",
        "flowyard_run_duration_seconds_bucket",
        "flowyard_runs_active",
        "flowyard_approvals_pending",
        "flowyard_consumer_pending",
        "flowyard_dead_letters_total",
    ):
        assert needed in exprs, needed


def test_the_workflow_dashboard_has_a_workflow_variable() -> None:
    board = json.loads((dashboards.OUT / "flowyard-workflow.json").read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "workflow"]
    assert all('workflow=~"$workflow"' in e for _, e in dashboards.queries()["flowyard-workflow"])


def test_docs_describe_every_metric_alert_and_panel() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    doc = " ".join((root / "docs" / "observability.md").read_text().split())  # titles wrap across lines
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in metrics.names()}
    missing = sorted(f for f in families if f"`{f}`" not in doc)
    assert not missing, f"docs/observability.md does not describe {missing}"
    rules = yaml.safe_load((root / "deploy/prometheus/rules/flowyard-alerts.yml").read_text())
    for alert in (r["alert"] for g in rules["groups"] for r in g["rules"]):
        assert f"[{alert}]" in doc, alert
    for fn in dashboards.DASHBOARDS:
        spec = fn()
        assert spec.title in doc
        for _, panels in spec.rows:
            for p in panels:
                assert f"*{p.title}*" in doc, (spec.uid, p.title)
