"""The demo's end-of-run figures, computed from plain task records (no Redis, no clock)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PENDING_STATES = frozenset({"queued", "delayed", "running"})
FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})


@dataclass(frozen=True)
class TaskRecord:
    """One submitted task as read back at the end; `state` is None when its hash is gone."""

    id: str
    state: str | None
    attempts: int = 0
    created_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    resumed_from_step: int = 0
    """The step its last run resumed after (0: it ran from the start)."""


@dataclass(frozen=True)
class Summary:
    submitted: int
    succeeded: int
    retried: int
    dead_lettered: int
    cancelled: int
    pending: int
    requeued_after_kill: int
    requeued_then_succeeded: int
    lost: int
    duration_seconds: float
    throughput_per_second: float
    wait_p50_seconds: float | None
    wait_p95_seconds: float | None
    wait_max_seconds: float | None
    killed_worker: str | None
    resumed_from_checkpoint: int = 0
    """Tasks whose last run resumed from a checkpoint instead of starting over."""
    dead_lettered_after_kill: int = 0
    """Tasks the killed worker held on their last attempt: dead-lettered, not requeued."""

    @property
    def ok(self) -> bool:
        """Every task reached a final state and none went missing."""
        return self.lost == 0 and self.pending == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): always one of the observed values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_seconds(records: Sequence[TaskRecord]) -> list[float]:
    """Submit-to-start time of every task that started.

    A task's start is its latest claim, so the wait of a retried or requeued task includes its
    earlier runs and backoff: the time a producer waited before the run that counted.
    """
    return [
        max(0, r.started_ms - r.created_ms) / 1000
        for r in records
        if r.state is not None and r.started_ms is not None
    ]


def summarize(
    records: Sequence[TaskRecord],
    *,
    retried: int,
    requeued_after_kill: int,
    requeued_ids: Collection[str] = (),
    killed_worker: str | None = None,
    dead_lettered_after_kill: int = 0,
) -> Summary:
    """Figures for one demo run.

    `records` has one entry per submitted task. `lost` is what is left of the submitted tasks
    once those that succeeded, were dead-lettered, cancelled or are still pending are taken
    away: a task whose hash vanished or carries an unknown state counts as lost.
    `requeued_ids` are the tasks the killed worker held; how many of them succeeded later
    (on other workers) is reported next to the requeue count.
    """
    states = [r.state for r in records]
    succeeded = states.count("succeeded")
    dead = states.count("dead")
    cancelled = states.count("cancelled")
    pending = sum(1 for s in states if s in PENDING_STATES)
    submitted = len(records)

    known = [r for r in records if r.state is not None]
    finished = [r.finished_ms for r in known
                if r.state in FINAL_STATES and r.finished_ms is not None]
    duration = 0.0
    if finished and known:
        duration = max(0, max(finished) - min(r.created_ms for r in known)) / 1000
    waits = wait_seconds(records)
    return Summary(
        submitted=submitted,
        succeeded=succeeded,
        retried=retried,
        dead_lettered=dead,
        cancelled=cancelled,
        pending=pending,
        requeued_after_kill=requeued_after_kill,
        requeued_then_succeeded=sum(
            1 for r in records if r.id in requeued_ids and r.state == "succeeded"
        ),
        lost=submitted - succeeded - dead - cancelled - pending,
        duration_seconds=duration,
        throughput_per_second=len(finished) / duration if duration > 0 else 0.0,
        wait_p50_seconds=percentile(waits, 50),
        wait_p95_seconds=percentile(waits, 95),
        wait_max_seconds=max(waits, default=None),
        killed_worker=killed_worker,
        resumed_from_checkpoint=sum(
            1 for r in records if r.state == "succeeded" and r.resumed_from_step > 0),
        dead_lettered_after_kill=dead_lettered_after_kill,
    )
