"""Caps on a tenant's runs at once (`set_tenant_caps`): a claim passes over the tasks of a
tenant with as many runs as its cap, they keep their places, and the end of one of its runs,
however it ends, makes room for the next (claim.lua, common.lua's caps)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from protocol_helpers import ONE_SERVER, claim_one, eventually

from agentpool.protocol import (
    MAX_TENANT_RUNS,
    ClaimedTask,
    FailOutcome,
    ProtocolError,
    TaskQueue,
    TenantCaps,
)


async def submit_as(queue: TaskQueue, tenant: str | None, n: int) -> list[str]:
    return [await queue.submit({"of": tenant, "n": i}, tenant=tenant) for i in range(n)]


async def claimed_by_tenant(queue: TaskQueue, worker: str, count: int) -> Counter[str | None]:
    return Counter(task.tenant for task in (await queue.claim(worker, count, 30)).tasks)


async def test_a_tenant_at_its_cap_waits_while_the_others_run(queue: TaskQueue) -> None:
    big = await submit_as(queue, "big", 10)
    await submit_as(queue, "small", 3)
    await queue.set_tenant_caps({"big": 2})
    batch = await queue.claim("w1", 10, 30)
    assert Counter(t.tenant for t in batch.tasks) == {"big": 2, "small": 3}
    assert [t.id for t in batch.tasks if t.tenant == "big"] == big[:2]
    assert (await queue.claim("w2", 10, 30)).tasks == []
    figures = await queue.figures()
    assert (figures.queued, figures.held) == (8, 8)

    ended = next(t for t in batch.tasks if t.tenant == "big")
    assert await queue.complete(ended, "done")
    again = await queue.claim("w2", 10, 30)
    assert [t.id for t in again.tasks] == [big[2]], "one run ended: room for one, the next"


async def test_without_caps_the_same_claim_takes_the_big_tenants_tasks(
    queue: TaskQueue,
) -> None:
    """The control for the test above: what it holds back is the cap's doing."""
    await submit_as(queue, "big", 10)
    await submit_as(queue, "small", 3)
    assert await claimed_by_tenant(queue, "w1", 10) == {"big": 7, "small": 3}
    assert (await queue.figures()).held == 0


async def test_the_default_caps_every_tenant_not_listed_and_no_task_without_a_tenant(
    queue: TaskQueue,
) -> None:
    await submit_as(queue, "a", 3)
    await submit_as(queue, "vip", 5)
    await submit_as(queue, None, 3)
    await queue.set_tenant_caps({"vip": 3}, default=1)
    assert await claimed_by_tenant(queue, "w1", 20) == {"a": 1, "vip": 3, None: 3}
    assert await queue.tenant_caps() == TenantCaps({"vip": 3}, 1)


async def test_caps_count_runs_across_claims_and_workers(queue: TaskQueue) -> None:
    await submit_as(queue, "a", 6)
    await queue.set_tenant_caps({"a": 3})
    taken = [len((await queue.claim(f"w{i}", 1, 30)).tasks) for i in range(6)]
    assert taken == [1, 1, 1, 0, 0, 0]


