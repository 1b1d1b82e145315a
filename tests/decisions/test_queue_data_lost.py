"""Whether Redis lost a pool's queue between two rounds (agentpool_operator.queue_loss): a
pure verdict on the marks two rounds read, and the Event that says it."""

from __future__ import annotations

import pytest

from agentpool.protocol import QueueFigures
from agentpool_operator.queue_loss import (
    REASON,
    QueueMarks,
    data_lost,
    loss_event,
    marks_of,
    queue_identity,
)

Q = queue_identity("redis://redis:6379/0", "jobs")
NEVER_USED = QueueMarks(Q, submitted=None, used=False)
BUSY = QueueMarks(Q, submitted=1234, used=True, queued=5, running=2, dead=1)
EMPTY = QueueMarks(Q, submitted=None, used=False)
"""What a Redis that came back empty shows."""


@pytest.mark.parametrize(("previous", "current", "how"), [
    # The first round of a loop (operator restarted, pool created): nothing to compare.
    (None, EMPTY, None),
    (None, QueueMarks(Q, submitted=0, used=False), None),
    # Nothing changed, or the queue moved on.
    (BUSY, BUSY, None),
    (BUSY, QueueMarks(Q, submitted=1240, used=True, queued=0), None),
    (NEVER_USED, NEVER_USED, None),
    # The first submit, or a worker's first heartbeat, of a queue nobody used.
    (NEVER_USED, QueueMarks(Q, submitted=1, used=True, queued=1), None),
    (NEVER_USED, QueueMarks(Q, submitted=None, used=True), None),
    # Redis came back empty.
    (BUSY, EMPTY, "the submit counter went back from 1,234 to 0"),
    # ... and a worker's heartbeat marked the queue used again before the round: the counter.
    (BUSY, QueueMarks(Q, submitted=None, used=True),
     "the submit counter went back from 1,234 to 0"),
    # ... and producers submitted again before the round: the counter starts over.
    (BUSY, QueueMarks(Q, submitted=3, used=True, queued=3),
     "the submit counter went back from 1,234 to 3"),
    # A failover to a replica that missed the last writes.
    (BUSY, QueueMarks(Q, submitted=1230, used=True, queued=4),
     "the submit counter went back from 1,234 to 1,230"),
    # A queue used without a counter (workers only, or counted by an earlier version) whose
    # every key vanished.
    (QueueMarks(Q, submitted=None, used=True, dead=2), EMPTY,
     "every key of the queue is gone, though it had been used"),
    # Another queue, or another Redis: the memory is of another queue, not a loss.
    (BUSY, QueueMarks(queue_identity("redis://redis:6379/0", "other"), None, used=False), None),
    (BUSY, QueueMarks(queue_identity("redis://redis-2:6379/0", "jobs"), None, used=False), None),
    (BUSY, QueueMarks(queue_identity("redis://redis:6379/1", "jobs"), None, used=False), None),
])
def test_the_queue_lost_its_data_when_its_never_deleted_marks_went_back(
    previous: QueueMarks | None, current: QueueMarks, how: str | None,
) -> None:
    loss = data_lost(previous, current)
    assert (loss.how if loss is not None else None) == how
    if loss is not None:
        assert (loss.before, loss.after) == (previous, current)


def figures(*, submitted: int | None, used: bool, queued: int = 0, due: int = 0,
            delayed: int = 0, in_flight: int = 0, dead: int = 0) -> QueueFigures:
    stats = {"succeeded": 7} if used else {}
    if submitted is not None:
        stats["submitted"] = submitted
    return QueueFigures(queued_by_priority={0: queued}, due_delayed=due, delayed=delayed,
                        in_flight=in_flight, dead=dead, workers=1, stats=stats, used=used)


def test_the_marks_are_what_the_round_read_of_the_queue() -> None:
    marks = marks_of(Q, figures(submitted=9, used=True, queued=3, due=1, delayed=2,
                                in_flight=2, dead=1))
    assert marks == QueueMarks(Q, submitted=9, used=True, queued=4, delayed=2, running=2, dead=1)
    # No counter in Redis reads as None, not 0: nothing was submitted yet.
    assert marks_of(Q, figures(submitted=None, used=False)).submitted is None


def test_a_redis_flushed_between_two_rounds_gives_one_verdict() -> None:
    """The marks after the loss are the next round's base: the loss is said once."""
    rounds = [
        figures(submitted=8, used=True, queued=5, in_flight=2, dead=1),
        figures(submitted=None, used=False),
        figures(submitted=None, used=False),
        figures(submitted=1, used=True, queued=1),
        figures(submitted=2, used=True, queued=2),
    ]
    previous, verdicts = None, []
    for read in rounds:
        current = marks_of(Q, read)
        verdicts.append(data_lost(previous, current) is not None)
        previous = current
    assert verdicts == [False, True, False, False, False]


def test_the_event_gives_the_counter_and_the_tasks_last_seen() -> None:
    loss = data_lost(BUSY, EMPTY)
    assert loss is not None
    event = loss_event(loss)
    assert event.type == "Warning"
    assert event.reason == REASON == "QueueDataLost"
    assert event.message == (
        "Redis lost this queue's data (the submit counter went back from 1,234 to 0): 5 "
        "queued, 2 running and 1 dead-lettered task(s) last seen are gone; a Redis without "
        "persistence restarted, a FLUSHALL, or a failover to a replica that had not synced")


def test_the_event_names_delayed_tasks_and_what_is_left_after_a_partial_loss() -> None:
    before = QueueMarks(Q, submitted=20, used=True, queued=5, delayed=3, running=2, dead=0)
    after = QueueMarks(Q, submitted=17, used=True, queued=4, running=1)
    loss = data_lost(before, after)
    assert loss is not None
    assert loss_event(loss).message == (
        "Redis lost this queue's data (the submit counter went back from 20 to 17): 5 queued, "
        "3 delayed, 2 running and 0 dead-lettered task(s) were last seen, 4 queued, 1 running "
        "and 0 dead-lettered task(s) now: what was written since Redis last saved or synced is "
        "gone; a Redis without persistence restarted, a FLUSHALL, or a failover to a replica "
        "that had not synced")


def test_the_event_of_a_queue_with_no_task_left_speaks_of_results() -> None:
    loss = data_lost(QueueMarks(Q, submitted=3, used=True), EMPTY)
    assert loss is not None
    assert ("(the submit counter went back from 3 to 0): no task was queued, running or "
            "dead-lettered when last seen; the results of finished tasks are gone"
            ) in loss_event(loss).message
