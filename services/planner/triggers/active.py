"""The active triggers: those of the registered workflows' latest versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.state.registry import WorkflowVersion, parse_version
from shared.state.triggering import trigger_id
from shared.workflow.model import TriggerDef, WorkflowDoc
from shared.workflow.triggers import Matcher, parse_matcher


@dataclass(frozen=True)
class Active:
    id: str  # workflow#index
    workflow: str
    version: int
    index: int
    trigger: TriggerDef
    doc: WorkflowDoc
    definition: dict[str, Any]
    matchers: tuple[Matcher, ...] = field(default=())

    @property
    def kind(self) -> str:
        return self.trigger.kind


def from_version(version: WorkflowVersion) -> list[Active]:
    doc = parse_version(version)
    out = []
    for i, trig in enumerate(doc.spec.triggers):
        matchers = tuple(parse_matcher(m) for m in trig.alertmanager.matchers) if trig.alertmanager else ()
        out.append(
            Active(
                id=trigger_id(version.name, i),
                workflow=version.name,
                version=version.version,
                index=i,
                trigger=trig,
                doc=doc,
                definition=version.definition,
                matchers=matchers,
            )
        )
    return out


def nats_subjects(active: list[Active]) -> list[str]:
    return [a.trigger.nats.subject for a in active if a.trigger.nats is not None]
