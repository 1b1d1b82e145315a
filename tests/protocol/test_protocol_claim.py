"""Claiming: one round trip, fencing tokens, fenced acks, drains and concurrent claimers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from protocol_helpers import RoundTrips, claim_one, queued_ids
from redis.asyncio.cluster import RedisCluster

from agentpool.connection import LeanConnection, is_cluster, redis_from_url
from agentpool.protocol import ClaimedTask, FailOutcome, TaskQueue, WorkerInfo


async def test_claim_and_ack_take_one_round_trip_each(
    queue: TaskQueue, round_trips: RoundTrips
) -> None:
    for i in range(5):
        await queue.submit(i)
    warm = await claim_one(queue, "w:1")  # loads the scripts
    await queue.complete(warm, None)
    warm = await claim_one(queue, "w:1")
    await queue.fail(warm, "warm-up", delay=0)

    round_trips.reset()
    batch = await queue.claim("w:1", 3, 30)
    assert len(batch.tasks) == 3
    assert round_trips.commands == ["EVALSHA"]

    round_trips.reset()
    assert await queue.complete(batch.tasks[0], "ok")
    assert round_trips.commands == ["EVALSHA"]

    round_trips.reset()
    assert await queue.fail(batch.tasks[1], "boom", delay=0) == FailOutcome.RETRY
    assert round_trips.commands == ["EVALSHA"]


def counter(token: str) -> int:
    """The queue's fence counter in a token (after the claim's random prefix)."""
    return int(token.rpartition("-")[2])


async def test_fencing_tokens_increase_with_every_claim(queue: TaskQueue) -> None:
    for i in range(4):
        await queue.submit(i)
    batch = await queue.claim("w:1", 3, 30)
    tokens = [counter(t.token) for t in batch.tasks]
    assert tokens == sorted(set(tokens))

    await queue.requeue_owner("w:1")
    again = await queue.claim("w:2", 4, 30)
    assert len(again.tasks) == 4
    assert min(counter(t.token) for t in again.tasks) > max(tokens)


async def test_a_claim_lost_in_a_failover_gets_no_token_of_the_next_claim(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    """A failover can lose a claim the old primary acknowledged: the new primary has the task
    queued and the fence counter as it was before. The next claim must not hand out the lost
    claim's token, or the lost claim's holder could complete the task in the new holder's name."""
    task_id = await queue.submit("job")
    before = await redis.dump(queue.task_key(task_id))
    lost = await claim_one(queue, "pod-a:1", lease=30)
    # The new primary's view: the claim never happened.
    await redis.restore(queue.task_key(task_id), 0, before, replace=True)
    await redis.zrem(queue.prefix + "leases", task_id)
    await redis.srem(queue.prefix + "owner:pod-a:1", task_id)
    await redis.zadd(queue.prefix + "queued", {task_id: 0})
    await redis.decr(queue.prefix + "fence")
    holder = await claim_one(queue, "pod-b:1", lease=30)
    assert holder.id == task_id and counter(holder.token) == counter(lost.token)
    assert holder.token != lost.token
    assert await queue.complete(lost, "from the lost claim") is False
    assert await queue.complete(holder, "from the holder") is True
    info = await queue.get(task_id)
    assert info is not None and info.result == "from the holder"


