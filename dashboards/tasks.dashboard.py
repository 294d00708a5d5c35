"""Tasks: submitted, completed by outcome, duration, queue wait, in progress, backlog."""

from asyncproof.monitoring.contract import (
    TASK_DURATION,
    TASK_QUEUE_WAIT,
    TASKS_COMPLETED,
    TASKS_IN_PROGRESS,
    TASKS_SUBMITTED,
)
from dashboards.common import BACKEND, RATE, make_dashboard, name, panel, quantile

selected = 'backend=~"$backend"'
submitted = f"sum by (backend) (rate({name(TASKS_SUBMITTED)}{{{selected}}}[{RATE}]))"
completed = f"sum by (backend) (rate({name(TASKS_COMPLETED)}{{{selected}}}[{RATE}]))"

dashboard = make_dashboard(
    "tasks",
    "Work done outside the request: how much, how it ends, how long it waits and runs.",
    [BACKEND],
    [
        panel("Submitted per second", [(submitted, "{{backend}}")], "ops", 0, 0),
        panel(
            "Completed per second by outcome",
            [
                (
                    f"sum by (backend, outcome) (rate({name(TASKS_COMPLETED)}{{{selected}}}[{RATE}]))",
                    "{{backend}} {{outcome}}",
                )
            ],
            "ops",
            12,
            0,
        ),
        panel(
            "Duration p50 and p95",
            [
                (quantile(0.5, TASK_DURATION, "backend", selected), "p50 {{backend}}"),
                (quantile(0.95, TASK_DURATION, "backend", selected), "p95 {{backend}}"),
            ],
            "s",
            0,
            8,
        ),
        panel(
            "Queue wait p95 (submit to start)",
            [(quantile(0.95, TASK_QUEUE_WAIT, "backend", selected), "{{backend}}")],
            "s",
            12,
            8,
        ),
        panel(
            "In progress",
            [(f"sum by (backend) ({name(TASKS_IN_PROGRESS)}{{{selected}}})", "{{backend}}")],
            "short",
            0,
            16,
        ),
        panel(
            "Backlog growth (submitted minus completed per second)",
            [(f"{submitted} - {completed}", "{{backend}}")],
            "ops",
            12,
            16,
        ),
    ],
)
