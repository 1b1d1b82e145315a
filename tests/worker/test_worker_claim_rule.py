"""When the worker's next claim waits for a wake-up signal and when it goes at once."""

from __future__ import annotations

import pytest

from agentpool.protocol import ClaimBatch, ClaimedTask
from agentpool_worker.worker import wait_before_next_claim


def batch(tasks: int, left: int) -> ClaimBatch:
    claimed = [ClaimedTask(f"t{i}", "tok", 1, 3, "null", 0, 0) for i in range(tasks)]
    return ClaimBatch(claimed, None, left)


@pytest.mark.parametrize(("tasks", "asked", "left", "waits"), [
    (1, 1, 4, False),   # a waiting worker's one task, more queued: claim the rest at once
    (1, 1, 0, True),    # its one task and the queue is empty: straight back to waiting
    (100, 100, 7, False),  # a full batch with more behind it
    (100, 100, 0, True),   # a full batch that emptied the queue: no empty claim after it
    (3, 100, 0, True),     # a short batch: the queue is empty
    (0, 100, 5, True),     # refused (a drain was requested): wait, do not spin
    (0, 1, 0, True),       # a wait that timed out on an empty queue
])
def test_the_next_claim_waits_unless_more_is_queued_behind_a_full_claim(
    tasks: int, asked: int, left: int, waits: bool
) -> None:
    assert wait_before_next_claim(batch(tasks, left), asked) is waits
