"""Whether Redis lost a queue's data between two readings of its figures, for the operator's
`QueueDataLost` Event and the CLI's watches.

A queue keeps its data as long as Redis does. The protocol never deletes the submit counter
(``ap:{queue}:seq``: each submit takes a number of it, the figures' ``submitted``) nor the
other marks of a used queue (``queue_used`` in agentpool/lua/common.lua), so Redis lost the
data (a Redis without persistence restarted, a FLUSHALL, a failover to a replica that had not
synced) when the counter went back (to nothing, or lower: submits after the loss start it
again from 1), or when a queue that had been used has no mark left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agentpool.protocol import QueueFigures

CAUSES = ("a Redis without persistence restarted, a FLUSHALL, or a failover to a replica "
          "that had not synced")


class Reading(Protocol):
    """What a reading of a queue's figures keeps to compare with the next one."""

    @property
    def queue(self) -> str:
        """Which queue: readings of two queues are not compared."""
    @property
    def submitted(self) -> int | None:
        """The submit counter; None while it does not exist (nothing submitted yet)."""
    @property
    def used(self) -> bool:
        """Any mark of a used queue exists (submit counter, stats, config, workers, tasks)."""


@dataclass(frozen=True)
class QueueReading:
    queue: str
    used: bool
    submitted: int | None


def reading_of(queue: str, figures: QueueFigures) -> QueueReading:
    return QueueReading(queue, figures.used, figures.stats.get("submitted"))


def data_loss(before: Reading | None, now: Reading) -> str | None:
    """What shows the loss, for a person ("the submit counter went back from 1,234 to 0"),
    between a reading and a later one of the same queue; None when there is nothing to
    compare (no earlier reading, another queue) or nothing was lost."""
    if before is None or before.queue != now.queue:
        return None
    if before.submitted is not None and (now.submitted or 0) < before.submitted:
        return (f"the submit counter went back from {before.submitted:,} to "
                f"{now.submitted or 0:,}")
    if before.used and not now.used:
        return "every key of the queue is gone, though it had been used"
    return None
