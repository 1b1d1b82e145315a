"""A dead task requeued from the dead letters brings back the tasks its death cancelled (and
those their cancel cancelled in turn): they wait for it again and run once it succeeds, on a
real Redis (standalone, Sentinel and Cluster through the `queue` fixture)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_within, drop_queue, fail_until_dead, queued_ids

from agentpool.protocol import CancelOutcome, DeadRequeued, TaskQueue, new_task_id


async def run(queue: TaskQueue, task_id: str) -> None:
    task = await claim_within(queue, "w1")
    assert task.id == task_id, f"claimed {task.id}, expected {task_id}"
    assert await queue.complete(task, "ok")


async def states(queue: TaskQueue, *task_ids: str) -> list[str]:
    return [i.state for i in await queue.get_many(list(task_ids))]


async def test_a_requeued_dead_task_brings_back_the_chain_its_death_cancelled(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    first = await queue.submit({"step": 1}, max_attempts=1)
    second = await queue.submit({"step": 2}, after=[first])
    third = await queue.submit({"step": 3}, after=[second])
    await fail_until_dead(queue, "w1", first)
    assert await states(queue, second, third) == ["cancelled", "cancelled"]

    assert await queue.requeue_dead_counted([first]) == DeadRequeued(requeued=1, revived=2)
    assert await states(queue, first, second, third) == ["queued", "deferred", "deferred"]
    info = await queue.get(third)
    assert info is not None and info.error is None and info.finished_ms is None
    assert (await queue.figures()).deferred == 2
    for key in (f"t:{second}", f"t:{third}", f"next:{second}"):
        assert await redis.ttl(queue.prefix + key) == -1, f"{key} is kept while it waits"

    await run(queue, first)
    assert await states(queue, second, third) == ["queued", "deferred"]
    await run(queue, second)
    assert await queued_ids(redis, queue) == [third]
    await run(queue, third)
    assert (await queue.figures()).deferred == 0


async def test_a_fan_in_waits_again_only_for_the_task_still_to_run(queue: TaskQueue) -> None:
    done = await queue.submit({"part": 1})
    failing = await queue.submit({"part": 2}, max_attempts=1)
    summary = await queue.submit({"summarise": True}, after=[done, failing])
    await run(queue, done)
    await fail_until_dead(queue, "w1", failing)
    assert await states(queue, summary) == ["cancelled"]

    await queue.requeue_dead([failing])
    assert await states(queue, summary) == ["deferred"]
    await run(queue, failing)
    assert await states(queue, summary) == ["queued"], "it waited for the requeued one alone"


async def test_a_diamond_comes_back_whole_and_its_join_waits_for_both_sides(
    queue: TaskQueue,
) -> None:
    first = await queue.submit({"n": 0}, max_attempts=1)
    left = await queue.submit({"left": 1}, after=[first])
    right = await queue.submit({"right": 1}, after=[first])
    joined = await queue.submit({"join": 1}, after=[left, right])
    await fail_until_dead(queue, "w1", first)
    assert (await queue.requeue_dead_counted([first])).revived == 3, "the join counted once"
    assert await states(queue, left, right, joined) == ["deferred"] * 3

    await run(queue, first)
    await run(queue, left)
    assert await states(queue, joined) == ["deferred"], "the right side has not run yet"
    await run(queue, right)
    assert await states(queue, joined) == ["queued"]


async def test_a_task_cancelled_otherwise_stays_cancelled(queue: TaskQueue) -> None:
    """Only an end caused by the tasks it runs after is undone: a producer's cancel stands,
    and so does a cascade from another task that is still cancelled."""
    first = await queue.submit({"n": 1}, max_attempts=1)
    cancelled_by_hand = await queue.submit({"n": 2}, after=[first])
    other = await queue.submit({"n": 3})
    after_both = await queue.submit({"n": 4}, after=[first, other])
    assert await queue.cancel(cancelled_by_hand) is CancelOutcome.CANCELLED
    assert await queue.cancel(other) is CancelOutcome.CANCELLED
    await fail_until_dead(queue, "w1", first)

    assert await queue.requeue_dead_counted([first]) == DeadRequeued(requeued=1, revived=0)
    for task_id, error in ((cancelled_by_hand, "cancelled"),
                           (after_both, f"cancelled: the task {other} it runs after ended "
                                        "cancelled")):
        info = await queue.get(task_id)
        assert info is not None and (info.state, info.error) == ("cancelled", error)
    assert (await queue.figures()).deferred == 0


async def test_a_task_it_runs_after_whose_record_is_gone_keeps_it_cancelled(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A succeeded task's record lasts the result TTL; once gone nobody can say how it ended,
    so the task after it and the requeued one is not brought back (it could run too early)."""
    done = await queue.submit({"part": 1})
    failing = await queue.submit({"part": 2}, max_attempts=1)
    summary = await queue.submit({"summarise": True}, after=[done, failing])
    await run(queue, done)
    await fail_until_dead(queue, "w1", failing)
    await redis.delete(queue.prefix + f"t:{done}")

    await queue.requeue_dead([failing])
    assert await states(queue, summary) == ["cancelled"]


