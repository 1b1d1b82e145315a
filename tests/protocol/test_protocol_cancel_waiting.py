"""Cancelling every task waiting to run at once (`cancel_waiting`, `agentpool cancel --waiting`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one

from agentpool.client import SyncClient
from agentpool.protocol import ClaimedTask, FailOutcome, TaskQueue
from agentpool.protocol.task_queue import CANCEL_WAITING_OF_PASSES


async def states(queue: TaskQueue, ids: list[str]) -> list[str]:
    infos = [await queue.get(task_id) for task_id in ids]
    return [info.state if info else "gone" for info in infos]


async def test_every_waiting_task_is_cancelled_and_running_ones_go_on(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    running = await queue.submit({"n": 0})
    task = await claim_one(queue, "w1")
    assert task.id == running
    retrying = await queue.submit({"retry": True})
    retry_run = await claim_one(queue, "w1")
    assert retry_run.id == retrying
    assert await queue.fail(retry_run, "boom", delay=3600) == FailOutcome.RETRY
    queued = [await queue.submit({"n": n}, priority=n % 10) for n in range(1, 25)]
    delayed = await queue.submit({"later": True}, delay=3600)

    assert await queue.cancel_waiting(batch=5) == 26
    assert await states(queue, [*queued, delayed, retrying]) == ["cancelled"] * 26
    info = await queue.get(queued[0])
    assert info is not None and info.error == "cancelled"
    figures = await queue.figures()
    assert (figures.queued, figures.delayed, figures.in_flight) == (0, 0, 1)
    assert figures.stats.get("cancelled") == 26
    assert await queue.complete(task, "done")  # the running task was left to finish


def after_each_call(queue: TaskQueue,
                    then: Callable[[int], Awaitable[None]]) -> None:
    """Make `then(n)` run after the queue's n-th cancel_waiting script call (from 1)."""
    real_run = queue._run
    calls = 0

    async def run(name: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        reply = await real_run(name, *args, **kwargs)
        if name == "cancel_waiting":
            calls += 1
            await then(calls)
        return reply

    queue._run = run  # type: ignore[method-assign]


async def test_tasks_submitted_after_the_call_began_are_left(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """What is cancelled is what was submitted before the call: a submit landing between its
    batches, even at a higher priority (ahead of the rest), stays queued."""
    old = [await queue.submit({"n": n}) for n in range(6)]
    later: list[str] = []

    async def submit_late(call: int) -> None:
        if call == 1:
            later.append(await queue.submit({"late": True}, priority=9))
            later.append(await queue.submit({"late": True}, delay=3600))

    after_each_call(queue, submit_late)
    assert await queue.cancel_waiting(batch=2) == 6
    assert await states(queue, old) == ["cancelled"] * 6
    assert await states(queue, later) == ["queued", "delayed"]


async def test_a_waiter_learns_its_task_was_cancelled(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({})
    waiting = asyncio.create_task(queue.wait(task_id, timeout=5))
    assert await queue.cancel_waiting() == 1
    info = await waiting
    assert info.state == "cancelled"


async def test_an_empty_queue_cancels_nothing(queue: TaskQueue) -> None:
    assert await queue.cancel_waiting() == 0


async def test_delayed_tasks_are_paged_past_the_newer_ones_in_small_calls(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Newer delayed tasks due earlier sit ahead of the old ones: each call passes over at
    most `batch` entries and the next goes on from where it stopped."""
    old = await queue.submit_many([{"n": n} for n in range(150)], delay=3600)
    newer: list[str] = []
    calls: list[int] = []

    async def submit_newer(call: int) -> None:
        calls.append(call)
        if call == 1:
            newer.extend(await queue.submit_many([{"new": n} for n in range(120)], delay=60))

    after_each_call(queue, submit_newer)
    assert await queue.cancel_waiting(batch=7) == 150
    assert len(calls) >= (150 + 120) // 7  # each removed or passed over at most 7
    assert set(await states(queue, old)) == {"cancelled"}
    assert set(await states(queue, newer)) == {"delayed"}


async def test_a_queued_id_without_its_task_is_dropped_and_not_counted(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    kept = await queue.submit({})
    gone = await queue.submit({})
    await redis.delete(queue.task_key(gone))
    assert await queue.cancel_waiting() == 1
    assert await states(queue, [kept, gone]) == ["cancelled", "gone"]
    assert (await queue.figures()).queued == 0


@pytest.mark.parametrize("batch", [0, 1.5, True])
async def test_a_batch_that_is_not_a_positive_whole_number_is_refused(
    queue: TaskQueue, batch: object,
) -> None:
    with pytest.raises(ValueError, match="batch must be a whole number of at least 1"):
        await queue.cancel_waiting(batch=batch)  # type: ignore[arg-type]


async def test_old_delayed_tasks_are_found_when_a_claim_promotes_newer_ones_meanwhile(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Newer tasks passed over at the head of the delayed set come due and a claim moves them
    out between two calls: the entries behind them shift, and a second pass finds the old
    tasks the first stepped past."""
    old = await queue.submit_many([{"n": n} for n in range(20)], delay=3600)
    newer: list[str] = []

    async def newer_then_promoted(call: int) -> None:
        if call == 1:
            newer.extend(await queue.submit_many([{"new": n} for n in range(10)], delay=0.05))
        elif call == 2:
            deadline = asyncio.get_running_loop().time() + 5
            while (await queue.figures()).due_delayed != 10:
                assert asyncio.get_running_loop().time() < deadline, "never came due"
                await asyncio.sleep(0.01)
            await queue.claim("w1", 1, 30)  # promotes the ten, leases one

    after_each_call(queue, newer_then_promoted)
    assert await queue.cancel_waiting(batch=5) == 20
    assert set(await states(queue, old)) == {"cancelled"}
    assert sorted(await states(queue, newer)) == ["queued"] * 9 + ["running"]


async def test_an_old_delayed_task_is_found_when_the_newer_one_passed_over_is_promoted(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """One newer task, due first, passed over; a claim promotes it between two calls of a
    pass that has cancelled nothing yet: the old task behind it must not be stepped past (the
    pass would end with nothing cancelled, and no other pass would follow)."""
    old = await queue.submit({"old": True}, delay=3600)
    newer: list[str] = []
    real_run = queue._run
    calls = 0

    async def run(name: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if name == "cancel_waiting":
            calls += 1
            if calls == 1:  # submitted once the call began: left, and due before the old one
                newer.append(await queue.submit({"new": True}, delay=0.05))
            elif calls == 2:  # it comes due and a claim takes it out of the delayed set
                deadline = asyncio.get_running_loop().time() + 5
                while (await queue.figures()).due_delayed != 1:
                    assert asyncio.get_running_loop().time() < deadline, "never came due"
                    await asyncio.sleep(0.01)
                await queue.claim("w1", 1, 30)
        return await real_run(name, *args, **kwargs)

    queue._run = run  # type: ignore[method-assign]
    assert await queue.cancel_waiting(batch=1) == 1
    assert calls >= 2
    assert await states(queue, [old, *newer]) == ["cancelled", "running"]


async def test_one_tenants_waiting_tasks_are_cancelled_and_the_others_left(
    queue: TaskQueue,
) -> None:
    """A customer gone: its queued tasks (those parked for its cap too), deferred, delayed and
    retrying ones are cancelled, with the tasks that run after them; its running task and its
    dead letter are left, and so is every other tenant's task and those without a tenant."""
    [retrying, dead] = [await queue.submit({"r": r}, tenant="gone") for r in range(2)]
    taken = {t.id: t for t in (await queue.claim("w2", 2, 30)).tasks}
    assert await queue.fail(taken[retrying], "later", delay=3600) == FailOutcome.RETRY
    assert await queue.fail(taken[dead], "bad", retryable=False) == FailOutcome.DEAD
    await queue.set_tenant_caps({"gone": 2})
    gone = [await queue.submit({"n": n}, tenant="gone") for n in range(6)]
    runs = (await queue.claim("w1", 6, 30)).tasks
    assert {run.id for run in runs} == set(gone[:2]), "two runs: the rest park for the cap"
    stays = [await queue.submit({"n": n}, tenant="stays") for n in range(3)]
    untenanted = await queue.submit({"plain": True})
    delayed = await queue.submit({"later": True}, tenant="gone", delay=3600)
    deferred = await queue.submit({"after": True}, tenant="gone", after=[gone[0]])
    follower = await queue.submit({"follows": True}, tenant="stays", after=[gone[5]])

    count = await queue.cancel_waiting_of("gone", batch=2)
    assert count == 7
    assert await states(queue, [*gone[2:], retrying, delayed, deferred]) == ["cancelled"] * 7
    assert await states(queue, gone[:2]) == ["running", "running"]
    assert await states(queue, [dead, *stays, untenanted]) == ["dead"] + ["queued"] * 4
    assert await states(queue, [follower]) == ["cancelled"], "ends with the task it follows"
    figures = await queue.figures()
    assert (figures.capped, figures.in_flight) == (0, 2)
    assert all([await queue.complete(run, "done") for run in runs]), "runs go on to their end"


async def test_the_tasks_without_a_tenant_are_cancelled_with_none(queue: TaskQueue) -> None:
    plain = [await queue.submit({"n": n}) for n in range(3)]
    owned = await queue.submit({"n": 9}, tenant="a")
    assert await queue.cancel_waiting_of(None) == 3
    assert await states(queue, [*plain, owned]) == ["cancelled"] * 3 + ["queued"]
    assert await queue.cancel_waiting_of("nobody") == 0


async def test_a_tenants_task_claimed_after_it_was_read_runs_on(queue: TaskQueue) -> None:
    """Between reading the waiting sets and cancelling, a worker claims one: it runs on
    (the cancel of a task found waiting is for a task still waiting)."""
    ids = [await queue.submit({"n": n}, tenant="a") for n in range(3)]
    real_run = queue._run
    claimed: list[str] = []

    async def claim_first(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "cancel" and not claimed:
            claimed.append((await claim_one(queue, "w1")).id)
        return await real_run(name, *args, **kwargs)

    queue._run = claim_first  # type: ignore[method-assign]
    assert await queue.cancel_waiting_of("a", batch=1) == 2
    assert claimed == [ids[0]]
    assert await states(queue, ids) == ["running", "cancelled", "cancelled"]
    assert await queue.redis.hget(queue.task_key(ids[0]), "cancel") is None, "not told to stop"


async def test_a_tenants_task_submitted_after_the_call_began_is_left(queue: TaskQueue) -> None:
    """Submitted as the call reads the waiting sets, it is found there, and left: what is
    cancelled is what was submitted before the call."""
    old = [await queue.submit({"n": n}, tenant="a") for n in range(2)]
    real_run = queue._run
    late: list[str] = []

    async def submit_while_reading(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tenant_page" and not late:
            late.append(await queue.submit({"late": True}, tenant="a"))
        return await real_run(name, *args, **kwargs)

    queue._run = submit_while_reading  # type: ignore[method-assign]
    assert await queue.cancel_waiting_of("a") == 2
    assert await states(queue, [*old, *late]) == ["cancelled", "cancelled", "queued"]


def test_a_blocking_client_cancels_a_tenants_waiting_tasks(redis_url: str,
                                                           queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        ids = [queue.submit({"n": n}, tenant=tenant) for n, tenant in enumerate("aab")]
        assert queue.cancel_waiting_of("a") == 2
        assert [queue.get(task_id).state for task_id in ids] == [  # type: ignore[union-attr]
            "cancelled", "cancelled", "queued"]


async def test_a_tenants_tasks_that_move_while_a_pass_reads_are_found_by_the_next(
    queue: TaskQueue,
) -> None:
    """A claim parks the capped tenant's queued tasks after the parked set was read, and a
    deferred task comes out into the queue after the queue was read: the first pass sees
    neither, the second does."""
    await queue.set_tenant_caps({"a": 1})
    first = await queue.submit({"first": True}, tenant="a")
    running = await claim_one(queue, "w1")
    assert running.id == first
    queued = [await queue.submit({"n": n}, tenant="a") for n in range(3)]
    parent = await queue.submit({"parent": True}, tenant="b")
    child = await queue.submit({"child": True}, tenant="a", after=[parent])
    real_run = queue._run
    claimed: list[ClaimedTask] = []

    async def move_while_reading(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tenant_page" and args[0] == "queued" and not claimed:
            # a claim reaches a's tasks: they park for its cap
            claimed.extend((await queue.claim("w2", 5, 30)).tasks)
            assert [task.id for task in claimed] == [parent]
            assert (await queue.figures()).capped == 3
        if name == "tenant_page" and args[0] == "deferred" and len(claimed) == 1:
            assert await queue.complete(claimed[0], "done")  # the child goes to the queue
            claimed.append(claimed[0])
        return await real_run(name, *args, **kwargs)

    queue._run = move_while_reading  # type: ignore[method-assign]
    assert await queue.cancel_waiting_of("a") == 4
    assert await states(queue, [*queued, child]) == ["cancelled"] * 4
    assert await states(queue, [first]) == ["running"]


async def test_passes_end_after_a_few_while_a_tenants_runs_keep_failing_into_retries(
    queue: TaskQueue,
) -> None:
    """Each pass finds one more of its runs come back to wait for a retry: the passes stop at
    CANCEL_WAITING_OF_PASSES, leaving the rest running (a call again takes them later)."""
    await queue.submit_many([{"n": n} for n in range(10)], tenant="a")
    runs = list((await queue.claim("w1", 10, 30)).tasks)
    real_run = queue._run
    passes = 0

    async def one_run_fails_per_pass(name: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal passes
        if name == "tenant_page" and args[0] == "queued" and args[3] == "":
            passes += 1
            assert await queue.fail(runs.pop(), "flaky", delay=3600) == FailOutcome.RETRY
        return await real_run(name, *args, **kwargs)

    queue._run = one_run_fails_per_pass  # type: ignore[method-assign]
    assert await queue.cancel_waiting_of("a") == CANCEL_WAITING_OF_PASSES
    assert passes == CANCEL_WAITING_OF_PASSES
    assert (await queue.figures()).in_flight == 10 - CANCEL_WAITING_OF_PASSES
