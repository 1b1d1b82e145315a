"""Prometheus metrics of a worker process (default registry, so process_* metrics come too).

Every series carries the ``queue`` label. Children are bound once per queue (:func:`for_queue`)
so the per-task cost is an attribute lookup and an increment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)

TASKS_STARTED = Counter(
    "agentpool_worker_tasks_started", "Task runs started", ["queue"])
TASKS_SUCCEEDED = Counter(
    "agentpool_worker_tasks_succeeded", "Task runs that succeeded", ["queue"])
TASKS_FAILED = Counter(
    "agentpool_worker_tasks_failed",
    "Task runs that failed (errors and timeouts; retried or dead-lettered)", ["queue"])
TASKS_TIMED_OUT = Counter(
    "agentpool_worker_tasks_timed_out",
    "Failed runs that their timeout stopped (the pool's task timeout or the task's own)",
    ["queue"])
TASKS_RETRIED = Counter(
    "agentpool_worker_tasks_retried", "Failed runs scheduled for another attempt", ["queue"])
TASKS_DEAD_LETTERED = Counter(
    "agentpool_worker_tasks_dead_lettered", "Tasks this worker sent to the dead-letter queue",
    ["queue"])
TASKS_REQUEUED = Counter(
    "agentpool_worker_tasks_requeued",
    "Tasks handed back to the queue: released on shutdown, or left by an earlier instance",
    ["queue"])
LEASES_REAPED = Counter(
    "agentpool_worker_leases_reaped",
    "Tasks of other workers requeued by this one because their lease had been out 30 s and "
    "no operator reaped them", ["queue"])
TASKS_CANCELLED = Counter(
    "agentpool_worker_tasks_cancelled", "Running tasks stopped on a cancel request", ["queue"])
TASKS_LOST = Counter(
    "agentpool_worker_tasks_lost",
    "Runs abandoned because their lease was lost or Redis refused their outcome (the "
    "task went to another run)", ["queue"])
TASKS_IN_FLIGHT = Gauge(
    "agentpool_worker_tasks_in_flight", "Task runs in progress", ["queue"])
TASK_DURATION = Histogram(
    "agentpool_worker_task_duration_seconds", "Run time of a task's handler", ["queue"],
    buckets=BUCKETS)
TASK_WAIT = Histogram(
    "agentpool_worker_task_wait_seconds",
    "Time a run waited for a worker: from its task last being ready to run to its start",
    ["queue"],
    buckets=BUCKETS)
EVENTS = Counter(
    "agentpool_worker_events", "Events handlers emitted (ctx.emit, ctx.progress)", ["queue"])
CHECKPOINTS = Counter(
    "agentpool_worker_checkpoints", "Checkpoints saved (ctx.checkpoint)", ["queue"])
CHECKPOINTS_REFUSED = Counter(
    "agentpool_worker_checkpoints_refused",
    "Checkpoints refused because the run no longer held its task", ["queue"])
SUBMITTED = Counter(
    "agentpool_worker_submitted",
    "Tasks that runs submitted (ctx.submit, ctx.submit_many, a program's submit lines), by the "
    "queue they went to: the pool's own, or one of spec.worker.submitsTo (a step submitted "
    "again by a retried run counts again)", ["queue", "to"])
REDIS_ROUND_TRIPS = Counter(
    "agentpool_worker_redis_round_trips", "Requests this worker sent to Redis", ["queue"])
REDIS_ERRORS = Counter(
    "agentpool_worker_redis_errors", "Redis requests that failed (connection or timeout)",
    ["queue"])
LIMIT_GRANTS = Counter(
    "agentpool_worker_limit_grants", "Grants of a rate limit (ctx.limit calls)",
    ["queue", "limit"])
LIMIT_TOKENS = Counter(
    "agentpool_worker_limit_tokens", "Tokens granted by a rate limit", ["queue", "limit"])
LIMIT_WAITED = Counter(
    "agentpool_worker_limit_wait_seconds",
    "Run-seconds spent waiting for a rate limit's grants or slots", ["queue", "limit"])
LIMIT_RELEASED = Counter(
    "agentpool_worker_limit_released",
    "Reservations offered back by runs cancelled while they waited", ["queue", "limit"])
LIMIT_THROTTLES = Counter(
    "agentpool_worker_limit_throttles", "429s reported with ctx.throttled", ["queue", "limit"])
LIMIT_HOLDS = Counter(
    "agentpool_worker_limit_holds",
    "Slots of a limit's maxConcurrent taken (ctx.hold blocks entered)", ["queue", "limit"])
LIMIT_HELD = Gauge(
    "agentpool_worker_limit_held", "Slots of a limit's maxConcurrent this worker holds now",
    ["queue", "limit"])
LIMIT_LAPSED = Counter(
    "agentpool_worker_limit_lapsed",
    "Slots of a limit's maxConcurrent found lapsed while held (the process was frozen longer "
    "than a hold lasts, or Redis lost them) and taken again", ["queue", "limit"])
LIMIT_FACTOR = Gauge(
    "agentpool_worker_limit_rate_factor",
    "Effective rate of a limit as a share of its declared rate (below 1 after a 429)",
    ["queue", "limit"])
WORKER_READY = Gauge(
    "agentpool_worker_ready", "1 when the worker claims tasks (what /readyz reports)", ["queue"])

NAMES = (
    "agentpool_worker_tasks_started_total",
    "agentpool_worker_tasks_succeeded_total",
    "agentpool_worker_tasks_failed_total",
    "agentpool_worker_tasks_timed_out_total",
    "agentpool_worker_tasks_retried_total",
    "agentpool_worker_tasks_dead_lettered_total",
    "agentpool_worker_tasks_requeued_total",
    "agentpool_worker_tasks_cancelled_total",
    "agentpool_worker_tasks_lost_total",
    "agentpool_worker_tasks_in_flight",
    "agentpool_worker_task_duration_seconds",
    "agentpool_worker_task_wait_seconds",
    "agentpool_worker_events_total",
    "agentpool_worker_checkpoints_total",
    "agentpool_worker_checkpoints_refused_total",
    "agentpool_worker_redis_round_trips_total",
    "agentpool_worker_redis_errors_total",
    "agentpool_worker_ready",
)
"""The documented series names as they appear in the text format."""

LIMIT_NAMES = (
    "agentpool_worker_limit_grants_total",
    "agentpool_worker_limit_tokens_total",
    "agentpool_worker_limit_wait_seconds_total",
    "agentpool_worker_limit_released_total",
    "agentpool_worker_limit_throttles_total",
    "agentpool_worker_limit_holds_total",
    "agentpool_worker_limit_held",
    "agentpool_worker_limit_lapsed_total",
    "agentpool_worker_limit_rate_factor",
)
"""The rate-limit series, one per limit: the counters from the worker's start for each limit
the pool declares (:func:`start_at_zero`), the gauges once a handler used the limit."""



@dataclass(frozen=True)
class QueueMetrics:
    started: Counter
    succeeded: Counter
    failed: Counter
    timed_out: Counter
    retried: Counter
    dead_lettered: Counter
    requeued: Counter
    leases_reaped: Counter
    cancelled: Counter
    lost: Counter
    in_flight: Gauge
    duration: Histogram
    wait: Histogram
    events: Counter
    checkpoints: Counter
    checkpoints_refused: Counter
    round_trips: Counter
    redis_errors: Counter
    ready: Gauge


@cache
def for_queue(queue: str) -> QueueMetrics:
    return QueueMetrics(
        started=TASKS_STARTED.labels(queue),
        succeeded=TASKS_SUCCEEDED.labels(queue),
        failed=TASKS_FAILED.labels(queue),
        timed_out=TASKS_TIMED_OUT.labels(queue),
        retried=TASKS_RETRIED.labels(queue),
        dead_lettered=TASKS_DEAD_LETTERED.labels(queue),
        requeued=TASKS_REQUEUED.labels(queue),
        leases_reaped=LEASES_REAPED.labels(queue),
        cancelled=TASKS_CANCELLED.labels(queue),
        lost=TASKS_LOST.labels(queue),
        in_flight=TASKS_IN_FLIGHT.labels(queue),
        duration=TASK_DURATION.labels(queue),
        wait=TASK_WAIT.labels(queue),
        events=EVENTS.labels(queue),
        checkpoints=CHECKPOINTS.labels(queue),
        checkpoints_refused=CHECKPOINTS_REFUSED.labels(queue),
        round_trips=REDIS_ROUND_TRIPS.labels(queue),
        redis_errors=REDIS_ERRORS.labels(queue),
        ready=WORKER_READY.labels(queue),
    )


@dataclass(frozen=True)
class LimitMetrics:
    grants: Counter
    tokens: Counter
    waited: Counter
    released: Counter
    throttles: Counter
    holds: Counter
    held: Gauge
    lapsed: Counter
    factor: Gauge


@cache
def for_limit(queue: str, limit: str) -> LimitMetrics:
    return LimitMetrics(
        grants=LIMIT_GRANTS.labels(queue, limit),
        tokens=LIMIT_TOKENS.labels(queue, limit),
        waited=LIMIT_WAITED.labels(queue, limit),
        released=LIMIT_RELEASED.labels(queue, limit),
        throttles=LIMIT_THROTTLES.labels(queue, limit),
        holds=LIMIT_HOLDS.labels(queue, limit),
        held=LIMIT_HELD.labels(queue, limit),
        lapsed=LIMIT_LAPSED.labels(queue, limit),
        factor=LIMIT_FACTOR.labels(queue, limit),
    )


LIMIT_COUNTERS = (LIMIT_GRANTS, LIMIT_TOKENS, LIMIT_WAITED, LIMIT_RELEASED, LIMIT_THROTTLES,
                  LIMIT_HOLDS, LIMIT_LAPSED)


def start_at_zero(queue: str, submits_to: Iterable[str], limits: Iterable[str]) -> None:
    """Export at 0 the counters whose extra label takes its values from the worker's settings:
    submitted tasks for the pool's own queue and each of `submits_to`, and the counters of
    each declared limit. A series born at its first count shows no rise to `increase()` and
    `rate()`, which would miss a pipeline's first 25 tasks or a limit's first 429."""
    for target in (queue, *submits_to):
        SUBMITTED.labels(queue, target)
    for limit in limits:
        for counter in LIMIT_COUNTERS:
            counter.labels(queue, limit)
