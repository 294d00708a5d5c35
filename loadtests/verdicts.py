"""The words a run's figures are judged in, and the rules that give them; ``prove`` and ``audit`` share
both, so the same figures get the same verdict in either.

Pure Python: no Locust import.
"""

from __future__ import annotations

from collections.abc import Sequence

HEALTHY = "healthy"
QUEUES = "queues"  # the threadpool is saturated: requests wait for a token
RESTARTS = "restarts"  # liveness failed 3 times in a row: the kubelet would restart the pod
LOSES_POLLS = "loses polls"  # GET /tasks/{id} answered 404 for a task that exists
ERRORS = "errors"  # more than ERROR_RATIO of the requests failed (5xx, no answer in time)
WORKER_KILLED = "worker killed"  # the server replaced a blocked worker
BLOCKS = "blocks the loop"  # audit: its code stalled the event loop, yet the probes held
SLOW = "slow"  # audit: a p99 gate on it failed
SKIPPED = "skipped"

ERROR_RATIO = 0.01

# Worst first: the order of the audit's table.
SEVERITY = (RESTARTS, LOSES_POLLS, ERRORS, BLOCKS, QUEUES, SLOW, HEALTHY, SKIPPED)


def judge(
    *,
    would_restart: int,
    threadpool_waiting_max: float | None,
    fail_ratio: float | None,
    polls_404: int = 0,
    tasks_failed: int = 0,
) -> str:
    """The verdict of ``prove``'s words for one style's (or route's) figures. No requests measured
    (``fail_ratio`` None) is an error: a run must not look healthy by silence."""
    if would_restart > 0:
        return RESTARTS
    if polls_404 > 0:
        return LOSES_POLLS
    if (threadpool_waiting_max or 0) > 0:
        return QUEUES
    if tasks_failed > 0 or fail_ratio is None or fail_ratio > ERROR_RATIO:
        return ERRORS
    return HEALTHY


def judge_route(
    *,
    would_restart: int,
    threadpool_waiting_max: float | None,
    fail_ratio: float | None,
    stalls: int,
    slow: bool,
) -> str:
    """A route's verdict in ``asyncproof audit``: ``prove``'s, made more precise where its figures
    allow: a route whose code stalled the event loop (the stall watchdog counted it) but not long
    enough for the probes to fail ``blocks the loop``; one that is otherwise healthy but failed a p99
    gate is ``slow``."""
    verdict = judge(
        would_restart=would_restart, threadpool_waiting_max=threadpool_waiting_max, fail_ratio=fail_ratio
    )
    if stalls > 0 and verdict in (HEALTHY, QUEUES):
        return BLOCKS
    if slow and verdict == HEALTHY:
        return SLOW
    return verdict


def severity(verdict: str) -> int:
    """Position of ``verdict`` from the worst (0); a combined one (``restarts, worker killed``) by its
    first word."""
    head = verdict.split(",")[0].strip()
    return SEVERITY.index(head) if head in SEVERITY else len(SEVERITY)


def worst_first(verdicts: Sequence[str]) -> list[str]:
    return sorted(verdicts, key=severity)
