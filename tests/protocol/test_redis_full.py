"""A full Redis (maxmemory reached, maxmemory-policy noeviction), on a real redis-server.

Redis then refuses a script's first write if that command may grow memory, and lets a script
that has written go on. The protocol chooses per script by its first write: submits and claims
are refused with nothing written (no run starts: each adds its result), task events and
checkpoints too; what takes runs in progress to their end (heartbeats, completions, failures,
releases, cancels, reaps, requeues, rate-limit grants) goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ResponseError

from agentpool.client import Client, SyncClient
from agentpool.protocol import (
    CancelOutcome,
    ClaimedTask,
    FailOutcome,
    RunEvents,
    TaskQueue,
    WorkerInfo,
    full_among,
)
from agentpool.protocol.replies import claim_batch
from agentpool.ratelimit import LimitConfig, RateLimiter
from agentpool.redis_errors import TASK_NOT_STORED, TASKS_NOT_STORED, RedisFull, redis_full
from agentpool.redis_server import RedisServer

LEASE = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=("--maxmemory-policy", "noeviction")) as server:
        yield server


class Memory:
    """Makes the server full and frees it again, through its admin connection."""

    def __init__(self, server: RedisServer) -> None:
        self.admin = redis.Redis.from_url(server.url)

    def fill(self) -> None:
        used = int(self.admin.info("memory")["used_memory"])
        self.admin.config_set("maxmemory", str(used - 200_000))

    def free(self) -> None:
        self.admin.config_set("maxmemory", "0")

    def snapshot(self, queue: str) -> dict[bytes, Any]:
        """Every key of the queue with its value (a stream by its length)."""
        r = self.admin
        values: dict[bytes, Any] = {}
        for key in r.scan_iter(f"ap:{{{queue}}}:*"):
            kind = r.type(key).decode()
            values[key] = {
                "hash": r.hgetall, "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
                "set": lambda k: sorted(r.smembers(k)), "list": lambda k: r.lrange(k, 0, -1),
                "string": r.get, "stream": r.xlen,
            }[kind](key)
        return values


@pytest.fixture
async def full(server: RedisServer) -> AsyncIterator[Memory]:
    memory = Memory(server)
    try:
        yield memory
    finally:
        memory.free()
        memory.admin.close()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()


async def held_tasks(queue: TaskQueue, worker: WorkerInfo, n: int) -> list[ClaimedTask]:
    await queue.submit_many([{"n": i} for i in range(n)])
    tasks = (await queue.claim(worker.worker_id, n, LEASE)).tasks
    assert len(tasks) == n
    return tasks


async def refused_and_nothing_written(full: Memory, queue: str,
                                      call: Callable[[], Awaitable[Any]]) -> None:
    before = full.snapshot(queue)
    with pytest.raises(OutOfMemoryError):
        await call()
    assert full.snapshot(queue) == before


async def test_submits_claims_events_and_checkpoints_are_refused_with_nothing_written(
    full: Memory, client: aioredis.Redis,
) -> None:
    queue = TaskQueue(client, "full-refused")
    worker = WorkerInfo(pod="p1", instance="i1", concurrency=4, state="running")
    [running] = await held_tasks(queue, worker, 1)
    await queue.submit({"waiting": True})
    full.fill()
    refused = {
        "submit": lambda: queue.submit({"x": 1}),
        "submit_many": lambda: queue.submit_many([1, 2]),
        "claim": lambda: queue.claim(worker.worker_id, 1, LEASE),
        "events": lambda: queue.record(
            [RunEvents(running.id, 1, [("log", '{"a": 1}')], running.token)], []),
        "checkpoint": lambda: queue.checkpoint(running, '{"step": 1}'),
    }
    for name, call in refused.items():
        try:
            await refused_and_nothing_written(full, queue.name, call)
        except BaseException as error:
            raise AssertionError(f"{name}: {error!r}") from error
    full.free()
    assert len((await queue.claim(worker.worker_id, 1, LEASE)).tasks) == 1


async def test_a_claim_sent_again_is_answered_on_a_full_redis_and_writes_nothing(
    full: Memory, client: aioredis.Redis,
) -> None:
    """Its first send leased the tasks and its reply was lost: refused now, they would wait
    out their lease with nobody running them (an attempt spent, the last one dead-lettered)."""
    queue = TaskQueue(client, "full-resent")
    worker = WorkerInfo(pod="p1", instance="i1", concurrency=4, state="running")
    await queue.submit_many([{"n": i} for i in range(3)])
    await queue.submit({"later": True}, delay=3600)
    args = [worker.worker_id, 2, int(LEASE * 1000), 100, "resent-call-"]
    first = claim_batch(await queue._run("claim", *args))
    assert len(first.tasks) == 2
    full.fill()
    before = full.snapshot(queue.name)
    again = claim_batch(await queue._run("claim", *args))
    assert full.snapshot(queue.name) == before
    assert [(t.id, t.token) for t in again.tasks] == [(t.id, t.token) for t in first.tasks]
    assert again.next_due_in is not None and again.next_due_in > 3000
    await refused_and_nothing_written(
        full, queue.name, lambda: queue._run("claim", *args[:4], "a-new-call-"))


async def test_runs_in_progress_go_on_to_their_end(
    full: Memory, client: aioredis.Redis,
) -> None:
    queue = TaskQueue(client, "full-runs")
    await queue.configure(max_attempts=3)
    worker = WorkerInfo(pod="p1", instance="i1", concurrency=8, state="running")
    other = WorkerInfo(pod="p2", instance="i1", concurrency=8, state="running")
    done, failed, dead, released, cancelled, beating = await held_tasks(queue, worker, 6)
    [expired] = await held_tasks(queue, other, 1)
    [orphan] = await held_tasks(queue, WorkerInfo(pod="p3", instance="i1", concurrency=1,
                                                  state="running"), 1)
    await queue.heartbeat(other, {expired.id: expired.token}, 0.001)  # its lease ran out
    limiter = RateLimiter(client, "full-llm", config=LimitConfig("full-llm", 600))
    await limiter.acquire()
    full.fill()

    beat = await queue.heartbeat(worker, {beating.id: beating.token}, LEASE)
    assert beat.lost == []
    assert await queue.complete(done, {"answer": 42})
    assert await queue.fail(failed, "boom", delay=0) == FailOutcome.RETRY
    assert await queue.fail(dead, "bad input", retryable=False) == FailOutcome.DEAD
    assert await queue.release(released, "drain") == FailOutcome.REQUEUED
    assert await queue.cancel(cancelled.id) == CancelOutcome.REQUESTED
    reaped = await queue.reap_expired()
    assert reaped.requeued == 1
    assert (await queue.requeue_pod("p3")).requeued == 1
    assert await queue.requeue_dead([dead.id]) == 1
    assert (await limiter.reserve()).requests == 1

    info = await queue.get(done.id)
    assert info is not None and info.state == "succeeded" and info.result == {"answer": 42}
    orphaned = await queue.get(orphan.id)
    assert orphaned is not None and orphaned.state == "queued"
    full.free()
    figures = await queue.figures()
    assert figures.queued == 5  # failed, released, the reaped, the orphan, the dead requeued


async def test_views_ask_in_one_trip_which_queues_a_full_redis_refuses(
    full: Memory, client: aioredis.Redis, server: RedisServer,
) -> None:
    """A queue without a pool has no operator to say RedisFull: `agentpool status --queue`
    and the console's Redis-only view ask Redis, with writes that write nothing."""
    queues = [TaskQueue(client, name) for name in ("full-view-a", "full-view-b")]
    await queues[0].submit({"x": 1})
    assert await full_among(queues) == set()
    full.fill()
    before = full.snapshot("full-view-a")
    assert await full_among(queues) == {"full-view-a", "full-view-b"}
    assert full.snapshot("full-view-a") == before
    full.admin.acl_setuser("reader", enabled=True, passwords=["+reader-secret"],
                           keys=["*"], commands=["+@read", "+@connection"])
    try:
        reader = aioredis.Redis.from_url(server.url, username="reader",
                                         password="reader-secret")
        assert await full_among([TaskQueue(reader, "full-view-a")]) == set(), (
            "a user that may not write is not told full")
        await reader.aclose()
    finally:
        full.admin.acl_deluser("reader")


