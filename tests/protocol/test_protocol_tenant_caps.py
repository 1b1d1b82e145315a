"""Caps on a tenant's runs at once (`set_tenant_caps`): a claim parks the tasks of a tenant
with as many runs as its cap, out of the queue but at their places, and the end of one of its
runs, however it ends, brings the next back (claim.lua, common.lua's caps)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from protocol_helpers import ONE_SERVER, claim_one, eventually

from agentpool.protocol import (
    MAX_TENANT_RUNS,
    CancelOutcome,
    ClaimedTask,
    FailOutcome,
    ProtocolError,
    TaskQueue,
    TenantCaps,
    task_page,
    task_view,
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
    assert (figures.queued, figures.capped, sum(figures.queued_by_priority.values())) == (
        8, 8, 0)

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
    assert (await queue.figures()).capped == 0


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


async def test_parked_tasks_come_back_at_their_places_and_nothing_is_lost(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Tasks parked for a cap keep their scores, and so do those popped beyond the claim's
    count: once the cap goes, the queue holds what it held, less the task taken."""
    await queue.set_tenant_caps({"a": 1})
    await submit_as(queue, "a", 1)
    await claim_one(queue, "w1")
    for n in range(5):  # a higher priority: ahead of b's tasks
        await queue.submit({"n": n}, tenant="a", priority=5)
    others = await submit_as(queue, "b", 3)
    before = await queued_with_scores(redis, queue)
    assert next(iter(before)) not in others, "the capped tenant's task is first"
    taken = await claim_one(queue, "w1")
    assert taken.id == next(i for i in before if i in others)
    assert list(await queued_with_scores(redis, queue)) == [i for i in others if i != taken.id]
    assert (await queue.figures()).capped == 5
    await queue.set_tenant_caps({})
    after = await queued_with_scores(redis, queue)
    assert after == {i: score for i, score in before.items() if i != taken.id}
    assert [t.id for t in (await queue.claim("w1", 10, 30)).tasks] == list(after)


async def queued_with_scores(redis: aioredis.Redis, queue: TaskQueue) -> dict[str, float]:
    return {_id(i): score for i, score in
            await redis.zrange(queue.prefix + "queued", 0, -1, withscores=True)}


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


@pytest.mark.parametrize("end, parked_after, next_is_the_same", [
    (_complete, 1, False), (_retry_later, 1, False), (_dead, 1, False),
    # its run's end gives a parked task back, and the retry, due at once, keeps its place
    (_retry_now, 1, True),
    # handed back to the queue at its place, its run over: a parked task given back too
    (_release, 1, True), (_pod_lost, 1, True),
    # the reaper hands the run back and finds the room it leaves
    (_lease_ran_out, 1, True),
], ids=["complete", "retry_later", "dead", "retry_now", "release", "pod_lost", "lease_ran_out"])
async def test_every_way_a_run_ends_makes_room_and_wakes_a_worker(
    queue: TaskQueue, redis: aioredis.Redis, end: EndRun, parked_after: int,
    next_is_the_same: bool,
) -> None:
    waiting = await submit_as(queue, "a", 3)
    await queue.set_tenant_caps({"a": 1})
    task = (await queue.claim("pod1:x", 1, 0.2)).tasks[0]
    assert (await queue.claim("pod2:y", 1, 30)).tasks == []
    assert (await queue.figures()).capped == 2
    await redis.delete(queue.prefix + "wake")
    await end(queue, task)
    assert await redis.llen(queue.prefix + "wake") == 1, "an idle worker is woken"
    assert (await queue.figures()).capped == parked_after
    (after,) = (await queue.claim("pod2:y", 1, 30)).tasks
    assert after.id == (task.id if next_is_the_same else waiting[1])