async def test_old_holder_cannot_complete_or_fail_after_reclaim(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    task_id = await queue.submit("job")
    zombie = await claim_one(queue, "pod-a:old", lease=30)
    await queue.requeue_owner("pod-a:old")
    holder = await claim_one(queue, "pod-b:new", lease=30)
    assert holder.id == task_id
    assert counter(holder.token) > counter(zombie.token)
    lease_before = await redis.zscore(queue.prefix + "leases", task_id)

    assert await queue.complete(zombie, "zombie result") is False
    assert await queue.fail(zombie, "zombie error") == FailOutcome.STALE
    assert await queue.fail(zombie, "zombie error", retryable=False) == FailOutcome.STALE
    assert await queue.release(zombie, "zombie release") == FailOutcome.STALE
    assert await queue.cancelled(zombie) == FailOutcome.STALE
    beat = await queue.heartbeat(WorkerInfo("pod-a", "old", 1), {task_id: zombie.token}, 600)
    assert beat.lost == [task_id]

    info = await queue.get(task_id)
    assert info is not None
    assert (info.state, info.owner, info.result, info.attempts) == (
        "running", "pod-b:new", None, 2)
    assert await redis.zscore(queue.prefix + "leases", task_id) == lease_before
    assert await queue.held_by("pod-b:new") == {task_id}

    assert await queue.complete(holder, "real result") is True
    assert await queue.complete(zombie, "zombie result") is False
    done = await queue.get(task_id)
    assert done is not None and (done.state, done.result) == ("succeeded", "real result")


async def test_many_concurrent_claimers_get_every_task_exactly_once(
    redis_url: str, queue_name: str, queue: TaskQueue
) -> None:
    submitted = set(await queue.submit_many(range(300)))
    clients = [redis_from_url(redis_url) for _ in range(20)]
    try:
        async def claimer(n: int, client: aioredis.Redis) -> list[ClaimedTask]:
            mine = TaskQueue(client, queue_name)
            got: list[ClaimedTask] = []
            for _ in range(300):
                batch = (await mine.claim(f"pod-{n}:i", 2, 30)).tasks
                if not batch:
                    return got
                got.extend(batch)
                await asyncio.sleep(0)
            raise AssertionError(f"claimer {n} never saw an empty queue")

        results = await asyncio.gather(*(claimer(n, c) for n, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.aclose()
    claimed = [t for got in results for t in got]
    ids = [t.id for t in claimed]
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == submitted
    assert len({t.token for t in claimed}) == 300
    assert sum(1 for got in results if got) > 1


async def test_drain_request_stops_that_pods_claims_and_is_reported(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    for i in range(4):
        await queue.submit(i)
    await queue.request_drain("pod-a")
    assert (await queue.claim("pod-a:i1", 5, 30)).tasks == []
    assert (await queue.claim("pod-a:i2", 5, 30)).tasks == []
    assert len(await queued_ids(redis, queue)) == 4

    drained = await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
    other = await queue.heartbeat(WorkerInfo("pod-ab", "i1", 4), {}, 30)
    assert drained.drain_requested is True
    assert other.drain_requested is False
    await claim_one(queue, "pod-ab:i1")

    await queue.clear_drain("pod-a")
    assert (await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)).drain_requested is False
    await claim_one(queue, "pod-a:i1")


async def test_drain_request_for_one_instance_spares_the_others(queue: TaskQueue) -> None:
    for i in range(2):
        await queue.submit(i)
    await queue.request_drain("pod-a:old")
    assert (await queue.claim("pod-a:old", 5, 30)).tasks == []
    assert (await queue.heartbeat(WorkerInfo("pod-a", "old", 4), {}, 30)).drain_requested
    assert not (await queue.heartbeat(WorkerInfo("pod-a", "new", 4), {}, 30)).drain_requested
    assert len((await queue.claim("pod-a:new", 5, 30)).tasks) == 2


async def test_a_pods_requeue_clears_its_drain_request_unless_its_worker_still_runs(
    queue: TaskQueue,
) -> None:
    """A pod past its end whose worker heart-beats on: what it held goes back, and it must
    not claim it again (each time an attempt spent)."""
    for i in range(3):
        await queue.submit(i)
    await claim_one(queue, "pod-a:i1")
    await queue.request_drain("pod-a")
    assert (await queue.requeue_pod("pod-a", reason="pod deleted", keep_drain=True)).requeued == 1
    assert "pod-a" in await queue.drain_requests()
    assert (await queue.claim("pod-a:i1", 5, 30)).tasks == []
    await queue.requeue_pod("pod-a", reason="pod no longer exists")
    assert "pod-a" not in await queue.drain_requests()


async def test_release_returns_a_task_without_spending_an_attempt(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    task_id = await queue.submit("job", max_attempts=1)
    for _ in range(3):
        task = await claim_one(queue, "pod-a:i1")
        assert task.attempts == 1
        assert await queue.release(task, "draining") == FailOutcome.REQUEUED
        info = await queue.get(task_id)
        assert info is not None and (info.state, info.attempts) == ("queued", 0)
        assert await queued_ids(redis, queue) == [task_id]
        assert await queue.held_by("pod-a:i1") == set()
    task = await claim_one(queue, "pod-a:i1")
    assert await queue.fail(task, "real failure") == FailOutcome.DEAD


async def test_wake_up_signals_one_per_idle_spell_and_passed_on_by_a_full_claim(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    """A submit signals only into an empty list; a claim that leaves tasks behind passes one
    signal on, and the claim that empties the queue drops what is left."""
    wake = queue.prefix + "wake"
    await queue.submit("a")
    await queue.submit("b")
    await queue.submit_many(["c", "d"])
    assert await redis.llen(wake) == 1
    first = await queue.wait_and_claim("w:1", 1, 30, timeout=1)
    assert (len(first.tasks), first.queued_left) == (1, 3)
    assert await redis.llen(wake) == 1  # three left: the next idle worker is woken
    rest = await queue.claim("w:1", 10, 30)
    assert (len(rest.tasks), rest.queued_left) == (3, 0)
    assert await redis.llen(wake) == 0


@pytest.fixture
async def waiter(redis_url: str, queue_name: str) -> AsyncIterator[TaskQueue]:
    """The queue on a client of its own, as a worker waits (a blocked connection whose reads
    outlast the longest wait)."""
    client = redis_from_url(redis_url, socket_timeout=30)
    yield TaskQueue(client, queue_name)
    await client.aclose()


async def test_a_wait_and_its_claim_take_one_round_trip(
    queue: TaskQueue, waiter: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    await waiter.wait_and_claim("w:1", 1, 30, timeout=0.01)  # loads the script, learns slots
    ids = [await queue.submit(i) for i in range(3)]
    sends: list[object] = []
    send = LeanConnection.send_packed_command

    async def counting(self: LeanConnection, *args: Any, **kwargs: Any) -> None:
        if b"SENTINEL" not in b"".join(args[0])[:20]:  # a sentinel asked for the primary
            sends.append(args[0])
        await send(self, *args, **kwargs)

    monkeypatch.setattr(LeanConnection, "send_packed_command", counting)
    batch = await waiter.wait_and_claim("w:1", 5, 30, timeout=1)
    assert sorted(t.id for t in batch.tasks) == sorted(ids)
    assert len(sends) == 1


async def test_a_submit_during_a_wait_ends_it_with_the_task_claimed(
    queue: TaskQueue, waiter: TaskQueue
) -> None:
    waiting = asyncio.create_task(waiter.wait_and_claim("w:1", 4, 30, timeout=20))
    task_id = await queue.submit("now")
    async with asyncio.timeout(10):
        batch = await waiting
    assert [t.id for t in batch.tasks] == [task_id]
    info = await queue.get(task_id)
    assert info is not None and info.state == "running"
    assert await queue.held_by("w:1") == {task_id}


async def test_a_wait_that_times_out_still_claims_delayed_tasks_now_due(
    queue: TaskQueue, waiter: TaskQueue
) -> None:
    # Due in 1 s: long enough that a stalled machine does not make it due before the first
    # wait (at 0.2 s one stall of half a second did).
    task_id = await queue.submit("later", delay=1.0)
    first = await waiter.wait_and_claim("w:1", 4, 30, timeout=0.01)
    assert first.tasks == [] and first.next_due_in is not None
    batch = await waiter.wait_and_claim("w:1", 4, 30, timeout=first.next_due_in + 0.05)
    assert [t.id for t in batch.tasks] == [task_id]


async def test_a_wait_claims_after_the_server_forgot_the_script(
    redis: aioredis.Redis, queue: TaskQueue, waiter: TaskQueue
) -> None:
    await waiter.wait_and_claim("w:1", 1, 30, timeout=0.01)
    task_id = await queue.submit("after a restart")
    await redis.script_flush()
    batch = await waiter.wait_and_claim("w:1", 4, 30, timeout=1)
    assert [t.id for t in batch.tasks] == [task_id]


async def test_a_cancelled_wait_leaves_its_client_usable_and_claims_nothing(
    queue: TaskQueue, waiter: TaskQueue
) -> None:
    """Cancelling a blocked wait must not leave its reply behind on a pooled connection, where
    the next call would read it as its own."""
    waiting = asyncio.create_task(waiter.wait_and_claim("w:1", 4, 30, timeout=20))
    await blocked_on_the_server(queue.redis)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await queue.held_by("w:1") == set()
    task_id = await queue.submit("next")
    batch = await waiter.wait_and_claim("w:1", 4, 30, timeout=1)
    assert [t.id for t in batch.tasks] == [task_id]


async def blocked_on_the_server(redis: aioredis.Redis) -> None:
    """Wait until a client is blocked in a command on the server (or a cluster's nodes)."""
    async with asyncio.timeout(10):
        while True:
            if is_cluster(redis):
                info: Any = await redis.info("clients", target_nodes=RedisCluster.PRIMARIES)
                nodes = list(info.values())
            else:
                nodes = [await redis.info("clients")]
            if sum(int(node.get("blocked_clients", 0)) for node in nodes) > 0:
                return
            await asyncio.sleep(0.01)


async def test_a_task_record_without_payload_goes_to_the_dead_letters_not_nowhere(
    queue: TaskQueue,
) -> None:
    """A record written behind the protocol's back (no payload, no attempts) cannot run; a
    claim takes it off the queue, so it must end where a person finds it, with why."""
    broken = await queue.submit({"n": 1})
    await queue.redis.hdel(queue.prefix + "t:" + broken, "payload", "attempts")
    fine = await queue.submit({"n": 2})
    batch = await queue.claim("pod-a:i1", 2, 30)
    assert [task.id for task in batch.tasks] == [fine]
    info = await queue.get(broken)
    assert info is not None and info.state == "dead"
    assert info.error == ("the task record has no payload (written outside the agentpool "
                          "protocol)")
    assert [t.id for t in await queue.dead_letters()] == [broken]
    figures = await queue.figures()
    assert (figures.queued, figures.in_flight, figures.dead) == (0, 1, 1)
