"""Redis comes back without a pool's queue, against kmock and a real redis-server: the running
operator says so once (a `QueueDataLost` Warning Event with the tasks it last saw, and a
counter), and says nothing when Redis kept the data (a restart that replays its append-only
file)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest
from prometheus_client import REGISTRY

from agentpool.connection import redis_from_url
from agentpool.protocol import QueueFigures, TaskQueue
from agentpool.redis_server import RedisServer
from agentpool_operator import handlers
from agentpool_operator.redis_access import QueueAccessError

REASON = "QueueDataLost"


@pytest.fixture
def figure_reads(monkeypatch: pytest.MonkeyPatch) -> list[QueueFigures | None]:
    """The figures each round of the operator read, in order, None for a read that failed:
    its rounds, counted without a clock."""
    reads: list[QueueFigures | None] = []
    read = handlers.read_figures

    async def recorded(queue: TaskQueue, *, origin: str | None = None) -> QueueFigures:
        try:
            figures = await read(queue, origin=origin)
        except QueueAccessError:
            reads.append(None)
            raise
        reads.append(figures)
        return figures

    monkeypatch.setattr(handlers, "read_figures", recorded)
    return reads


@pytest.fixture(params=[False, True], ids=["no-persistence", "append-only-file"])
async def own_redis(request: pytest.FixtureRequest
                    ) -> AsyncIterator[tuple[RedisServer, aioredis.Redis]]:
    """A redis-server of the test's own (it is flushed and restarted)."""
    with RedisServer(appendonly=request.param) as server:
        client = redis_from_url(server.url)
        try:
            yield server, client
        finally:
            await client.aclose()


def figures_of(cluster: Cluster, pool: str) -> tuple[int, int, int]:
    status = cluster.pool(pool).get("status") or {}
    return status["queued"], status["inFlight"], status["dead"]


def lost_count(pool: str) -> float | None:
    return REGISTRY.get_sample_value("agentpool_operator_queue_data_lost_total",
                                     {"namespace": NAMESPACE, "pool": pool})


async def busy_queue(cluster: Cluster, admin: aioredis.Redis, url: str, pool: str) -> TaskQueue:
    """A pool whose status shows 2 queued, 1 running and 1 dead-lettered task, 4 submitted.

    The running task's holder is a worker of a pod that does not exist: recovery leaves it
    alone for WORKER_LIVENESS_WINDOW (30 s), longer than a test takes."""
    queue = TaskQueue(admin, pool)
    await cluster.create_pool(pool_manifest(pool, redis_url=url))
    # The loop's first round (it checks for pods gone while no operator ran) is over.
    await eventually(lambda: cluster.condition(pool, "QueueReachable")["status"] == "True")
    await queue.submit_many([{"n": n} for n in range(4)])
    batch = await queue.claim(f"{pool}-gone:1", 2, lease_seconds=600)
    assert len(batch.tasks) == 2
    assert await queue.fail(batch.tasks[0], "boom", retryable=False) == "dead"
    await eventually(lambda: figures_of(cluster, pool) == (2, 1, 1))
    return queue


async def test_a_flushed_redis_is_reported_once_with_what_was_lost(
    cluster: Cluster, operator: OperatorThread, figure_reads: list[QueueFigures | None],
) -> None:
    with RedisServer() as server:
        admin = redis_from_url(server.url)
        try:
            queue = await busy_queue(cluster, admin, server.url, "flushed")
            assert cluster.events(REASON) == []
            await admin.flushall()

            warning = (await eventually(lambda: cluster.events(REASON)))[0]
            assert warning["type"] == "Warning"
            assert warning["message"] == (
                "Redis lost this queue's data (the submit counter went back from 4 to 0): 2 "
                "queued, 1 running and 1 dead-lettered task(s) last seen are gone; a Redis "
                "without persistence restarted, a FLUSHALL, or a failover to a replica that "
                "had not synced")
            assert warning["involvedObject"]["name"] == "flushed"
            assert lost_count("flushed") == 1
            # A loss is an event in time, not a state: no condition says it.
            assert cluster.condition("flushed", "Degraded")["status"] == "False"

            # Rounds go on, producers submit again (the counter starts over): no second Event.
            await eventually(lambda: figures_of(cluster, "flushed") == (0, 0, 0))
            await queue.submit({"n": 5})
            await eventually(lambda: figures_of(cluster, "flushed") == (1, 0, 0))
            seen = len(figure_reads)
            await eventually(lambda: len(figure_reads) >= seen + 3)
            assert len(cluster.events(REASON)) == 1
            assert lost_count("flushed") == 1
        finally:
            await admin.aclose()


async def test_a_restarted_redis_is_reported_only_when_it_did_not_keep_the_queue(
    cluster: Cluster, operator: OperatorThread, figure_reads: list[QueueFigures | None],
    own_redis: tuple[RedisServer, aioredis.Redis],
) -> None:
    server, admin = own_redis
    kept = server.appendonly
    await busy_queue(cluster, admin, server.url, "restarted")
    # Redis stays down until a round failed to read the queue (a failed read is not an empty
    # queue), then comes back: with its data, or without.
    stopped = len(figure_reads)
    await asyncio.to_thread(server.stop)
    await eventually(lambda: None in figure_reads[stopped:])
    await asyncio.to_thread(server.start)
    restarted = len(figure_reads)
    after = await eventually(lambda: [f for f in figure_reads[restarted:] if f is not None][2:])
    assert all(f.stats.get("submitted") == (4 if kept else None) for f in after)
    await eventually(lambda: figures_of(cluster, "restarted") == ((2, 1, 1) if kept
                                                                  else (0, 0, 0)))
    if kept:
        assert cluster.events(REASON) == []
        assert lost_count("restarted") == 0
        return
    warning = (await eventually(lambda: cluster.events(REASON)))[0]
    assert warning["type"] == "Warning"
    assert warning["message"].startswith(
        "Redis lost this queue's data (the submit counter went back from 4 to 0): 2 queued, "
        "1 running and 1 dead-lettered task(s) last seen are gone; ")
    seen = len(figure_reads)
    await eventually(lambda: len(figure_reads) >= seen + 2)
    assert len(cluster.events(REASON)) == 1
    assert lost_count("restarted") == 1