async def test_dead_letters_can_be_purged_to_free_memory(
    full: Memory, client: aioredis.Redis,
) -> None:
    queue = TaskQueue(client, "full-purge")
    worker = WorkerInfo(pod="p1", instance="i1", concurrency=4, state="running")
    tasks = await held_tasks(queue, worker, 3)
    for task in tasks:
        await queue.fail(task, "bad input", retryable=False)
    full.fill()
    assert await queue.purge_dead() == 3
    assert await queue.get(tasks[0].id) is None


async def test_a_producer_waits_for_a_result_on_a_full_redis(
    full: Memory, client: aioredis.Redis,
) -> None:
    """The flag that has finishes published is a write Redis refuses when full: the wait reads
    the task instead (a finished one at once, a running one when it finishes)."""
    queue = TaskQueue(client, "full-wait")
    worker = WorkerInfo(pod="p1", instance="i1", concurrency=4, state="running")
    finished, running = await held_tasks(queue, worker, 2)
    await queue.complete(finished, "early")
    full.fill()
    assert (await queue.wait(finished.id, timeout=5)).result == "early"
    waiting = asyncio.ensure_future(queue.wait(running.id, timeout=10))
    await queue.complete(running, "late")
    assert (await waiting).result == "late"


async def test_events_sent_after_their_success_wait_for_room_too(
    full: Memory, client: aioredis.Redis,
) -> None:
    """The events of a run that succeeded, arriving after its success (events.lua's late
    path, which moves the 'final' event behind them), are refused on a full Redis like any
    others: a worker holding many would otherwise take Redis far past maxmemory."""
    queue = TaskQueue(client, "full-late")
    worker = WorkerInfo(pod="p1", instance="i1", concurrency=4, state="running")
    [task] = await held_tasks(queue, worker, 1)
    await queue.record([RunEvents(task.id, 1, [("log", '{"first": true}')], task.token)], [])
    await queue.complete(task, "done")
    full.fill()
    late = [RunEvents(task.id, 1, [("log", '{"big": "' + "x" * 60_000 + '"}')], task.token)]
    await refused_and_nothing_written(full, queue.name, lambda: queue.record(late, []))
    full.free()
    await queue.record(late, [])
    kinds = [event.kind async for event in queue.events(task.id, follow=False)]
    assert kinds == ["log", "log", "final"]


