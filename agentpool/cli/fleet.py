"""Plain-data side of the fleet view: pool summaries and task rates.

No I/O here: summaries are built from AgentPool objects (as the API returns them) or from a
queue's figures, and rates from samples of a queue's cumulative counters (the ``stats`` hash
the protocol's scripts increment: submitted, succeeded, failed, retried, requeued, dead,
cancelled).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agentpool.health import pool_health, pool_problem
from agentpool.models import AgentPoolStatus, parse_rfc3339
from agentpool.protocol import QueueFigures
from agentpool.redis_errors import REDIS_FULL

DEFAULT_RATE_WINDOW = 300.0
MAX_WINDOW = 86400.0
"""The longest --window a rate may span (one day of refreshes kept)."""


@dataclass(frozen=True)
class CounterSample:
    at: float
    """Seconds on a monotonic clock."""
    counters: Mapping[str, int]


@dataclass(frozen=True)
class Rates:
    window_seconds: float
    submitted_per_second: float
    succeeded_per_second: float
    failed_per_second: float
    failure_rate: float | None
    """Failed runs / finished runs (succeeded + failed) in the window; None when none finished.
    A failed run is one whose handler raised or timed out, whether it was retried or not."""


def rates_between(old: CounterSample, new: CounterSample) -> Rates | None:
    """Rates over the span between two samples; None when the span is empty.

    A counter that went down (its hash was reset) counts as zero progress, not negative.
    """
    span = new.at - old.at
    if span <= 0:
        return None

    def delta(name: str) -> int:
        return max(0, new.counters.get(name, 0) - old.counters.get(name, 0))

    succeeded, failed = delta("succeeded"), delta("failed")
    finished = succeeded + failed
    return Rates(
        window_seconds=span,
        submitted_per_second=delta("submitted") / span,
        succeeded_per_second=succeeded / span,
        failed_per_second=failed / span,
        failure_rate=failed / finished if finished else None,
    )


class RateTracker:
    """Counter samples over a sliding window; rates span the oldest to the newest sample.

    A counter that went down means the queue's counters were reset (Redis lost its data, see
    agentpool.data_loss): the samples before start no span, or the rates would read low for a
    whole window."""

    def __init__(self, window_seconds: float = DEFAULT_RATE_WINDOW) -> None:
        self.window_seconds = window_seconds
        self._samples: deque[CounterSample] = deque()

    def add(self, sample: CounterSample) -> None:
        if self._samples and any(
                sample.counters.get(name, 0) < value
                for name, value in self._samples[-1].counters.items()):
            self._samples.clear()
        self._samples.append(sample)
        cutoff = sample.at - self.window_seconds
        while len(self._samples) > 2 and self._samples[1].at <= cutoff:
            self._samples.popleft()

    def rates(self) -> Rates | None:
        if len(self._samples) < 2:
            return None
        return rates_between(self._samples[0], self._samples[-1])


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class PoolSummary:
    """One row of the fleet view. Replica fields are None for a bare queue (no cluster)."""

    name: str
    queue: str
    namespace: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    draining_replicas: int = 0
    """Pods that finish their runs before they go (scale-down, node drain, rollout)."""
    queued: int = 0
    delayed: int = 0
    deferred: int = 0
    in_flight: int = 0
    dead: int = 0
    workers: int = 0
    health: str = "Unknown"
    problem: str | None = None
    """The reason and message of the condition behind a health other than Ready."""
    created: datetime | None = None
    last_scale_reason: str | None = None
    schedules: int = 0
    next_schedule_time: datetime | None = None
    redis_url: str | None = None
    redis_secret: SecretRef | None = None
    redis_server: str | None = None
    """The Redis server the operator reached the queue on (status.redis: no credentials)."""


def pool_summary(obj: Mapping[str, Any]) -> PoolSummary:
    """Summary of one AgentPool object; a status the operator has not written yet reads as 0."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    name = str(meta.get("name", ""))
    try:
        status = AgentPoolStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        status = AgentPoolStatus()
    redis = spec.get("redis") or {}
    ref = redis.get("urlSecretRef")
    paused = bool(spec.get("paused", False))
    schedules = pool_schedules(obj)
    return PoolSummary(
        name=name,
        namespace=meta.get("namespace"),
        queue=str(spec.get("queue") or status.queue or name),
        replicas=status.replicas,
        ready_replicas=status.ready_replicas,
        desired_replicas=status.desired_replicas,
        draining_replicas=status.draining_replicas,
        queued=status.queued,
        delayed=status.delayed,
        deferred=status.deferred,
        in_flight=status.in_flight,
        dead=status.dead,
        workers=status.workers,
        health=pool_health(status.conditions, paused),
        problem=pool_problem(status.conditions, paused),
        created=parse_rfc3339(meta.get("creationTimestamp")),
        last_scale_reason=status.last_scale_reason,
        schedules=len(schedules),
        next_schedule_time=_next_schedule_time(schedules, paused),
        redis_url=redis.get("url"),
        redis_secret=SecretRef(str(ref["name"]), str(ref.get("key") or "url"))
        if isinstance(ref, Mapping) and ref.get("name") else None,
        redis_server=status.redis,
    )


def pool_schedules(obj: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The pool's schedules as its spec declares them, with what its status says of each."""
    spec = (obj or {}).get("spec") or {}
    status = (obj or {}).get("status") or {}
    seen = {e.get("name"): e for e in status.get("schedules") or [] if isinstance(e, Mapping)}
    rows = []
    for schedule in spec.get("schedules") or []:
        if not isinstance(schedule, Mapping):
            continue
        entry = seen.get(schedule.get("name")) or {}
        rows.append({
            "name": schedule.get("name"), "cron": schedule.get("cron"),
            "time_zone": schedule.get("timeZone", "UTC"),
            "concurrency_policy": schedule.get("concurrencyPolicy", "Allow"),
            "suspend": bool(schedule.get("suspend", False)),
            "last_schedule_time": entry.get("lastScheduleTime"),
            "last_task_id": entry.get("lastTaskId"),
            "next_schedule_time": entry.get("nextScheduleTime"),
        })
    return rows


def _next_schedule_time(schedules: Sequence[Mapping[str, Any]], paused: bool) -> datetime | None:
    """The soonest time a task is due among the schedules that run (none while paused)."""
    if paused:
        return None
    times = [parse_rfc3339(row["next_schedule_time"]) for row in schedules if not row["suspend"]]
    return min((t for t in times if t is not None), default=None)


def queue_summary(queue: str, figures: QueueFigures, *, full: bool = False) -> PoolSummary:
    """Summary of a bare queue read from Redis (no AgentPool, so no replica figures); `full`:
    its Redis refuses writes that may grow memory (what an operator would call Degraded,
    RedisFull)."""
    return PoolSummary(
        name=queue,
        queue=queue,
        queued=figures.queued,
        delayed=figures.delayed,
        deferred=figures.deferred,
        in_flight=figures.in_flight,
        dead=figures.dead,
        workers=figures.workers,
        health="Degraded" if full else "Active" if figures.workers else "NoWorkers",
        problem=f"RedisFull: {REDIS_FULL}" if full else None,
    )