@pytest.mark.parametrize("end", [_release, _pod_lost], ids=["release", "pod_lost"])
async def test_a_run_handed_back_does_not_pass_its_tenants_parked_task_of_a_higher_priority(
    queue: TaskQueue, redis: aioredis.Redis, end: EndRun,
) -> None:
    """Not even when a claim looked for unreported room within the last second (a busy
    queue: the next look is up to a second away)."""
    await queue.set_tenant_caps({"a": 1})
    low = await queue.submit("low", tenant="a", priority=0)
    (running,) = (await queue.claim("pod1:x", 1, 30)).tasks
    assert running.id == low
    high = await queue.submit("high", tenant="a", priority=9)
    assert (await queue.claim("pod2:y", 1, 30)).tasks == []
    assert (await queue.figures()).capped == 1
    await redis.set(queue.prefix + "unpark_look", "1", px=60_000)
    await end(queue, running)
    (first,) = (await queue.claim("pod2:y", 1, 30)).tasks
    assert first.id == high
    assert (await queue.claim("pod2:y", 1, 30)).tasks == [], "the low one waits for room"
    assert (await queue.figures()).capped == 1


async def test_a_claim_that_parks_the_rest_of_the_queue_wakes_no_one(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Parked tasks are out of the queue: no idle worker is woken to look at them again."""
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
    assert b"a-run-long-over" not in await redis.smembers(queue.prefix + "runs:a")


async def test_a_cap_given_to_a_tenant_counts_the_runs_it_has(queue: TaskQueue) -> None:
    """While the queue has caps, every tenant's runs are counted, capped or not."""
    await queue.set_tenant_caps({"other": 5})
    await submit_as(queue, "a", 6)
    assert len((await queue.claim("w1", 4, 30)).tasks) == 4
    await queue.set_tenant_caps({"other": 5, "a": 2})
    assert (await queue.claim("w1", 2, 30)).tasks == []


async def test_an_expired_task_of_a_capped_tenant_ends_when_reached(queue: TaskQueue) -> None:
    await queue.set_tenant_caps({"a": 1})
    await queue.submit({"n": 0}, tenant="a")
    late = await queue.submit({"n": 1}, tenant="a", expires=0.1)
    await asyncio.sleep(0.15)
    assert len((await queue.claim("w1", 2, 30)).tasks) == 1
    assert (await queue.get(late)).state == "cancelled"


async def test_a_claim_parks_at_most_a_thousand_and_the_next_goes_on(
    queue: TaskQueue,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    await queue.submit_many([{"n": i} for i in range(2500)], tenant="a")
    assert len((await queue.claim("w1", 10, 30)).tasks) == 1
    figures = await queue.figures()
    # (1,000, and the rest of the batch of 64 it popped last)
    assert figures.queued == 2499 and 1000 <= figures.capped < 1064, figures
    assert (await queue.claim("w1", 10, 30)).tasks == []
    assert 2000 <= (await queue.figures()).capped < 2128


@ONE_SERVER
async def test_a_capped_tenants_backlog_never_stands_in_front_of_another_tenant(
    queue: TaskQueue,
) -> None:
    """A tenant of a cap of one with 3,000 tasks queued, and another that submits and runs
    1,500 tasks one after the other: each of them is the next task a claim takes (its places
    lie among the first tenant's, which are parked, not passed over)."""
    await queue.set_tenant_caps({"a": 1})
    await queue.submit_many([{"n": i} for i in range(3000)], tenant="a")
    await claim_one(queue, "w1")
    for n in range(1500):
        mine = await queue.submit({"n": n}, tenant="b")
        batch = await queue.claim("w2", 1, 30)
        assert [t.id for t in batch.tasks] == [mine], n
        assert await queue.complete(batch.tasks[0], "ok")


async def test_a_capped_tenants_backlog_at_a_higher_priority_does_not_stall_the_others(
    queue: TaskQueue,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    await queue.submit_many([{"n": i} for i in range(1500)], tenant="a", priority=9)
    low = await queue.submit({"n": 0}, tenant="b")
    assert len((await queue.claim("w1", 2, 30)).tasks) == 1
    assert [t.id for t in (await queue.claim("w1", 1, 30)).tasks] == [low]


async def test_a_parked_task_cancelled_leaves_its_tenants_parked_tasks(
    queue: TaskQueue,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 4)
    (first,) = (await queue.claim("w1", 4, 30)).tasks
    assert await queue.cancel(ids[2]) is CancelOutcome.CANCELLED
    assert (await queue.figures()).capped == 2
    assert await queue.complete(first, "ok")
    assert [t.id for t in (await queue.claim("w1", 4, 30)).tasks] == [ids[1]]


async def test_cancel_waiting_cancels_parked_tasks_too(queue: TaskQueue) -> None:
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 5)
    (first,) = (await queue.claim("w1", 5, 30)).tasks
    assert await queue.cancel_waiting() == 4
    assert [(await queue.get(i)).state for i in ids if i != first.id] == ["cancelled"] * 4
    assert (await queue.figures()).queued == 0


async def test_raising_a_cap_gives_the_parked_tasks_back_and_wakes_workers(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 4)
    await queue.claim("w1", 4, 30)
    await redis.delete(queue.prefix + "wake")
    await queue.set_tenant_caps({"a": 3})
    assert await redis.llen(queue.prefix + "wake") == 2
    assert [t.id for t in (await queue.claim("w2", 4, 30)).tasks] == ids[1:3]
    assert (await queue.figures()).capped == 1


async def test_the_reaper_gives_back_what_a_lost_run_left_parked(queue: TaskQueue) -> None:
    """A run whose lease ran out goes back to the queue; the room it leaves is found by the
    reaper's look at the parked tenants, which gives their tasks back."""
    await queue.set_tenant_caps({"a": 1})
    await submit_as(queue, "a", 3)
    (lost,) = (await queue.claim("pod1:x", 3, 0.2)).tasks
    assert (await queue.figures()).capped == 2

    async def reaped() -> bool:
        return (await queue.reap_expired()).total > 0

    await eventually(reaped, within=5)
    figures = await queue.figures()
    assert (figures.capped, figures.queued) == (1, 3)
    assert lost.id in [t.id for t in (await queue.claim("w2", 3, 30)).tasks]


async def test_the_tenants_view_counts_parked_tasks_as_queued(queue: TaskQueue) -> None:
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 4)
    await queue.claim("w1", 4, 30)
    loads = {load.tenant: load for load in (await queue.tenant_loads()).loads}
    assert (loads["a"].queued, loads["a"].running, loads["a"].cap) == (3, 1, 1)
    found, count, cut = await queue.tenant_task_ids("queued", "a", 10)
    assert (sorted(found), count, cut) == (sorted(ids[1:]), 3, False)


async def parked_behind(queue: TaskQueue) -> tuple[list[str], list[str], list[str]]:
    """Tenants b and a capped at 1 with one run each and two tasks parked each, and two tasks
    of c in the queue: (a's parked, b's parked, c's queued), each in submit order."""
    await queue.set_tenant_caps({"a": 1, "b": 1})
    b = await submit_as(queue, "b", 3)
    a = await submit_as(queue, "a", 3)
    assert await claimed_by_tenant(queue, "w1", 2) == {"a": 1, "b": 1}
    assert (await queue.claim("w2", 10, 30)).tasks == []  # it parks the rest
    c = await submit_as(queue, "c", 2)
    assert (await queue.figures()).capped == 4
    return a[1:], b[1:], c


async def test_queued_tasks_are_listed_with_those_waiting_for_their_cap_last(
    queue: TaskQueue,
) -> None:
    """Parked out of the queue, they are still queued: listed after the queue, tenants by
    name, each marked as waiting for its tenant's cap."""
    a, b, c = await parked_behind(queue)
    listed = await queue.list_tasks("queued", 10)
    assert [t.id for t in listed] == [*c, *a, *b]
    assert [t.capped for t in listed] == [False] * 2 + [True] * 4
    assert {t.state for t in listed} == {"queued"}
    assert [t.id for t in await queue.list_tasks("queued", 3)] == [*c, a[0]]
    got = await queue.get(a[0])
    assert got is not None and got.capped
    again = await queue.get(c[0])
    assert again is not None and not again.capped
    found, count, _ = await queue.tenant_task_ids("queued", "a", 10)
    assert (found, count) == (a, 2)
    assert await queue.list_tasks("queued", 0) == []


async def test_a_tenants_own_list_shows_its_parked_tasks_first_as_they_will_run(
    queue: TaskQueue,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    first = await submit_as(queue, "a", 3)
    await queue.claim("w1", 10, 30)  # runs a's first, parks the other two
    later = await submit_as(queue, "a", 1)  # queued behind them
    found, count, cut = await queue.tenant_task_ids("queued", "a", 10)
    assert (found, count, cut) == ([*first[1:], *later], 3, False)
    assert await queue.tenant_task_ids("queued", "b", 10) == ([], 0, False)


async def test_parked_tenants_are_listed_by_name_alike_by_every_reader(queue: TaskQueue) -> None:
    """By name as the server sorts strings (Lua's `<`: its locale's collation), in the one
    script both readers use, so the CLI's list and the console's pages agree."""
    names = ["é", "a", "B", "z", "b"]
    await queue.set_tenant_caps(dict.fromkeys(names, 1))
    parked = {}
    for name in names:
        ids = await submit_as(queue, name, 2)
        parked[name] = ids[1]
    await queue.claim("w1", 20, 30)
    assert (await queue.figures()).capped == 5
    by_server = [name.decode() for name in await queue.redis.eval(
        "table.sort(ARGV) return ARGV", 0, *names)]
    assert sorted(by_server) == sorted(names)
    order = [parked[name] for name in by_server]
    assert [t.id for t in await queue.list_tasks("queued", 10)] == order
    _, rows = await task_page(queue, "queued", 0, 10, preview_bytes=10)
    assert [row.info.id for row in rows] == order


async def test_a_page_of_queued_tasks_runs_on_into_those_waiting_for_their_cap(
    queue: TaskQueue,
) -> None:
    a, b, c = await parked_behind(queue)
    pages = [await task_page(queue, "queued", offset, 2, preview_bytes=100)
             for offset in (0, 2, 4, 6)]
    assert {total for total, _ in pages} == {6}
    assert [[row.info.id for row in rows] for _, rows in pages] == [c, a, b, []]
    assert [[row.info.capped for row in rows] for _, rows in pages[:3]] == [
        [False, False], [True, True], [True, True]]
    total, rows = await task_page(queue, "queued", 1, 4, preview_bytes=100)
    assert (total, [row.info.id for row in rows]) == (6, [c[1], *a, b[0]])
    view = await task_view(queue, a[0], after=None, count=0, checkpoint_bytes=0,
                           field_bytes=100)
    assert view.info is not None and view.info.capped
    view = await task_view(queue, c[0], after=None, count=0, checkpoint_bytes=0,
                           field_bytes=100)
    assert view.info is not None and not view.info.capped


async def test_due_delayed_tasks_are_listed_as_queued_after_the_parked_ones(
    queue: TaskQueue,
) -> None:
    """The figures count them as queued (the next claim moves them in): so do the lists, or
    a pool without a worker shows queued tasks that no list holds."""
    a, b, c = await parked_behind(queue)
    due = [await queue.submit({"due": n}, delay=0.05 * (n + 1)) for n in range(2)]
    later = await queue.submit({"due": "later"}, delay=3600)

    async def both_due() -> bool:
        return (await queue.figures()).due_delayed == 2

    await eventually(both_due)
    figures = await queue.figures()
    total, rows = await task_page(queue, "queued", 0, 20, preview_bytes=10)
    assert total == figures.queued == 8
    assert [row.info.id for row in rows] == [*c, *a, *b, *due]
    assert later not in [row.info.id for row in rows]
    total, rows = await task_page(queue, "queued", 7, 5, preview_bytes=10)
    assert (total, [row.info.id for row in rows]) == (8, due[1:])


async def test_a_task_given_back_by_its_tenants_room_is_no_longer_capped(
    queue: TaskQueue,
) -> None:
    a, _, c = await parked_behind(queue)
    await queue.set_tenant_caps({"b": 1})
    listed = await queue.list_tasks("queued", 10)
    assert {t.id: t.capped for t in listed if t.tenant in ("a", "c")} == dict.fromkeys(
        [*a, *c], False)


@ONE_SERVER
async def test_a_claim_of_thousands_takes_them_all(queue: TaskQueue) -> None:
    """Lua's unpack takes a few thousand values: a claim writes its leases in slices."""
    await queue.submit_many([{"n": i} for i in range(5000)])
    assert len((await queue.claim("w1", 4500, 30)).tasks) == 4500
    assert (await queue.figures()).queued == 500


async def ids_of_the_first_claim_that_takes_any(queue: TaskQueue, worker: str,
                                                within: float = 5.0) -> list[str]:
    """The ids of the first claim that takes anything, claiming every 50 ms."""
    found: list[str] = []

    async def took() -> bool:
        found.extend(t.id for t in (await queue.claim(worker, 10, 30)).tasks)
        return bool(found)

    await eventually(took, within=within)
    return found


async def test_room_no_runs_end_reported_is_found_by_the_claims(queue: TaskQueue) -> None:
    """The tenant's only run handed back to the queue and cancelled there: no run ends, and
    the tasks parked behind it come back through a claim's look (once a second)."""
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 3)
    (run,) = (await queue.claim("w1", 3, 30)).tasks
    assert await queue.release(run, "shutting down") is FailOutcome.REQUEUED
    assert await queue.cancel(run.id) is CancelOutcome.CANCELLED
    assert await ids_of_the_first_claim_that_takes_any(queue, "w2") == [ids[1]]


@ONE_SERVER
async def test_caps_deleted_by_hand_let_the_parked_tasks_go(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 3)
    await queue.claim("w1", 3, 30)
    await redis.delete(queue.prefix + "caps")
    assert sorted(await ids_of_the_first_claim_that_takes_any(queue, "w2")) == sorted(ids[1:])


async def test_an_expired_parked_task_takes_no_room(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A run's end gives back as many live parked tasks as it has room for; the expired
    ones go back too, for the claim to end them."""
    await queue.set_tenant_caps({"a": 1})
    (run_id,) = await submit_as(queue, "a", 1)
    (run,) = (await queue.claim("w1", 1, 30)).tasks
    stale = [await queue.submit({"n": n}, tenant="a", expires=0.2) for n in range(3)]
    live = await queue.submit({"n": 9}, tenant="a")
    assert (await queue.claim("w1", 10, 30)).tasks == []
    assert (await queue.figures()).capped == 4

    async def expired() -> bool:
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        return all(info.expires_ms is not None and info.expires_ms <= now_ms
                   for info in await queue.get_many(stale))

    await eventually(expired, within=5)
    assert await queue.complete(run, "ok")
    assert [t.id for t in (await queue.claim("w1", 10, 30)).tasks] == [live]
    assert [(await queue.get(i)).state for i in stale] == ["cancelled"] * 3
    assert run_id == run.id


async def test_a_parked_task_past_its_expiry_ends_while_its_tenant_stays_at_its_cap(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """The reaper ends it, as it ends a deferred one: its producer does not wait for the
    tenant's long run to end."""
    await queue.set_tenant_caps({"a": 1})
    await submit_as(queue, "a", 1)
    await claim_one(queue, "w1")
    soon = await queue.submit({"n": 1}, tenant="a", expires=0.3)
    later = await queue.submit({"n": 2}, tenant="a")
    assert (await queue.claim("w1", 5, 30)).tasks == []
    assert await redis.zcard(queue.prefix + "parked_expiry") == 1

    async def ended() -> bool:
        await queue.reap_expired()
        info = await queue.get(soon)
        return info is not None and info.state == "cancelled"

    await eventually(ended, within=5)
    info = await queue.get(soon)
    assert info is not None and (info.error or "").startswith("expired: not started")
    assert (await queue.figures()).capped == 1
    assert await redis.zcard(queue.prefix + "parked_expiry") == 0
    assert (await queue.get(later)).state == "queued"


async def test_a_parked_task_cancelled_or_given_back_leaves_no_expiry_behind(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    await submit_as(queue, "a", 1)
    (run,) = (await queue.claim("w1", 1, 30)).tasks
    ids = [await queue.submit({"n": n}, tenant="a", expires=600) for n in range(2)]
    assert (await queue.claim("w1", 5, 30)).tasks == []
    assert await redis.zcard(queue.prefix + "parked_expiry") == 2
    assert await queue.cancel(ids[1]) is CancelOutcome.CANCELLED
    assert await queue.complete(run, "ok")
    assert await redis.zcard(queue.prefix + "parked_expiry") == 0
    assert [t.id for t in (await queue.claim("w1", 5, 30)).tasks] == [ids[0]]


async def test_cancel_waiting_leaves_the_parked_tasks_submitted_after_it(
    queue: TaskQueue,
) -> None:
    await queue.set_tenant_caps({"a": 1})
    await submit_as(queue, "a", 3)
    (first,) = (await queue.claim("w1", 5, 30)).tasks
    later = await submit_as(queue, "a", 2)
    await queue.claim("w1", 5, 30)
    assert (await queue.figures()).capped == 4
    # one call of the script, as a cancel_waiting begun before the last two submits
    done, more, *_ = await queue._run("cancel_waiting", 3, 1000, "", 0, "", "")
    assert (int(done), int(more)) == (2, 0)
    figures = await queue.figures()
    assert (figures.capped, figures.queued) == (2, 2)
    assert {(await queue.get(i)).state for i in later} == {"queued"}
    assert first.id


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
    odd = {"a": "0", "b": "x", "c": " 2", "d": "1e0", "e": "0x10", "f": "3.0", "g": "5000",
           "": "1.5"}
    await redis.hset(queue.prefix + "caps", mapping=odd)
    for tenant in "abcdefg":
        await submit_as(queue, tenant, 2)
    assert await claimed_by_tenant(queue, "w1", 14) == dict.fromkeys("abcdefg", 2)
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


async def test_a_parked_task_an_older_producers_cancel_ended_is_dropped_not_run(
    queue: TaskQueue,
) -> None:
    """A producer older than caps cancels a parked task as it did a queued one: the task
    ends cancelled, but its id stays in its tenant's parked set, and goes back to the queue
    when the tenant has room: the claim that pops it must not run an ended task."""
    await queue.set_tenant_caps({"a": 1})
    ids = await submit_as(queue, "a", 3)
    (first,) = (await queue.claim("w1", 3, 30)).tasks
    assert (await queue.figures()).capped == 2
    await queue.redis.hset(queue.task_key(ids[1]), mapping={"state": "cancelled"})
    assert await queue.complete(first, "done")
    claimed = (await queue.claim("w1", 3, 30)).tasks
    assert [task.id for task in claimed] == [ids[2]]
    info = await queue.get(ids[1])
    assert info is not None and info.state == "cancelled"
    figures = await queue.figures()
    assert (figures.queued, figures.capped, figures.in_flight) == (0, 0, 1)