async def test_a_task_born_cancelled_after_a_dead_one_comes_back_with_it(
    queue: TaskQueue,
) -> None:
    """Submitted after a task already dead, it ends cancelled at once, and is listed so that
    the dead task requeued brings it back; it then waits for the others still to run too,
    and its delay still counts from its submit."""
    dead = await queue.submit({"n": 1}, max_attempts=1)
    await fail_until_dead(queue, "w1", dead)
    running = await queue.submit({"n": 2})
    late = await queue.submit({"n": 3}, after=[dead, running], delay=3600)
    info = await queue.get(late)
    assert info is not None and info.state == "cancelled"
    assert info.error == f"cancelled: the task {dead} it runs after ended dead"

    await queue.requeue_dead([dead])
    assert await states(queue, late) == ["deferred"]
    await run(queue, dead)
    assert await states(queue, late) == ["deferred"], "the other task has not run yet"
    await run(queue, running)
    assert await states(queue, late) == ["delayed"], "its hour from the submit has not passed"


@pytest.mark.parametrize("requeue_order", ["chain first", "dead first"])
async def test_a_task_born_cancelled_after_cancelled_and_dead_ones_comes_back_either_way(
    queue: TaskQueue, requeue_order: str,
) -> None:
    """Submitted after a task the cascade cancelled and after a dead one: whichever comes back
    first, the task waits for both once both are back, and runs when both have succeeded."""
    root = await queue.submit({"root": 1}, max_attempts=1)
    chained = await queue.submit({"chained": 1}, after=[root])
    await fail_until_dead(queue, "w1", root)
    dead = await queue.submit({"dead": 1}, max_attempts=1)
    await fail_until_dead(queue, "w1", dead)
    late = await queue.submit({"late": 1}, after=[chained, dead])
    assert await states(queue, chained, late) == ["cancelled", "cancelled"]

    order = [root, dead] if requeue_order == "chain first" else [dead, root]
    await queue.requeue_dead([order[0]])
    assert await states(queue, late) == ["cancelled"], "one of the two is still ended"
    await queue.requeue_dead([order[1]])
    assert await states(queue, chained, late) == ["deferred", "deferred"]
    await run(queue, root)
    await run(queue, chained)
    assert await states(queue, late) == ["deferred"], "the dead task has not run yet"
    await run(queue, dead)
    assert await states(queue, late) == ["queued"]


