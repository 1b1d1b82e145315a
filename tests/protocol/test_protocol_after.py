"""Tasks that run after others (``submit(after=[...])``): deferred until every one of them has
succeeded, cancelled as soon as one ends otherwise, on a real Redis (standalone, Sentinel and
Cluster through the `queue` fixture)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from protocol_helpers import (
    claim_one,
    claim_within,
    drop_queue,
    fail_until_dead,
    queued_ids,
    task_keys,
)

from agentpool.client import SyncClient
from agentpool.protocol import (
    MAX_AFTER,
    CancelOutcome,
    ProtocolError,
    TaskNotFound,
    TaskQueue,
    new_task_id,
)


async def run(queue: TaskQueue, task_id: str, result: object = "ok") -> None:
    task = await claim_within(queue, "w1")
    assert task.id == task_id, f"claimed {task.id}, expected {task_id}"
    assert await queue.complete(task, result)


async def state(queue: TaskQueue, task_id: str) -> str:
    info = await queue.get(task_id)
    assert info is not None
    return info.state


async def test_a_task_waits_out_of_the_queue_until_the_task_it_runs_after_succeeds(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    first = await queue.submit({"step": 1})
    second = await queue.submit({"step": 2}, after=[first])
    info = await queue.get(second)
    assert info is not None and info.state == "deferred" and info.after == (first,)
    figures = await queue.figures()
    assert (figures.deferred, figures.queued) == (1, 1), "a deferred task is not runnable"
    assert await queued_ids(redis, queue) == [first]

    task = await claim_one(queue, "w1")
    assert task.id == first
    assert (await queue.claim("w2", 4, 30)).tasks == [], "nothing else may run yet"
    assert await queue.complete(task, "planned")

    assert await state(queue, second) == "queued"
    assert (await queue.figures()).deferred == 0
    await run(queue, second)
    assert await state(queue, second) == "succeeded"


async def test_the_claim_carries_the_tasks_it_runs_after(queue: TaskQueue) -> None:
    parts = await queue.submit_many([{"part": n} for n in range(2)])
    summary = await queue.submit({"summarise": True}, after=parts)
    for part in parts:
        task = await claim_one(queue, "w1")
        assert task.after == ()
        assert await queue.complete(task, part)
    task = await claim_one(queue, "w1")
    assert (task.id, task.after) == (summary, tuple(parts))
    assert await queue.results_of(task.after) == {part: part for part in parts}


async def test_a_task_after_several_runs_once_the_last_of_them_succeeds(
    queue: TaskQueue,
) -> None:
    parts = await queue.submit_many([{"part": n} for n in range(3)])
    summary = await queue.submit({"summarise": parts}, after=parts)
    for part in parts[:2]:
        await run(queue, part)
        assert await state(queue, summary) == "deferred"
    await run(queue, parts[2])
    await run(queue, summary)
    results = [i.result for i in await queue.get_many(parts)]
    assert results == ["ok", "ok", "ok"]


async def test_a_completion_repeated_in_one_call_finishes_the_task_once(
    queue: TaskQueue,
) -> None:
    """The same task twice in one group commit: one end recorded, so the task after it and
    another still waits for that other, and `succeeded` counts one."""
    first, other = await queue.submit_many([{"part": 1}, {"part": 2}])
    summary = await queue.submit({"summarise": True}, after=[first, other])
    task = await claim_within(queue, "w1")
    assert task.id == first
    assert await queue.complete_many([(task, "ok"), (task, "ok")]) == [True, True]
    assert await state(queue, summary) == "deferred"
    assert (await queue.figures()).stats["succeeded"] == 1


async def test_a_dead_lettered_task_cancels_the_chain_after_it(queue: TaskQueue) -> None:
    first = await queue.submit({"step": 1}, max_attempts=2)
    second = await queue.submit({"step": 2}, after=[first])
    third = await queue.submit({"step": 3}, after=[second])
    unrelated = await queue.submit({"other": True})
    await fail_until_dead(queue, "w1", first)

    for task_id, before in ((second, first), (third, second)):
        info = await queue.get(task_id)
        assert info is not None and info.state == "cancelled" and info.attempts == 0
        assert info.error == f"cancelled: the task {before} it runs after ended " + (
            "dead" if before == first else "cancelled")
    figures = await queue.figures()
    assert (figures.deferred, figures.stats.get("cancelled")) == (0, 2)
    assert (await claim_one(queue, "w1")).id == unrelated, "the others still run"


async def test_a_cancelled_or_expired_task_cancels_the_tasks_after_it(
    queue: TaskQueue,
) -> None:
    cancelled = await queue.submit({"n": 1})
    expiring = await queue.submit({"n": 2}, expires=0.05)
    after_cancelled = await queue.submit({"n": 3}, after=[cancelled])
    after_expiring = await queue.submit({"n": 4}, after=[expiring])
    assert await queue.cancel(cancelled) is CancelOutcome.CANCELLED
    info = await queue.get(after_cancelled)
    assert info is not None and info.state == "cancelled"
    assert info.error == f"cancelled: the task {cancelled} it runs after ended cancelled"

    await asyncio.sleep(0.1)
    assert (await queue.claim("w1", 4, 30)).tasks == [], "the expired task does not run"
    info = await queue.wait(after_expiring, timeout=3)
    assert info.state == "cancelled"
    assert info.error == f"cancelled: the task {expiring} it runs after ended expired"


async def test_a_waiting_producer_hears_of_a_task_ended_by_the_one_before_it(
    queue: TaskQueue,
) -> None:
    """Told by the finish the cascade announces: the wait's own re-read comes after a second
    of silence, later than its timeout here."""
    first = await queue.submit({"n": 1})
    second = await queue.submit({"n": 2}, after=[first])
    waiting = asyncio.create_task(queue.wait(second, timeout=0.9))
    await asyncio.sleep(0.05)
    await queue.cancel(first)
    info = await waiting
    assert info.state == "cancelled" and first in (info.error or "")


async def test_tasks_finished_before_the_submit_count_as_they_ended(queue: TaskQueue) -> None:
    done = await queue.submit({"n": 1})
    await run(queue, done)
    dead = await queue.submit({"n": 2}, max_attempts=1)
    await fail_until_dead(queue, "w1", dead)

    ready = await queue.submit({"n": 3}, after=[done])
    assert await state(queue, ready) == "queued", "its only dependency had succeeded"
    doomed = await queue.submit({"n": 4}, after=[done, dead])
    info = await queue.get(doomed)
    assert info is not None and info.state == "cancelled" and info.after == (done, dead)
    assert info.error == f"cancelled: the task {dead} it runs after ended dead"
    await run(queue, ready)


async def test_an_unknown_task_to_run_after_refuses_the_submit_and_stores_nothing(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    known = await queue.submit({"n": 1})
    before = await task_keys(redis, queue)
    seq = await redis.get(queue.prefix + "seq")
    with pytest.raises(TaskNotFound, match=f"after: no task nope in queue {queue.name}"):
        await queue.submit({"n": 2}, after=[known, "nope"], idempotency_key="k1")
    assert await task_keys(redis, queue) == before
    assert await redis.get(queue.prefix + "seq") == seq, "no submit number was taken"
    assert not await redis.exists(queue.prefix + "idem:k1"), "the key names no task"
    assert await redis.get(queue.prefix + f"next:{known}") is None


async def test_concurrent_submits_refuse_only_the_one_with_an_unknown_dependency(
    queue: TaskQueue,
) -> None:
    """Concurrent submits go to Redis in one call (agentpool.coalesce): the refusal is that
    submit's own."""
    parent = await queue.submit({"n": 0})
    outcomes = await asyncio.gather(
        *(queue.submit({"n": n}, after=[parent if n % 2 else "missing"]) for n in range(1, 7)),
        return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, TaskNotFound)]
    accepted = [o for o in outcomes if isinstance(o, str)]
    assert (len(refused), len(accepted)) == (3, 3)
    assert [await state(queue, i) for i in accepted] == ["deferred"] * 3


