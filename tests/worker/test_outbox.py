"""The worker's outbox of events: calls that keep their id until Redis takes them, events
held back while Redis is full, and waits for everything emitted before a point."""

from __future__ import annotations

import asyncio

from agentpool.protocol import ClaimedTask
from agentpool_worker.outbox import MAX_CALL_EVENTS, EventOutbox, by_run


def claim(task_id: str) -> ClaimedTask:
    return ClaimedTask(task_id, f"tok-{task_id}", 1, 3, "null", 0, 0)


def test_a_call_keeps_its_id_and_events_until_redis_takes_it() -> None:
    outbox, a = EventOutbox(asyncio.Event()), claim("a")
    outbox.add(a, "step", "1")
    first = outbox.next_call()
    outbox.add(a, "step", "2")
    again = outbox.next_call()
    assert (again.call, again.events) == (first.call, [(1, a, "step", "1")])
    asyncio.run(outbox.taken())
    newer = outbox.next_call()
    assert newer.call != first.call and newer.events == [(2, a, "step", "2")]


def test_a_call_carries_at_most_its_share_in_order() -> None:
    outbox, a = EventOutbox(asyncio.Event()), claim("a")
    for n in range(MAX_CALL_EVENTS + 5):
        outbox.add(a, "n", str(n))
    sent = outbox.next_call().events
    assert [e[0] for e in sent] == list(range(1, MAX_CALL_EVENTS + 1))
    assert len(outbox.unsent) == 5


def test_events_are_grouped_per_run_in_the_order_emitted() -> None:
    a, b = claim("a"), claim("b")
    runs = by_run([(1, a, "x", "1"), (2, b, "y", "2"), (3, a, "z", "3")])
    assert [(r.task_id, list(r.items), r.token) for r in runs] == [
        ("a", [("x", "1"), ("z", "3")], "tok-a"), ("b", [("y", "2")], "tok-b")]


async def test_events_refused_for_a_full_redis_are_held_back_until_asked_or_room() -> None:
    wake = asyncio.Event()
    outbox, a = EventOutbox(wake), claim("a")
    outbox.add(a, "step", "1")
    outbox.next_call()
    await outbox.refused()
    assert not outbox.may_go()
    assert 0 < (outbox.retry_in() or 0) <= 2.0
    waiting = asyncio.create_task(outbox.wait_recorded())
    await asyncio.wait_for(wake.wait(), 1)
    assert outbox.may_go(), "asked for: they go at once"
    outbox.next_call()
    await outbox.refused()  # and are refused again
    assert await asyncio.wait_for(waiting, 1) is False, "the wait is told"
    assert not outbox.may_go()
    wake.clear()
    outbox.release_held()
    assert wake.is_set() and outbox.may_go(), "room again: they go now"
    wake.clear()
    outbox.release_held()
    assert not wake.is_set(), "nothing held: the flusher is not woken"


async def test_a_wait_ends_once_every_event_up_to_its_point_is_recorded() -> None:
    wake = asyncio.Event()
    outbox, a = EventOutbox(wake), claim("a")
    for n in range(3):
        outbox.add(a, "n", str(n))
    waiting = asyncio.create_task(outbox.wait_recorded(2))
    await asyncio.wait_for(wake.wait(), 1)
    assert not waiting.done()
    outbox.next_call()
    await outbox.taken()
    assert await asyncio.wait_for(waiting, 1) is True
    assert await outbox.wait_recorded() is True


async def test_dropping_a_runs_events_frees_those_waiting_for_them() -> None:
    outbox, a, b = EventOutbox(asyncio.Event()), claim("a"), claim("b")
    outbox.add(a, "x", "1")
    outbox.next_call()
    outbox.add(b, "y", "2")
    outbox.add(a, "z", "3")
    assert await outbox.drop(a) == 2
    assert outbox.untaken is None and [e[1] for e in outbox.unsent] == [b]
    assert await asyncio.wait_for(outbox.wait_recorded(1), 1) is True
