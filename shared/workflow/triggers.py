"""Triggers as written: subjects, Alertmanager matchers, schedules — parsed and checked.

Pure functions used twice: by validation (``flowyard validate``, apply) so a bad trigger is
refused before anything runs, and by the planner, which matches events with the same parsers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from shared.formats.durations import parse_duration
from shared.workflow.expressions import ExpressionError, parse, references
from shared.workflow.model import TriggerDef, WorkflowDoc
from shared.workflow.templates import TemplateError, find_refs

# What `trigger` holds for each kind: templates and conditions may use these fields only.
TRIGGER_FIELDS: dict[str, tuple[str, ...]] = {
    "nats": ("type", "subject", "id", "data", "headers"),
    "alertmanager": (
        "type",
        "status",
        "fingerprint",
        "labels",
        "annotations",
        "starts_at",
        "ends_at",
        "generator_url",
        "group",
    ),
    "cron": ("type", "scheduled_at", "fired_at"),
}
_TOKEN = re.compile(r"^[^\s.*>]+$")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


# --- NATS subjects ------------------------------------------------------------------------------


def subject_problems(subject: str) -> list[str]:
    if not subject or subject != subject.strip():
        return ["a subject is dot-separated tokens without spaces, e.g. deploys.> or alerts.*.critical"]
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i != len(tokens) - 1:
            return [f"{subject!r}: '>' may only be the last token"]
        if token not in ("*", ">") and not _TOKEN.match(token):
            return [f"{subject!r}: token {token!r} is not valid (no spaces, and * or > only as whole tokens)"]
    if tokens[0] in ("fy", "$JS", "$KV", "$O", "$SYS", "_INBOX") or tokens[0].startswith("$"):
        return [
            f"{subject!r}: subjects under {tokens[0]}. belong to flowyard or NATS itself; use a subject of your own"
        ]
    if tokens[0] in ("*", ">"):
        return [f"{subject!r}: a trigger must not start with a wildcard (it would capture flowyard's own subjects)"]
    return []


def subject_matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def covers(general: str, specific: str) -> bool:
    """Every subject ``specific`` matches is matched by ``general`` (so one stream subject suffices)."""
    g, s = general.split("."), specific.split(".")
    for i, token in enumerate(g):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if token == "*":
            if s[i] == ">":
                return False
            continue
        if token != s[i]:
            return False
    return len(g) == len(s)


def minimal_subjects(subjects: list[str]) -> list[str]:
    """The subjects to capture: without those another one already covers (streams refuse overlaps)."""
    unique = sorted(set(subjects))
    keep = [s for s in unique if not any(o != s and covers(o, s) for o in unique)]
    return keep


# --- Alertmanager matchers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.name, "")
        if self.op == "=":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(have) is not None
        return found if self.op == "=~" else not found


def parse_matcher(text: str) -> Matcher:
    """``name="value"`` (or unquoted) with =, !=, =~, !~, as Alertmanager writes them; regexes are anchored."""
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(f'matcher {text!r}: write name="value", name!="value", name=~"regex" or name!~"regex"')
    name, op, raw = m.groups()
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ValueError(f"matcher {text!r}: the value's closing quote is missing")
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValueError(f'matcher {text!r}: the quoted value is not valid (escape " and \\ with \\)') from None
    else:
        value = raw
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(f"(?:{value})")
        except re.error as exc:
            raise ValueError(f"matcher {text!r}: bad regular expression: {exc}") from None
    return Matcher(name=name, op=op, value=value, regex=regex)


# --- schedules ----------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}; use an IANA name such as UTC or Europe/Berlin") from None


def cron_problems(expr: str) -> list[str]:
    if len(expr.split()) != 5:
        return [f"schedule {expr!r}: write five fields: minute hour day-of-month month day-of-week, e.g. */5 * * * *"]
    try:
        CronSim(expr, datetime(2026, 1, 1))
    except CronSimError as exc:
        return [f"schedule {expr!r}: {exc}"]
    return []


def describe_cron(expr: str) -> str:
    try:
        return CronSim(expr, datetime(2026, 1, 1)).explain()
    except Exception:  # explain() is best effort
        return expr


# --- validation -----------------------------------------------------------------------------------


def _duration(value: str, what: str, *, positive: bool) -> list[str]:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        return [f"{what}: {exc}"]
    if positive and seconds <= 0:
        return [f"{what}: must be longer than 0s"]
    return []


def _template_problems(value: Any, kind: str, where: str) -> list[str]:
    problems: list[str] = []
    fields = TRIGGER_FIELDS[kind]
    leaves = [value] if isinstance(value, str) else []
    stack = [value]
    while stack:  # every string in nested mappings and lists
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and item is not value:
            leaves.append(item)
    for leaf in leaves:
        try:
            refs = list(find_refs(leaf))
        except TemplateError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for ref in refs:
            if ref.root != "trigger":
                problems.append(f"{where}: {ref.text}: a trigger's inputs are made from `trigger` only")
            elif not ref.path or ref.path[0] not in fields:
                article = "an" if kind[0] in "aeiou" else "a"
                field = ref.path[0] if ref.path else ""
                problems.append(
                    f"{where}: {ref.text}: {article} {kind} trigger has no field {field!r}; it has: {', '.join(fields)}"
                )
    return problems


def validate_triggers(wf: WorkflowDoc, at: Callable[[int], str]) -> list[str]:
    """Problems of ``spec.triggers``; ``at(i)`` is where trigger i is written (file:line)."""
    problems: list[str] = []
    required = [name for name, d in wf.spec.inputs.items() if d.is_required]
    for i, trig in enumerate(wf.spec.triggers):
        label = f"{at(i)}: trigger #{i + 1}"
        kinds = [k for k in ("nats", "alertmanager", "cron") if getattr(trig, k) is not None]
        if len(kinds) != 1:
            problems.append(
                f"{label}: give exactly one of nats, alertmanager or cron (found {', '.join(kinds) or 'none'})"
            )
            continue
        kind = kinds[0]
        label = f"{label} ({kind})"
        problems.extend(_kind_problems(trig, kind, label))
        for name in trig.inputs:
            if name not in wf.spec.inputs:
                problems.append(
                    f"{label}: inputs: {name!r} is not an input of the workflow "
                    f"(declared: {', '.join(wf.spec.inputs) or 'none'})"
                )
        problems.extend(_template_problems(trig.inputs, kind, f"{label}: inputs"))
        missing = [name for name in required if name not in trig.inputs]
        if missing:
            problems.append(
                f"{label}: the workflow requires input(s) {', '.join(missing)} and this trigger does not provide "
                f'them; map them under inputs (e.g. {missing[0]}: "{{{{ trigger.{TRIGGER_FIELDS[kind][1]} }}}}") '
                "or give them defaults"
            )
        if trig.plan is not None:
            if kind == "cron":
                problems.append(
                    f"{label}: plan: only a nats or alertmanager trigger can plan (an event to plan for); "
                    "a schedule runs its workflow"
                )
            elif not trig.plan.goal.strip():
                problems.append(
                    f'{label}: plan.goal: say what the plan is for, e.g. "Remediate {{{{ trigger.labels.alertname }}}}"'
                )
            else:
                problems.extend(_template_problems(trig.plan.goal, kind, f"{label}: plan.goal"))
        if trig.max_runs is not None:
            if trig.max_runs.count < 1:
                problems.append(f"{label}: max_runs.count must be at least 1")
            problems.extend(_duration(trig.max_runs.per, f"{label}: max_runs.per", positive=True))
    return problems


def _kind_problems(trig: TriggerDef, kind: str, label: str) -> list[str]:
    problems: list[str] = []
    if trig.nats is not None:
        problems.extend(f"{label}: subject {p}" for p in subject_problems(trig.nats.subject))
        if trig.nats.when is not None:
            try:
                tree = parse(trig.nats.when)
            except ExpressionError as exc:
                problems.append(f"{label}: when: {exc}")
            else:
                for ref in references(tree, trig.nats.when):
                    if ref.root != "trigger" or not ref.path or ref.path[0] not in TRIGGER_FIELDS["nats"]:
                        problems.append(
                            f"{label}: when: {ref.text}: a nats trigger's condition reads trigger.subject, "
                            "trigger.id, trigger.data and trigger.headers"
                        )
    if trig.alertmanager is not None:
        if not trig.alertmanager.matchers:
            problems.append(f'{label}: matchers: give at least one, e.g. alertname="HighLatency"')
        for text in trig.alertmanager.matchers:
            try:
                parse_matcher(text)
            except ValueError as exc:
                problems.append(f"{label}: {exc}")
    if trig.cron is not None:
        c = trig.cron
        if (c.schedule is None) == (c.every is None):
            problems.append(f"{label}: give either schedule (a cron expression) or every (an interval), not both")
        if c.schedule is not None:
            problems.extend(f"{label}: {p}" for p in cron_problems(c.schedule))
        if c.every is not None:
            problems.extend(_duration(c.every, f"{label}: every", positive=True))
        try:
            zone(c.timezone)
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
        problems.extend(_duration(c.catchup_window, f"{label}: catchup_window", positive=False))
        problems.extend(_duration(c.jitter, f"{label}: jitter", positive=False))
    return problems