async def test_submit_many_puts_a_fan_out_behind_the_same_tasks(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    plan = await queue.submit({"plan": True})
    steps = await queue.submit_many([{"step": n} for n in range(7)], after=[plan], chunk=3)
    assert [await state(queue, step) for step in steps] == ["deferred"] * 7
    assert await queued_ids(redis, queue) == [plan]
    await run(queue, plan)
    assert await queued_ids(redis, queue) == steps, "released in submit order"
    task = await claim_one(queue, "w1")
    assert (task.id, task.after) == (steps[0], (plan,))


async def test_submit_many_after_an_unknown_task_stores_nothing(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    known = await queue.submit({"n": 0})
    before = await task_keys(redis, queue)
    with pytest.raises(TaskNotFound, match=r"after: no task nope .*nothing was submitted"):
        await queue.submit_many([{"n": n} for n in range(5)], after=[known, "nope"], chunk=2)
    assert await task_keys(redis, queue) == before
    assert await redis.get(queue.prefix + f"next:{known}") is None


async def test_submit_many_says_how_many_went_in_when_a_task_before_vanishes_midway(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A task named in `after` whose record expires between two chunks (its result TTL)."""
    gone = await queue.submit({"n": 0})
    sent = 0
    original = queue.redis.evalsha

    async def chunk_then_expiry(*args: object) -> object:
        nonlocal sent
        sent += 1
        if sent == 2:
            await redis.delete(queue.task_key(gone))
        return await original(*args)  # type: ignore[arg-type]

    queue.redis.evalsha = chunk_then_expiry  # type: ignore[method-assign]
    went_in = "2 tasks were submitted before it was found gone"
    with pytest.raises(TaskNotFound, match=went_in) as raised:
        await queue.submit_many([{"n": n} for n in range(5)], after=[gone], chunk=2)
    queue.redis.evalsha = original  # type: ignore[method-assign]
    assert len(raised.value.submitted) == 2
    infos = await queue.get_many(raised.value.submitted)
    assert [(i.payload, i.state) for i in infos] == [({"n": 0}, "deferred"), ({"n": 1}, "deferred")]


async def test_a_fan_out_submitted_again_under_its_keys_is_not_doubled(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Known keys answer before the tasks they would run after are looked up (as a single
    submit's key does), so a fan-out retried after its step's record is gone gets its ids
    back; a key not seen yet behind a task the queue does not know stores nothing."""
    plan = await queue.submit("plan")
    keys = ["step-1", "step-2"]
    steps = await queue.submit_many(["s1", "s2"], after=[plan], idempotency_keys=keys)
    assert await queue.submit_many(["s1", "s2"], after=[plan], idempotency_keys=keys) == steps
    assert await redis.get(queue.prefix + f"next:{plan}") == f"{steps[0]},{steps[1]},".encode()
    await redis.delete(queue.task_key(plan))
    assert await queue.submit_many(["s1", "s2"], after=[plan], idempotency_keys=keys) == steps
    before = await task_keys(redis, queue)
    with pytest.raises(TaskNotFound, match=f"after: no task {plan} .*nothing was submitted"):
        await queue.submit_many(["s1", "s3"], after=[plan], idempotency_keys=["step-1", "step-3"])
    with pytest.raises(TaskNotFound, match="nothing was submitted") as raised:
        await queue.submit_many(["s1", "s2", "s3"], after=[plan],
                                idempotency_keys=["step-1", "step-2", None], chunk=2)
    assert raised.value.submitted == [], "the first chunk's tasks were there before the call"
    assert await task_keys(redis, queue) == before


def test_the_sync_client_submits_many_after(redis_url: str, queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        first = queue.submit({"n": 1})
        rest = queue.submit_many([{"n": 2}, {"n": 3}], after=[first],
                                 idempotency_keys=iter(["n-2", None]))
        assert [queue.get(i).state for i in rest] == ["deferred"] * 2  # type: ignore[union-attr]
        assert queue.submit_many([{"n": 2}], after=[first], idempotency_keys=["n-2"]) == rest[:1]
        with pytest.raises(ProtocolError, match="one key per payload, not one string"):
            queue.submit_many(["x", "y"], idempotency_keys="ab")
        with pytest.raises(TaskNotFound):
            queue.submit_many([{"n": 4}], after=["unknown"])


async def test_a_delay_counts_from_the_submit(queue: TaskQueue) -> None:
    first = await queue.submit({"n": 1})
    soon = await queue.submit({"n": 2}, after=[first], delay=0.05)
    later = await queue.submit({"n": 3}, after=[first], delay=600)
    await asyncio.sleep(0.1)
    await run(queue, first)
    assert await state(queue, later) == "delayed", "its delay has not passed"
    await run(queue, soon)
    info = await queue.get(later)
    assert info is not None and info.state == "delayed"


async def test_a_cancelled_deferred_task_stays_cancelled_when_its_dependency_succeeds(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    first = await queue.submit({"n": 1})
    second = await queue.submit({"n": 2}, after=[first])
    assert await queue.cancel(second) is CancelOutcome.CANCELLED
    assert (await queue.figures()).deferred == 0
    await run(queue, first)
    assert await state(queue, second) == "cancelled"
    assert await queued_ids(redis, queue) == []


async def test_cancel_waiting_takes_deferred_tasks_too(queue: TaskQueue) -> None:
    first = await queue.submit({"n": 1})
    chain = [await queue.submit({"n": 2}, after=[first])]
    chain.append(await queue.submit({"n": 3}, after=[chain[0]]))
    fan = await queue.submit({"n": 4}, after=[first, chain[0]])
    assert await queue.cancel_waiting() == 4
    states = {i.id: i.state for i in await queue.get_many([first, *chain, fan])}
    assert set(states.values()) == {"cancelled"}
    assert (await queue.figures()).deferred == 0


async def test_a_submit_sent_twice_is_released_once(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """The same submit reaching Redis twice (its reply lost) leaves the first as it is."""
    first = await queue.submit({"n": 1})
    args = queue._submit_args({"n": 2}, 0, 0, None, None, after=[first])
    for _ in range(2):
        await queue._run("submit", *args)
    assert await redis.get(queue.prefix + f"next:{first}") == f"{args[0]},".encode()
    await run(queue, first)
    await run(queue, args[0])


@pytest.mark.parametrize(("after", "message"), [
    (["a,b"], "after takes task ids, got 'a,b'"),
    ([""], "after takes task ids, got ''"),
    ([7], "after takes task ids, got 7"),
    ([f"t{n}" for n in range(MAX_AFTER + 1)],
     f"a task may run after at most {MAX_AFTER} tasks, got {MAX_AFTER + 1}"),
])
async def test_after_takes_task_ids(queue: TaskQueue, after: list[object],
                                    message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        await queue.submit({"n": 1}, after=after)  # type: ignore[arg-type]


async def test_one_id_and_repeated_ids_count_once(queue: TaskQueue) -> None:
    first = await queue.submit({"n": 1})
    second = await queue.submit({"n": 2}, after=first)
    third = await queue.submit({"n": 3}, after=[first, first, second])
    info = await queue.get(third)
    assert info is not None and info.after == (first, second)
    await run(queue, first)
    await run(queue, second)
    await run(queue, third)


def test_the_sync_client_submits_after(redis_url: str, queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        first = queue.submit({"n": 1})
        second = queue.submit({"n": 2}, after=[first])
        info = queue.get(second)
        assert info is not None and info.state == "deferred"
        with pytest.raises(TaskNotFound):
            queue.submit({"n": 3}, after=["unknown"])


async def test_a_diamond_ends_each_task_once(queue: TaskQueue) -> None:
    """A task reached by two paths of the cascade ends once (one final state, counted once)."""
    first = await queue.submit({"n": 0})
    left = await queue.submit({"left": 1}, after=[first])
    right = await queue.submit({"right": 1}, after=[first])
    joined = await queue.submit({"join": 1}, after=[left, right])
    last = await queue.submit({"last": 1}, after=[first, joined, left])
    await fail_until_dead(queue, "w1", first)
    infos = await queue.get_many([left, right, joined, last])
    assert {i.state for i in infos} == {"cancelled"}
    figures = await queue.figures()
    assert (figures.deferred, figures.stats.get("cancelled")) == (0, 4)


@pytest.mark.parametrize("redis_mode", ["standalone"])
async def test_a_chain_deeper_than_lua_calls_go_ends_in_one_step(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Lua stops a recursion about 20,000 calls deep (a script error, its earlier writes
    kept): the cascade is a list, so a chain of 21,000 ends whole. Standalone only: the chain
    is built in one pipeline of submits, each after the one before."""
    ids = [new_task_id() for _ in range(21_000)]
    script = queue._script("submit")
    async with redis.pipeline(transaction=False) as pipe:
        for n, task_id in enumerate(ids):
            args = queue._submit_args({"n": n}, 0, 0, None, None,
                                      after=[ids[n - 1]] if n else None)
            args[0] = task_id
            await script(keys=[queue.prefix + "queued"], args=[queue.prefix, *args], client=pipe)
        await pipe.execute()
    assert (await queue.figures()).deferred == len(ids) - 1
    assert await queue.cancel(ids[0]) is CancelOutcome.CANCELLED
    figures = await queue.figures()
    assert (figures.deferred, figures.stats.get("cancelled")) == (0, len(ids))
    info = await queue.get(ids[-1])
    assert info is not None and info.error == (
        f"cancelled: the task {ids[-2]} it runs after ended cancelled")
    await drop_queue(redis, queue)


async def test_cancel_waiting_ends_a_deferred_chain_once_each(queue: TaskQueue) -> None:
    """Deferred tasks after a running one: cancelling the first ends the next with it, and
    the pass that reaches the next leaves it as it ended."""
    running = await queue.submit({"n": 0})
    await claim_one(queue, "w1")
    first = await queue.submit({"n": 1}, after=[running])
    second = await queue.submit({"n": 2}, after=[first])
    assert await queue.cancel_waiting() == 2
    info = await queue.get(second)
    assert info is not None
    assert info.error == f"cancelled: the task {first} it runs after ended cancelled"
    assert (await queue.figures()).stats.get("cancelled") == 2


async def test_a_dead_task_requeued_releases_the_tasks_submitted_after_it_later(
    queue: TaskQueue,
) -> None:
    """A dead task is kept until purged, and so is the list of the tasks after it: one
    requeued from the dead letters and then completed, later than the result TTL, releases
    the tasks submitted after it meanwhile, and those its death had cancelled."""
    await queue.configure(result_ttl=1)
    first = await queue.submit({"n": 1}, max_attempts=1)
    early = await queue.submit({"n": 2}, after=[first])
    await fail_until_dead(queue, "w1", first)
    assert await queue.requeue_dead([first]) == 1
    late = await queue.submit({"n": 3}, after=[first])
    await asyncio.sleep(1.2)  # past the result TTL of the first end
    await run(queue, first)
    assert (await state(queue, early), await state(queue, late)) == ("queued", "queued")


async def test_an_idempotent_submit_sent_again_finds_its_task_when_the_one_before_is_gone(
    queue: TaskQueue,
) -> None:
    await queue.configure(result_ttl=1)
    first = await queue.submit({"n": 1})
    second = await queue.submit({"n": 2}, after=[first], idempotency_key="step-2")
    await run(queue, first)
    await asyncio.sleep(1.2)  # the first task's record is gone; the second waits in the queue
    assert await queue.get(first) is None
    assert await queue.submit({"n": 2}, after=[first], idempotency_key="step-2") == second


async def test_a_known_idempotency_key_answers_before_the_tasks_it_would_run_after(
    queue: TaskQueue,
) -> None:
    first = await queue.submit({"n": 1})
    second = await queue.submit({"n": 2}, after=[first], idempotency_key="k")
    assert await queue.submit({"n": 2}, after=["gone"], idempotency_key="k") == second


async def ended_as_an_older_worker_ends_it(queue: TaskQueue, task_id: str, state: str) -> None:
    """What a worker older than `after=` leaves when it ends a run it holds: the task's state,
    and nothing done for the tasks that run after it."""
    task = await claim_within(queue, "old-worker")
    assert task.id == task_id
    await queue.redis.hset(queue.task_key(task_id), mapping={"state": state, "finished": 1})
    await queue.redis.zrem(queue.prefix + "leases", task_id)
    await queue.redis.srem(queue.prefix + "owner:old-worker", task_id)


@pytest.mark.parametrize(("ended", "then"), [("succeeded", "queued"), ("dead", "cancelled")])
async def test_tasks_an_older_worker_left_deferred_are_released_by_a_reap(
    queue: TaskQueue, ended: str, then: str,
) -> None:
    """During an upgrade, a worker not rolled yet ends a task others run after: the next reap
    releases them as the end would have (or ends them with it). A task that also runs after
    one still going waits for it (a reap reads its parents up to the first one going), and
    is released, or ended, by the reap after that one's end."""
    parent = await queue.submit({"parent": True})
    other = await queue.submit({"other": True})
    after_parent = await queue.submit({"child": True}, after=[parent])
    after_both = await queue.submit({"child": 2}, after=[other, parent])
    await ended_as_an_older_worker_ends_it(queue, parent, ended)
    assert await state(queue, after_parent) == "deferred"
    await queue.reap_expired()
    assert await state(queue, after_parent) == then
    assert await state(queue, after_both) == "deferred"
    await run(queue, other)
    await queue.reap_expired()
    assert await state(queue, after_both) == then
    if ended == "succeeded":
        await run(queue, after_parent)
        await run(queue, after_both)
    else:
        info = await queue.get(after_parent)
        assert info is not None and info.error == (
            f"cancelled: the task {parent} it runs after ended dead")
