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

CAUSES = ("a Redis without persistence restarted, a FLUSHALL, or a failover to a replica "
          "that had not synced")


def data_loss(before_submitted: int | None, before_used: bool,
              now_submitted: int | None, now_used: bool) -> str | None:
    """What shows the loss, for a person ("the submit counter went back from 1,234 to 0"),
    between a reading and a later one of the same queue; None when nothing was lost."""
    if before_submitted is not None and (now_submitted or 0) < before_submitted:
        return (f"the submit counter went back from {before_submitted:,} to "
                f"{now_submitted or 0:,}")
    if before_used and not now_used:
        return "every key of the queue is gone, though it had been used"
    return None