async def test_passed_over_tasks_keep_their_places_and_nothing_is_lost(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Tasks passed over go back at the place they had, and so do those popped beyond the
    claim's count: the queue's order is the same, less the task taken."""
    await queue.set_tenant_caps({"a": 1})
    await submit_as(queue, "a", 1)
    await claim_one(queue, "w1")
    for n in range(5):  # a higher priority: ahead of b's tasks
        await queue.submit({"n": n}, tenant="a", priority=5)
    others = await submit_as(queue, "b", 3)
    before = [_id(i) for i in await redis.zrange(queue.prefix + "queued", 0, -1)]
    assert before[0] not in others, "the capped tenant's task is first"
    taken = await claim_one(queue, "w1")
    assert taken.id == next(i for i in before if i in others)
    after = [_id(i) for i in await redis.zrange(queue.prefix + "queued", 0, -1)]
    assert after == [i for i in before if i != taken.id]
    await queue.set_tenant_caps({})
    assert [t.id for t in (await queue.claim("w1", 10, 30)).tasks] == after


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


EndRun = Callable[[TaskQueue, ClaimedTask], Awaitable[object]]


async def _complete(queue: TaskQueue, task: ClaimedTask) -> object:
    return await queue.complete(task, "ok")


async def _retry_now(queue: TaskQueue, task: ClaimedTask) -> object:
    assert await queue.fail(task, "again", delay=0) is FailOutcome.RETRY
    return None


async def _retry_later(queue: TaskQueue, task: ClaimedTask) -> object:
    assert await queue.fail(task, "later", delay=60) is FailOutcome.RETRY
    return None


async def _dead(queue: TaskQueue, task: ClaimedTask) -> object:
    return await queue.fail(task, "bad", retryable=False)


async def _release(queue: TaskQueue, task: ClaimedTask) -> object:
    return await queue.release(task, "shutting down")


async def _pod_lost(queue: TaskQueue, task: ClaimedTask) -> object:
    return await queue.requeue_pod("pod1")


async def _lease_ran_out(queue: TaskQueue, task: ClaimedTask) -> object:
    """Reaps until the 0.2 s lease has run out and the reaper requeued the run."""
    async def reaped() -> bool:
        return (await queue.reap_expired()).total > 0

    await eventually(reaped, within=5)
    return None


@pytest.mark.parametrize("end", [_complete, _retry_now, _retry_later, _dead, _release,
                                 _pod_lost, _lease_ran_out],
                         ids=lambda end: end.__name__.strip("_"))
async def test_every_way_a_run_ends_makes_room_and_wakes_a_worker(
    queue: TaskQueue, redis: aioredis.Redis, end: EndRun,
) -> None:
    waiting = await submit_as(queue, "a", 3)
    await queue.set_tenant_caps({"a": 1})
    task = (await queue.claim("pod1:x", 1, 0.2)).tasks[0]
    assert (await queue.claim("pod2:y", 1, 30)).tasks == []
    await redis.delete(queue.prefix + "wake")
    await end(queue, task)
    assert await redis.llen(queue.prefix + "wake") == 1, "an idle worker is woken"
    after = await queue.claim("pod2:y", 1, 30)
    assert len(after.tasks) == 1 and after.tasks[0].id in waiting


async def test_a_claim_that_passes_tasks_over_passes_no_wake_up_signal_on(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Else each idle worker woken would wake the next to pass the same tasks over."""
    await submit_as(queue, "a", 4)
    await queue.set_tenant_caps({"a": 1})
    await redis.delete(queue.prefix + "wake")
    assert len((await queue.claim("w1", 4, 30)).tasks) == 1
    assert await redis.llen(queue.prefix + "wake") == 0


async def test_a_run_counted_without_a_lease_holds_no_room_for_ever(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A run whose end no script saw (its lease deleted by hand, or it ended while the
    queue had no caps) is dropped from the count when the count would hold the tenant."""
    await queue.set_tenant_caps({"a": 1})
    await redis.sadd(queue.prefix + "runs:a", "a-run-long-over")
    await submit_as(queue, "a", 2)
    assert len((await queue.claim("w1", 2, 30)).tasks) == 1
    assert await redis.smembers(queue.prefix + "runs:a") != {b"a-run-long-over"}
    assert b"a-run-long-over" not in await redis.smembers(queue.prefix + "runs:a")


async def test_runs_started_before_the_caps_are_not_counted(queue: TaskQueue) -> None:
    await submit_as(queue, "a", 4)
    await queue.claim("w1", 2, 30)
    await queue.set_tenant_caps({"a": 1})
    assert len((await queue.claim("w1", 2, 30)).tasks) == 1


async def test_an_expired_task_of_a_capped_tenant_ends_when_reached(queue: TaskQueue) -> None:
    await queue.set_tenant_caps({"a": 1})
    await queue.submit({"n": 0}, tenant="a")
    late = await queue.submit({"n": 1}, tenant="a", expires=0.1)
    await asyncio.sleep(0.15)
    assert len((await queue.claim("w1", 2, 30)).tasks) == 1
    assert (await queue.get(late)).state == "cancelled"


async def test_held_is_an_estimate_beyond_the_first_thousand(queue: TaskQueue) -> None:
    await queue.set_tenant_caps({"a": 1})
    await queue.submit_many([{"n": i} for i in range(3000)], tenant="a")
    figures = await queue.figures()
    assert (figures.queued, figures.held) == (3000, 2997)  # 999 of the first 1,000
    await claim_one(queue, "w1")
    assert (await queue.figures()).held == 2999  # 1,000 of the first 1,000


async def test_setting_the_same_caps_again_writes_nothing(queue: TaskQueue) -> None:
    assert await queue.set_tenant_caps({"a": 2, "b": 5}, default=3)
    assert not await queue.set_tenant_caps({"b": 5, "a": 2}, default=3)
    assert await queue.set_tenant_caps({"a": 2, "b": 5})
    assert await queue.tenant_caps() == TenantCaps({"a": 2, "b": 5}, None)
    assert await queue.set_tenant_caps({})
    assert await queue.tenant_caps() == TenantCaps()


@ONE_SERVER
async def test_a_cap_written_by_hand_that_is_no_cap_caps_nothing(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    await redis.hset(queue.prefix + "caps", mapping={"a": "0", "b": "x", "": "1.5"})
    await submit_as(queue, "a", 2)
    await submit_as(queue, "b", 2)
    await submit_as(queue, "c", 2)
    assert await claimed_by_tenant(queue, "w1", 6) == {"a": 2, "b": 2, "c": 2}
    assert await queue.tenant_caps() == TenantCaps()


@pytest.mark.parametrize("caps, default", [({"a": 0}, None), ({"a": MAX_TENANT_RUNS + 1}, None),
                                           ({"a": True}, None), ({}, 0), ({"": 1}, None)])
async def test_a_cap_out_of_range_is_refused_and_nothing_stored(
    queue: TaskQueue, redis: aioredis.Redis, caps: dict[str, int], default: int | None,
) -> None:
    with pytest.raises(ProtocolError):
        await queue.set_tenant_caps(caps, default)
    assert not await redis.exists(queue.prefix + "caps")


async def test_tenant_loads_show_each_tenants_cap(queue: TaskQueue) -> None:
    await submit_as(queue, "a", 2)
    await submit_as(queue, None, 1)
    await queue.set_tenant_caps({"listed": 4}, default=2)
    loads = {load.tenant: load for load in (await queue.tenant_loads()).loads}
    assert (loads["a"].cap, loads["listed"].cap, loads[None].cap) == (2, 4, None)
