"""Caps set on a queue that had none count the runs already in progress, in the step that
writes them (set_caps.lua): a tenant over its new cap starts nothing more until its runs fall
below it; removing the caps forgets the counts, so runs that end meanwhile leave none behind."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from agentpool.protocol import ClaimedTask, TaskQueue


async def submit_as(queue: TaskQueue, tenant: str | None, n: int) -> list[str]:
    return [await queue.submit({"of": tenant, "n": i}, tenant=tenant) for i in range(n)]


async def claimed(queue: TaskQueue, worker: str, count: int) -> list[ClaimedTask]:
    return (await queue.claim(worker, count, 30)).tasks


def by_tenant(tasks: list[ClaimedTask]) -> Counter[str | None]:
    return Counter(task.tenant for task in tasks)


async def counted(redis: aioredis.Redis, queue: TaskQueue, tenant: str) -> set[str]:
    return {_text(i) for i in await redis.smembers(queue.prefix + f"runs:{tenant}")}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_a_tenant_over_its_first_cap_starts_nothing_until_its_runs_fall_below_it(
    queue: TaskQueue,
) -> None:
    """Five acme runs in progress when tenantMaxRunning (the default cap) is set to 1: the
    next claim parks acme's task and starts the other tenant's; acme starts again only once
    all five ended (four ended still leave it at its cap)."""
    await submit_as(queue, "acme", 5)
    running = await claimed(queue, "w1", 5)
    assert by_tenant(running) == {"acme": 5}
    waiting = await submit_as(queue, "acme", 2)
    await submit_as(queue, "other", 1)
    await submit_as(queue, None, 1)

    assert await queue.set_tenant_caps({}, default=1)
    assert by_tenant(await claimed(queue, "w2", 10)) == {"other": 1, None: 1}
    assert (await queue.figures()).capped == 2

    assert await queue.complete(running[0], "ok")
    await queue.fail(running[1], "boom", retryable=False)
    await queue.release(running[2], "pod leaving")
    assert await queue.complete(running[3], "ok")
    assert await claimed(queue, "w2", 10) == [], "one acme run left: at its cap of 1"
    assert (await queue.figures()).capped == 3, "the released task waits parked too"

    assert await queue.complete(running[4], "ok")
    again = await claimed(queue, "w2", 10)
    assert [t.id for t in again] == [running[2].id], "room for one: the first in line"
    assert waiting[0] not in {t.id for t in again}


async def test_a_cap_of_one_tenant_counts_its_runs_and_leaves_the_others_uncapped(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Every tenant's runs are counted when the first caps are set, capped or not: a cap
    given to another tenant later counts the runs it had then too."""
    await submit_as(queue, "acme", 3)
    await submit_as(queue, "beta", 3)
    before = await claimed(queue, "w1", 6)
    assert await queue.set_tenant_caps({"acme": 3})
    assert await counted(redis, queue, "beta") == {t.id for t in before if t.tenant == "beta"}
    await submit_as(queue, "acme", 1)
    await submit_as(queue, "beta", 1)
    assert by_tenant(await claimed(queue, "w2", 10)) == {"beta": 1}
    assert await queue.set_tenant_caps({"acme": 3, "beta": 4})
    assert await claimed(queue, "w2", 10) == [], "beta has 4 runs: 3 before the caps, 1 after"


async def test_caps_removed_then_set_again_count_the_runs_of_then(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Runs counted under caps that end while the queue has none leave no phantom run, and
    runs started meanwhile are counted when the caps come back."""
    assert await queue.set_tenant_caps({}, default=2)
    await submit_as(queue, "acme", 2)
    await submit_as(queue, "beta", 2)
    first = await claimed(queue, "w1", 4)
    assert by_tenant(first) == {"acme": 2, "beta": 2}

    assert await queue.set_tenant_caps({})
    assert not await redis.exists(queue.prefix + "runs:acme", queue.prefix + "runs:beta")
    for task in first:
        assert await queue.complete(task, "ok")
    await submit_as(queue, "acme", 4)
    acme_now = await claimed(queue, "w1", 3)
    assert by_tenant(acme_now) == {"acme": 3}
    await submit_as(queue, "beta", 2)

    assert await queue.set_tenant_caps({}, default=2)
    assert await counted(redis, queue, "acme") == {t.id for t in acme_now}
    assert not await redis.exists(queue.prefix + "runs:beta")
    assert by_tenant(await claimed(queue, "w2", 10)) == {"beta": 2}, (
        "beta's runs ended: no phantom holds it; acme has 3 runs, over its cap of 2")
    for task in acme_now[:2]:
        assert await queue.complete(task, "ok")
    assert by_tenant(await claimed(queue, "w2", 10)) == {"acme": 1}


async def test_claims_racing_the_first_caps_are_each_counted_once(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Claims sent while the caps are set run before or after the step that writes them and
    counts the runs: either way each run is counted once, and none is missed."""
    await submit_as(queue, "acme", 40)
    started = {t.id for t in await claimed(queue, "w0", 5)}
    claims = [queue.claim(f"w{i}", 1, 30) for i in range(1, 31)]
    replies = await asyncio.gather(*claims[:15], queue.set_tenant_caps({"acme": 3}),
                                   *claims[15:])
    started |= {t.id for reply in replies if not isinstance(reply, bool) for t in reply.tasks}
    assert await counted(redis, queue, "acme") == started
    assert await claimed(queue, "w-last", 5) == []


async def test_changing_caps_already_set_recounts_nothing(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Only the change from no caps to some counts the runs: while the queue has caps, the
    claims and the runs' ends keep the count, and a change of a cap leaves it as it is."""
    await submit_as(queue, "acme", 2)
    running = {t.id for t in await claimed(queue, "w1", 2)}
    assert await queue.set_tenant_caps({"acme": 5})
    assert await counted(redis, queue, "acme") == running
    await redis.sadd(queue.prefix + "runs:acme", "marker")
    assert await queue.set_tenant_caps({"acme": 1}, default=4)
    assert await counted(redis, queue, "acme") == running | {"marker"}


async def test_a_count_left_by_caps_removed_otherwise_is_replaced(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Caps removed without `set_tenant_caps` (by hand, or by a version before this one)
    leave the counts of then: caps set again make a tenant's count its runs in progress."""
    assert await queue.set_tenant_caps({"acme": 2})
    await submit_as(queue, "acme", 4)
    then = await claimed(queue, "w1", 2)
    await redis.delete(queue.prefix + "caps")
    for task in then:
        assert await queue.complete(task, "ok")
    now = {t.id for t in await claimed(queue, "w1", 1)}
    assert await counted(redis, queue, "acme") == {t.id for t in then}
    assert await queue.set_tenant_caps({"acme": 2})
    assert await counted(redis, queue, "acme") == now
