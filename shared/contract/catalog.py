"""The durable consumers every service binds, by name: the one table that the services, the
NATS permissions (:mod:`shared.contract.permissions`) and the AsyncAPI document
(:mod:`shared.codegen.protogen`) all read, so none of them can drift from the others.

``{pool}`` in a name stands for an executor pool.
"""

from __future__ import annotations

from shared.contract import subjects

POOL = "{pool}"

CONSUMERS = {
    "planner": {"stream": subjects.RUNS_STREAM, "filter_subjects": subjects.PLANNER_FILTERS},
    "planner-drafts": {"stream": subjects.RUNS_STREAM, "filter_subjects": subjects.PLAN_FILTERS},
    "scheduler": {"stream": subjects.RUNS_STREAM, "filter_subjects": subjects.SCHEDULER_FILTERS},
    "scheduler-timers": {
        "stream": subjects.TIMERS_STREAM,
        "filter_subjects": subjects.TIMER_FILTERS,
        "max_deliver": -1,
    },
    "approver": {"stream": subjects.RUNS_STREAM, "filter_subjects": subjects.APPROVER_FILTERS},
    "approver-timers": {
        "stream": subjects.TIMERS_STREAM,
        "filter_subjects": subjects.APPROVER_TIMER_FILTERS,
        "max_deliver": -1,
    },
    "notifier": {"stream": subjects.RUNS_STREAM, "filter_subjects": subjects.NOTIFIER_FILTERS},
    "planner-triggers": {"stream": subjects.TRIGGERS_STREAM, "filter_subjects": []},
    "notifier-triggers": {
        "stream": subjects.TRIGGER_EVENTS_STREAM,
        "filter_subjects": subjects.NOTIFIER_TRIGGER_FILTERS,
    },
    "executor-{pool}": {"stream": subjects.TASKS_STREAM, "filter_subjects": subjects.executor_filters(POOL)},
}
