"""When the worker's next claim waits for a wake-up signal and when it goes at once."""

from __future__ import annotations

import pytest

from agentpool.protocol import ClaimBatch, ClaimedTask
from agentpool_worker.claim_pace import ArrivalRate, lingers, wait_before_next_claim


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


def rate_after(gaps: list[float], tasks: int = 1) -> ArrivalRate:
    """The arrival rate after claims `gaps` seconds apart, each bringing `tasks`."""
    rate, now = ArrivalRate(), 100.0
    rate.claimed(tasks, now)
    for gap in gaps:
        now += gap
        rate.claimed(tasks, now)
    return rate


def test_the_arrival_rate_follows_the_claims() -> None:
    assert rate_after([0.01] * 20).per_second == pytest.approx(100, rel=0.01)
    assert rate_after([0.001] * 20, tasks=3).per_second == pytest.approx(3000, rel=0.01)
    assert ArrivalRate().per_second == 0
    assert rate_after([]).per_second == 0  # one claim is no interval yet


def test_a_dense_stream_lingers_and_a_sparse_one_never_does() -> None:
    linger, free = 0.002, 50
    assert lingers(rate_after([0.0002] * 20), linger, free)     # 5,000 tasks/s: ten per linger
    assert not lingers(rate_after([0.002] * 20), linger, free)  # 500 tasks/s: one per linger
    assert not lingers(rate_after([0.01] * 20), linger, free)   # 100 tasks/s
    assert not lingers(rate_after([0.0002] * 20), 0.0, free)    # turned off


def test_a_worker_with_one_free_slot_does_not_linger() -> None:
    dense = rate_after([0.0002] * 20)
    assert not lingers(dense, 0.002, free=1)
    assert lingers(dense, 0.002, free=2)


def test_a_stream_that_stops_stops_lingering_at_the_first_empty_claim() -> None:
    rate = rate_after([0.0002] * 20)
    rate.claimed(0, 100.0 + 20 * 0.0002 + 0.002)  # the linger's claim found nothing
    assert not lingers(rate, 0.002, 50)


def test_one_fast_claim_after_a_sparse_stream_is_not_enough_to_linger() -> None:
    rate = rate_after([0.01] * 20)
    rate.claimed(1, 100.0 + 20 * 0.01 + 0.0003)
    assert not lingers(rate, 0.002, 50)
