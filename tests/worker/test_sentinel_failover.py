"""Sentinel: the client, a running worker and the operator's Redis access follow a failover.

Real processes: a primary, a replica and three sentinels (agentpool.redis_server.SentinelGroup).
Replication is asynchronous, so a write the old primary acknowledged just before it lost its
role can vanish (docs/redis.md); the lease reaper, which the operator runs on every poll, then
puts such a task back. What must hold: every task still ends succeeded, and the worker that ran
before the failover runs after it, without a restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError
from worker_helpers import (
    STALL_PROOF_DOWN_AFTER_MS,
    eventually,
    fail_over,
    running,
    settings,
)

from agentpool.client import Client
from agentpool.protocol import TaskQueue
from agentpool.redis_server import SentinelGroup
from agentpool_operator.redis_access import QueueAccessError, RedisClients, read_figures

PASSWORD = "sentinel-test-pw"
TASKS = 24


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup(password=PASSWORD, down_after_ms=STALL_PROOF_DOWN_AFTER_MS) as started:
        yield started


async def finish_all(queue: TaskQueue, ids: list[str], within: float) -> dict[str, str]:
    """Reap expired leases as the operator's loop does, until every task is final."""
    deadline = time.monotonic() + within
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            await queue.reap_expired()
            infos = await queue.get_many(ids)
            states = {i.id: i.state for i in infos if i is not None}
        except (RedisError, OSError):
            pass
        if len(states) == len(ids) and all(s in ("succeeded", "dead") for s in states.values()):
            return states
        await asyncio.sleep(0.2)
    raise AssertionError(f"not every task ended within {within}s: {states}")


async def succeeded_at_least(queue: TaskQueue, count: int) -> bool:
    return (await queue.figures()).stats.get("succeeded", 0) >= count


async def submit_after_failover(queue: TaskQueue, payloads: list[object]) -> list[str]:
    """A producer's submit: a call on a connection to the lost primary fails (the producer
    learns of it and tries again); calls after it reach the new primary."""
    for _ in range(10):
        try:
            return await queue.submit_many(payloads)
        except (RedisError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("no submit reached the new primary")


@pytest.mark.parametrize("kill", [False, True], ids=["sentinel-failover", "kill-9-primary"])
async def test_a_running_worker_follows_a_failover_and_every_task_succeeds(
    group: SentinelGroup, kill: bool
) -> None:
    queue_name = f"q-{uuid.uuid4().hex[:8]}"
    async with Client.from_url(group.url, socket_timeout=2) as client:
        queue = client.queue(queue_name)
        worker_settings = settings(group.url, queue_name, handler="sample_handlers:sleep",
                                   lease_seconds=3, redis_timeout_seconds=1, concurrency=4)
        async with running(worker_settings) as worker:
            ids = await queue.submit_many([{"seconds": 0.3}] * TASKS)
            await eventually(lambda: succeeded_at_least(queue, 4), what="4 tasks succeeded")
            # The sentinels' clients are blocking: off the loop the worker runs on.
            old, new = await asyncio.to_thread(fail_over, group, kill=kill)
            later = await submit_after_failover(queue, [{"seconds": 0.1}] * 4)
            states = await finish_all(queue, [*ids, *later], within=60)
            assert set(states.values()) == {"succeeded"}, states
            served = {w.worker_id for w in await queue.workers()}
            assert served == {worker.worker_id}, (
                "the worker instance that started before the failover served after it")
        if kill:
            await asyncio.to_thread(group.restore, old, primary=new)


async def test_the_operators_shared_client_reads_figures_after_a_failover(
    group: SentinelGroup,
) -> None:
    queue_name = f"q-{uuid.uuid4().hex[:8]}"
    clients = RedisClients()
    try:
        redis = await clients.client("default", "pool", group.url)
        queue = TaskQueue(redis, queue_name)
        await queue.submit({"n": 1})
        assert (await read_figures(queue)).queued == 1
        await asyncio.to_thread(fail_over, group, kill=False)
        deadline = time.monotonic() + 15
        while True:
            try:
                await queue.submit({"n": 2})
                figures = await read_figures(queue)
                break
            except (QueueAccessError, RedisError, OSError):
                assert time.monotonic() < deadline, "no figures from the new primary in 15 s"
                await asyncio.sleep(0.1)
        assert figures.queued >= 2
    finally:
        await clients.close()
