"""Triggers' pure logic: subjects, matchers, schedules (timezones and daylight saving), storms,
events, and validation messages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.planner.triggers import events, storm
from services.planner.triggers.start import run_id_for
from shared.contract.alerts import Alert, Notification
from shared.workflow.model import CronTrigger
from shared.workflow.schedules import catchup, jitter_s, last_time, next_time
from shared.workflow.triggers import covers, minimal_subjects, parse_matcher, subject_matches, subject_problems


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pattern", "subject", "hit"),
    [
        ("deploys.>", "deploys.prod", True),
        ("deploys.>", "deploys.prod.eu", True),
        ("deploys.>", "deploys", False),
        ("deploys.*", "deploys.prod", True),
        ("deploys.*", "deploys.prod.eu", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.b", "a.b", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, hit: bool) -> None:
    assert subject_matches(pattern, subject) is hit


def test_capture_subjects_without_overlaps() -> None:
    assert covers("deploys.>", "deploys.prod") and covers("deploys.>", "deploys.*.eu")
    assert not covers("deploys.*", "deploys.>") and not covers("a.b", "a.*")
    assert minimal_subjects(["deploys.prod", "deploys.>", "alerts.*", "alerts.x", "x.y"]) == [
        "alerts.*",
        "deploys.>",
        "x.y",
    ]


def test_subjects_of_flowyard_and_nats_are_refused() -> None:
    assert subject_problems("fy.run.x") and subject_problems("$JS.API.>") and subject_problems(">")
    assert subject_problems("a.>.b") and subject_problems("a b") and not subject_problems("deploys.>")


def test_matchers_as_alertmanager_writes_them() -> None:
    labels = {"alertname": "HighLatency", "severity": "page", "team": "core"}
    assert parse_matcher('alertname="HighLatency"').matches(labels)
    assert parse_matcher("alertname=HighLatency").matches(labels)
    assert parse_matcher('severity=~"critical|page"').matches(labels)
    assert not parse_matcher('severity=~"crit"').matches(labels)  # anchored: no partial match
    assert parse_matcher('team!="infra"').matches(labels)
    assert parse_matcher('team!~"inf.*"').matches(labels)
    assert parse_matcher('missing=""').matches(labels)  # an absent label is the empty string
    for bad in ('severity=~"(crit"', "=x", 'a="unterminated'):
        with pytest.raises(ValueError):
            parse_matcher(bad)


def test_cron_in_a_timezone_and_across_daylight_saving() -> None:
    berlin = CronTrigger(schedule="30 2 * * *", timezone="Europe/Berlin")
    # Spring forward (2026-03-29, 02:00 -> 03:00): 02:30 does not exist and runs once, at 03:00 CEST.
    assert next_time(berlin, utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1, 0)
    assert next_time(berlin, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 30, 0, 30)
    # Fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice on the clock and runs once.
    first = next_time(berlin, utc(2026, 10, 24, 23, 0))
    assert first == utc(2026, 10, 25, 0, 30)
    assert next_time(berlin, first) == utc(2026, 10, 26, 1, 30)
    # The same expression in UTC.
    assert next_time(CronTrigger(schedule="30 2 * * *"), utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 2, 30)


def test_intervals_are_aligned_so_every_replica_agrees() -> None:
    every = CronTrigger(every="30s")
    assert next_time(every, utc(2026, 1, 1, 0, 0, 10)) == utc(2026, 1, 1, 0, 0, 30)
    assert next_time(every, utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 1, 0)  # strictly after
    assert last_time(every, utc(2026, 1, 1, 0, 0, 59)) == utc(2026, 1, 1, 0, 0, 30)


def test_catchup_runs_only_the_latest_missed_time_within_the_window() -> None:
    cron = CronTrigger(schedule="*/5 * * * *", catchup_window="1h")
    now = utc(2026, 1, 1, 12, 22)
    assert catchup(cron, utc(2026, 1, 1, 12, 0), now) == utc(2026, 1, 1, 12, 20)
    assert catchup(cron, utc(2026, 1, 1, 12, 20), now) is None  # nothing missed
    assert catchup(cron, None, now) is None  # a new schedule starts from now
    assert catchup(CronTrigger(schedule="*/5 * * * *"), utc(2026, 1, 1, 12, 0), now) is None  # no window
    assert catchup(CronTrigger(schedule="0 0 * * *", catchup_window="1h"), utc(2025, 12, 30), now) is None


def test_jitter_is_the_same_on_every_replica() -> None:
    cron = CronTrigger(every="1m", jitter="30s")
    t = utc(2026, 1, 1, 0, 1)
    assert jitter_s(cron, "wf#0", t) == jitter_s(cron, "wf#0", t)
    assert 0 <= jitter_s(cron, "wf#0", t) < 30
    assert jitter_s(CronTrigger(every="1m"), "wf#0", t) == 0


def test_storm_window_opens_at_the_first_event() -> None:
    window, ok = storm.admit(None, 100.0, 2, 60)
    assert ok and window.count == 1
    window, ok = storm.admit(window, 101.0, 2, 60)
    assert ok and window.count == 2
    window, ok = storm.admit(window, 159.0, 2, 60)
    assert not ok
    window, ok = storm.admit(window, 160.0, 2, 60)
    assert ok and window.start == 160.0 and window.count == 1


def test_nats_event_ids_and_refusals() -> None:
    trigger, key = events.nats_event("deploys.a", b'{"x": 1}', {"Nats-Msg-Id": "m1"}, 7)
    assert key == "m1" and trigger == {
        "type": "nats",
        "subject": "deploys.a",
        "id": "m1",
        "data": {"x": 1},
        "headers": {"Nats-Msg-Id": "m1"},
    }
    assert events.nats_event("deploys.a", b"{}", {"ce-id": "c1"}, 7)[1] == "c1"
    assert events.nats_event("deploys.a", b"{}", {}, 7)[1] == "seq:7"
    with pytest.raises(events.Refused, match="not JSON"):
        events.nats_event("deploys.a", b"\xff nope", {}, 7)


def test_alerts_become_one_trigger_each_with_a_stable_key() -> None:
    note = Notification(
        receiver="flowyard",
        groupKey='{}:{alertname="X"}',
        alerts=[
            Alert(labels={"alertname": "X", "i": "1"}, startsAt="2026-01-01T00:00:00Z", fingerprint="abc"),
            Alert(labels={"alertname": "X", "i": "2"}, startsAt="2026-01-01T00:00:00Z"),
        ],
    )
    first, second = events.alert_triggers(note)
    assert first["fingerprint"] == "abc" and events.alert_key(first) == "abc@2026-01-01T00:00:00Z"
    assert second["fingerprint"] and second["fingerprint"] != "abc"
    assert first["group"]["receiver"] == "flowyard"


def test_run_ids_from_triggers_sort_by_time_and_agree() -> None:
    a, b = run_id_for(1000, "k"), run_id_for(1000, "k")
    assert a == b and run_id_for(2000, "k") > a and run_id_for(1000, "j") != a


def _problems(triggers: str) -> list[str]:
    from shared.contract.errors import ValidationFailed
    from shared.workflow.check import check_bundle
    from shared.workflow.loader import load_bundle

    text = (
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: t}\nspec:\n"
        "  inputs: {service: {type: string}}\n"
        f"  triggers:\n{triggers}"
        "  nodes: [{id: a, agent: shell, with: {command: ls}}]\n"
    )
    try:
        check_bundle(load_bundle(text, "t.yaml"))
    except ValidationFailed as exc:
        return exc.problems
    return []


def test_validation_names_the_trigger_and_the_fix() -> None:
    ok = "    - nats: {subject: deploys.>}\n      inputs: {service: '{{ trigger.data.service }}'}\n"
    assert _problems(ok) == []
    found = _problems("    - cron: {schedule: '61 * * * *', timezone: Mars/Base}\n      inputs: {service: x}\n")
    assert any("t.yaml:7: trigger #1 (cron): schedule '61 * * * *'" in p for p in found)
    assert any("unknown timezone 'Mars/Base'" in p for p in found)
    found = _problems("    - alertmanager: {matchers: ['a=~\"(\"']}\n      inputs: {service: '{{ trigger.data }}'}\n")
    assert any("bad regular expression" in p for p in found)
    assert any("an alertmanager trigger has no field 'data'" in p for p in found)
    found = _problems("    - cron: {every: 5m}\n")
    assert any("requires input(s) service" in p for p in found)
    found = _problems("    - nats: {subject: x}\n      cron: {every: 1m}\n      inputs: {service: x}\n")
    assert any("exactly one of nats, alertmanager or cron" in p for p in found)
    found = _problems("    - nats: {subjekt: x}\n")
    assert any("unknown key 'subjekt'" in p and "subject" in p for p in found)
    found = _problems("    - cron: {every: 1m, schedule: '* * * * *'}\n      inputs: {service: x}\n")
    assert any("either schedule" in p for p in found)
    found = _problems(
        '    - nats: {subject: a.b, when: "trigger.nope == 1"}\n      inputs: {service: x}\n'
        "      max_runs: {count: 0, per: soon}\n"
    )
    assert any("when" in p and "trigger.nope" in p for p in found)
    assert any("max_runs.count must be at least 1" in p for p in found)
    assert any("max_runs.per" in p for p in found)


def test_a_trigger_that_plans_is_checked() -> None:
    ok = "    - alertmanager: {matchers: ['a=\"b\"']}\n      inputs: {service: x}\n      plan: {goal: 'Fix {{ trigger.labels.a }}'}\n"
    assert _problems(ok) == []
    cron = "    - cron: {every: 1m}\n      inputs: {service: x}\n      plan: {goal: fix it}\n"
    assert any("only a nats or alertmanager trigger can plan" in p for p in _problems(cron))
    empty = "    - alertmanager: {matchers: ['a=\"b\"']}\n      inputs: {service: x}\n      plan: {goal: ' '}\n"
    assert any("plan.goal: say what the plan is for" in p for p in _problems(empty))
    wrong = "    - alertmanager: {matchers: ['a=\"b\"']}\n      inputs: {service: x}\n      plan: {goal: '{{ inputs.x }}'}\n"
    assert any("plan.goal" in p and "`trigger` only" in p for p in _problems(wrong))
