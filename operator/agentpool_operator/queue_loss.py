"""Whether Redis lost a pool's queue between two of its rounds: a verdict on what each
round read of the queue (no round trip of its own; the rule is agentpool.data_loss's, which
the CLI's watches share).

The verdict compares two rounds' `QueueMarks` of the same queue only: the first round of a
loop (operator restarted, pool just created) has nothing to compare with, a pool that moved
to another queue or Redis starts over, and a round whose read failed keeps the last marks
(a failed read says nothing, least of all 0). The operator posts one Warning Event,
`QueueDataLost`, per loss: the marks it compares next are those read after the loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agentpool.data_loss import CAUSES, data_loss
from agentpool.protocol import QueueFigures

from .status import StatusEvent

REASON = "QueueDataLost"


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
    deferred: int = 0
    """Tasks waiting for the tasks they run after."""
    running: int = 0
    dead: int = 0


def marks_of(queue: str, figures: QueueFigures) -> QueueMarks:
    return QueueMarks(
        queue=queue, submitted=figures.stats.get("submitted"), used=figures.used,
        queued=figures.queued, delayed=figures.delayed, deferred=figures.deferred,
        running=figures.in_flight, dead=figures.dead,
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
    how = data_loss(previous, current)
    return None if how is None or previous is None else QueueDataLoss(previous, current, how)


def _counts(marks: QueueMarks) -> str:
    parts = [f"{marks.queued:,} queued"]
    if marks.delayed:
        parts.append(f"{marks.delayed:,} delayed")
    if marks.deferred:
        parts.append(f"{marks.deferred:,} deferred")
    parts.append(f"{marks.running:,} running")
    return f"{', '.join(parts)} and {marks.dead:,} dead-lettered task(s)"


def _holds_tasks(marks: QueueMarks) -> bool:
    return bool(marks.queued or marks.delayed or marks.deferred or marks.running or marks.dead)


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
