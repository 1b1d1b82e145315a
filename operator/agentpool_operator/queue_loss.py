"""Whether Redis lost a pool's queue between two of its rounds: a pure verdict on what each
round read of the queue (no round trip of its own).

A queue keeps its data as long as Redis does. When Redis comes back empty (a Redis without
persistence restarted, a FLUSHALL, a failover to a replica that had not synced) its queued,
running and dead-lettered tasks are gone, and the pool's figures alone would just drop to 0.
The protocol never deletes the submit sequence (`ap:{queue}:seq`: every submit takes a
number of it, the figures' `submitted`), nor the other marks of a used queue (its config,
stats, worker registry; `queue_used` in agentpool/lua/common.lua). So the data was lost when

- the submit counter went back (to nothing, or to a lower number: submits after the loss
  start it again from 1); or
- the queue had been used and none of its marks is left.

The verdict compares two rounds' `QueueMarks` of the same queue only: the first round of a
loop (operator restarted, pool just created) has nothing to compare with, a pool that moved
to another queue or Redis starts over, and a round whose read failed keeps the last marks
(a failed read says nothing, least of all 0). The operator posts one Warning Event,
`QueueDataLost`, per loss: the marks it compares next are those read after the loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agentpool.protocol import QueueFigures

from .status import StatusEvent

REASON = "QueueDataLost"
CAUSES = ("a Redis without persistence restarted, a FLUSHALL, or a failover to a replica "
          "that had not synced")


def queue_identity(redis_url: str, queue: str) -> str:
    """Which queue on which Redis the marks are of: any change of the pool's Redis URL or
    queue name makes another one (a digest, so the URL's password is not kept twice)."""
    return hashlib.sha256(f"{redis_url}\n{queue}".encode()).hexdigest()


@dataclass(frozen=True)
class QueueMarks:
    """What one round read of the queue, kept by the pool's loop until the next."""

    queue: str
    """Which queue (`queue_identity`): marks of another queue are not compared."""
    submitted: int | None
    """The submit counter; None while it does not exist (nothing submitted yet)."""
    used: bool
    """Any mark of a used queue exists (submit counter, stats, config, workers, tasks)."""
    queued: int = 0
    """Tasks waiting to be claimed, due delayed ones included (the status's `queued`)."""
    delayed: int = 0
    """Tasks scheduled for later or awaiting a retry."""
    running: int = 0
    dead: int = 0


def marks_of(queue: str, figures: QueueFigures) -> QueueMarks:
    return QueueMarks(
        queue=queue, submitted=figures.stats.get("submitted"), used=figures.used,
        queued=figures.queued, delayed=figures.delayed, running=figures.in_flight,
        dead=figures.dead,
    )


@dataclass(frozen=True)
class QueueDataLoss:
    before: QueueMarks
    after: QueueMarks
    how: str
    """What showed it, for a person: "the submit counter went back from 1,234 to 0"."""


def data_lost(previous: QueueMarks | None, current: QueueMarks) -> QueueDataLoss | None:
    """The loss of the queue's data between the round that read `previous` and the one that
    read `current`; None when there is nothing to compare or nothing was lost."""
    if previous is None or previous.queue != current.queue:
        return None
    if previous.submitted is not None and (current.submitted or 0) < previous.submitted:
        how = (f"the submit counter went back from {previous.submitted:,} to "
               f"{current.submitted or 0:,}")
        return QueueDataLoss(previous, current, how)
    if previous.used and not current.used:
        return QueueDataLoss(previous, current, "every key of the queue is gone, though it "
                                                "had been used")
    return None


def _counts(marks: QueueMarks) -> str:
    parts = [f"{marks.queued:,} queued"]
    if marks.delayed:
        parts.append(f"{marks.delayed:,} delayed")
    parts.append(f"{marks.running:,} running")
    return f"{', '.join(parts)} and {marks.dead:,} dead-lettered task(s)"


def _holds_tasks(marks: QueueMarks) -> bool:
    return bool(marks.queued or marks.delayed or marks.running or marks.dead)


def loss_event(loss: QueueDataLoss) -> StatusEvent:
    """The Warning Event that says it: what showed the loss, what was last seen, why."""
    before, after = loss.before, loss.after
    if not _holds_tasks(before):
        seen = ("no task was queued, running or dead-lettered when last seen; the results of "
                "finished tasks are gone")
    elif not _holds_tasks(after):
        seen = f"{_counts(before)} last seen are gone"
    else:
        seen = (f"{_counts(before)} were last seen, {_counts(after)} now: what was written "
                "since Redis last saved or synced is gone")
    return StatusEvent(
        "Warning", REASON, f"Redis lost this queue's data ({loss.how}): {seen}; {CAUSES}")