async def test_a_task_submitted_after_a_cancelled_one_comes_back_with_it(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Listed in the cancelled task's ``next:``, which expires (a result TTL after the
    submit) until the task comes back."""
    first = await queue.submit({"n": 1}, max_attempts=1)
    second = await queue.submit({"n": 2}, after=[first])
    await fail_until_dead(queue, "w1", first)
    third = await queue.submit({"n": 3}, after=[second])
    assert await states(queue, third) == ["cancelled"]
    assert 0 < await redis.ttl(queue.prefix + f"next:{second}") <= 86400
    await queue.requeue_dead([first])
    assert await states(queue, second, third) == ["deferred", "deferred"]
    assert await redis.ttl(queue.prefix + f"next:{second}") == -1


async def test_several_dead_tasks_requeued_in_one_call_in_any_order(queue: TaskQueue) -> None:
    one = await queue.submit({"n": 1}, max_attempts=1)
    two = await queue.submit({"n": 2}, max_attempts=1)
    both = await queue.submit({"both": True}, after=[one, two, one])
    await fail_until_dead(queue, "w1", one)
    await fail_until_dead(queue, "w1", two)
    assert await queue.requeue_dead([two, one]) == 2
    assert await states(queue, both) == ["deferred"]
    await run(queue, one)
    assert await states(queue, both) == ["deferred"], "an id named twice counts once"
    await run(queue, two)
    assert await states(queue, both) == ["queued"]


async def test_a_task_it_runs_after_still_running_is_waited_for(queue: TaskQueue) -> None:
    failing = await queue.submit({"n": 1}, max_attempts=1)
    slow = await queue.submit({"n": 2})
    joined = await queue.submit({"join": True}, after=[failing, slow])
    await fail_until_dead(queue, "w1", failing)
    running = await claim_within(queue, "w2")
    assert running.id == slow
    await queue.requeue_dead([failing])
    await run(queue, failing)
    assert await states(queue, joined) == ["deferred"]
    assert await queue.complete(running, "ok")
    assert await states(queue, joined) == ["queued"]


@pytest.mark.parametrize("redis_mode", ["standalone"])
async def test_a_submit_sent_again_after_its_record_expired_counts_once(
    queue: TaskQueue,
) -> None:
    """A task born cancelled keeps its record for the result TTL only; the same submit sent
    again later creates it again and lists it a second time, and the task still waits for
    every task it runs after. Standalone only: the script is called directly, twice."""
    await queue.configure(result_ttl=1)
    one = await queue.submit({"n": 1}, max_attempts=1)
    two = await queue.submit({"n": 2}, max_attempts=1)
    for task_id in (one, two):
        await fail_until_dead(queue, "w1", task_id)
    args = queue._submit_args({"both": True}, 0, 0, None, None, after=[one, two])
    script = queue._script("submit")
    await script(keys=[queue.prefix + "queued"], args=[queue.prefix, *args])
    await asyncio.sleep(1.3)  # past the result TTL of its first, cancelled, record
    await script(keys=[queue.prefix + "queued"], args=[queue.prefix, *args])
    await queue.requeue_dead([one, two])
    await run(queue, one)
    assert await states(queue, args[0]) == ["deferred"], "it ran before the second succeeded"


async def test_a_purged_dead_task_leaves_the_tasks_after_it_cancelled(queue: TaskQueue) -> None:
    first = await queue.submit({"n": 1}, max_attempts=1)
    second = await queue.submit({"n": 2}, after=[first])
    await fail_until_dead(queue, "w1", first)
    assert await queue.purge_dead([first]) == 1
    assert await queue.requeue_dead([first]) == 0
    assert await states(queue, second) == ["cancelled"]


@pytest.mark.parametrize("redis_mode", ["standalone"])
async def test_a_chain_deeper_than_lua_calls_go_comes_back_in_one_step(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """The walk is a list as the cascade is: a chain of 21,000 cancelled by its dead first
    task waits again whole. Standalone only: the chain is built in one pipeline."""
    ids = [new_task_id() for _ in range(21_000)]
    script = queue._script("submit")
    async with redis.pipeline(transaction=False) as pipe:
        for n, task_id in enumerate(ids):
            args = queue._submit_args({"n": n}, 0, 0, None, 1 if n == 0 else None,
                                      after=[ids[n - 1]] if n else None)
            args[0] = task_id
            await script(keys=[queue.prefix + "queued"], args=[queue.prefix, *args], client=pipe)
        await pipe.execute()
    await fail_until_dead(queue, "w1", ids[0])
    assert (await queue.figures()).deferred == 0
    assert await queue.requeue_dead([ids[0]]) == 1
    assert (await queue.figures()).deferred == len(ids) - 1
    await drop_queue(redis, queue)