def said_in_one_line(error: RedisFull, message: str) -> None:
    """Caught as before (redis-py's OutOfMemoryError, a ResponseError, `redis_full`), said
    without Redis's wording, which names the refused script and its line."""
    assert isinstance(error, OutOfMemoryError) and isinstance(error, ResponseError)
    assert redis_full(error)
    assert str(error) == message
    assert error.__cause__ is None and error.__suppress_context__


async def test_a_submit_refused_by_a_full_redis_says_so_in_one_line(
    full: Memory, server: RedisServer,
) -> None:
    async with Client.from_url(server.url) as client:
        queue = client.queue("full-said")
        await queue.submit("room")
        full.fill()
        refused = {
            "submit": (lambda: queue.submit({"x": 1}), TASK_NOT_STORED),
            "submit_once": (lambda: queue.submit_once(1, idempotency_key="k"), TASK_NOT_STORED),
            "submit_many": (lambda: queue.submit_many([1, {"x": 2}]), TASKS_NOT_STORED),
            "submit_many with options": (
                lambda: queue.submit_many([1, 2], idempotency_keys=["a", "b"]),
                TASKS_NOT_STORED),
            "submits at once": (lambda: asyncio.gather(*(queue.submit(n) for n in range(20))),
                                TASK_NOT_STORED),
        }
        for name, (call, message) in refused.items():
            with pytest.raises(RedisFull) as caught:
                await call()
            try:
                said_in_one_line(caught.value, message)
            except AssertionError as error:
                raise AssertionError(f"{name}: {caught.value!r}") from error


def test_a_blocking_submit_refused_by_a_full_redis_says_so_in_one_line(
    full: Memory, server: RedisServer,
) -> None:
    with SyncClient.from_url(server.url) as client:
        queue = client.queue("full-said-blocking")
        queue.submit("room")
        full.fill()
        with pytest.raises(RedisFull) as caught:
            queue.submit({"x": 1})
        said_in_one_line(caught.value, TASK_NOT_STORED)
        with pytest.raises(RedisFull) as caught:
            queue.submit_many([1, 2])
        said_in_one_line(caught.value, TASKS_NOT_STORED)


async def test_a_submit_many_refused_part_way_names_the_tasks_it_stored(
    full: Memory, client: aioredis.Redis,
) -> None:
    """Room for the first chunk, not for the second's large payload (a request counts as
    used memory while Redis reads it)."""
    queue = TaskQueue(client, "full-part-way")
    await queue.submit("scripts loaded")
    full.admin.config_set("maxmemory", int(full.admin.info("memory")["used_memory"]) + 300_000)
    with pytest.raises(RedisFull) as caught:
        await queue.submit_many(["small", "x" * 900_000], chunk=1)
    said_in_one_line(caught.value, "Redis is full (maxmemory): only the first 1 of 2 tasks were "
                                   "stored (their ids in the error's `submitted`)")
    [stored] = caught.value.submitted
    info = await queue.get(stored)
    assert info is not None and info.payload == "small"
    assert (await queue.figures()).queued == 2
