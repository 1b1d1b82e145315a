"""Redis Cluster: workers serve queues spread over the shards of a 3-primary cluster.

Real processes: three `redis-server --cluster-enabled yes` on loopback ports, joined by
`redis-cli --cluster create` (agentpool.redis_server.RedisCluster, started once per session).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, cast

from worker_helpers import eventually, running, settings

from agentpool.client import Client
from agentpool.protocol import TaskQueue, figures_of, known_queues
from agentpool.redis_server import RedisCluster, free_port
from agentpool_operator.redis_access import RedisClients, read_figures
from agentpool_worker.worker import Worker

TASKS_PER_QUEUE = 12


async def queues_on_every_shard(redis: Any, count: int) -> list[str]:
    """Queue names whose slots sit on `count` different primaries."""
    await redis.initialize()
    by_node: dict[str, str] = {}
    while len(by_node) < count:
        name = f"q-{uuid.uuid4().hex[:8]}"
        node = redis.get_node_from_key(f"ap:{{{name}}}:queued").name
        by_node.setdefault(node, name)
    return list(by_node.values())


async def test_workers_run_the_tasks_of_queues_on_every_shard(
    redis_cluster: RedisCluster,
) -> None:
    async with Client.from_url(redis_cluster.url) as client:
        names = await queues_on_every_shard(client.redis, len(redis_cluster.ports))
        queues = [client.queue(name) for name in names]
        async with contextlib.AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(running(settings(
                redis_cluster.url, name, handler="sample_handlers:pid", concurrency=4)))
                for name in names]
            ids = [await queue.submit_many([{"n": n} for n in range(TASKS_PER_QUEUE)])
                   for queue in queues]
            # wait() follows each queue's sharded `done` channel on its own shard
            infos = await asyncio.gather(*(
                queue.wait(task_id, timeout=30)
                for queue, batch in zip(queues, ids, strict=True) for task_id in batch))
            assert {info.state for info in infos} == {"succeeded"}
            served = [{w.worker_id for w in await queue.workers()} for queue in queues]
            assert served == [{worker.worker_id} for worker in workers]
        figures = await figures_of(queues)  # one pipeline, routed per shard
        assert [f.stats.get("succeeded") for f in figures] == [TASKS_PER_QUEUE] * len(queues)
        listed, complete = await known_queues(client.redis)
        assert complete and set(names) <= set(listed)
        holders = {cast(Any, client.redis).get_node_from_key(q.prefix + "stats").name
                   for q in queues}
        assert len(holders) == len(redis_cluster.ports), "the queues live on every shard"


async def test_the_operators_client_reads_figures_of_queues_on_every_shard(
    redis_cluster: RedisCluster,
) -> None:
    clients = RedisClients()
    try:
        redis = await clients.client("default", "pool", redis_cluster.url)
        names = await queues_on_every_shard(redis, len(redis_cluster.ports))
        for n, name in enumerate(names):
            await TaskQueue(redis, name).submit_many(range(n + 1))
        queued = [(await read_figures(TaskQueue(redis, name))).queued for name in names]
        assert queued == [1, 2, 3]
    finally:
        await clients.close()


async def test_a_worker_whose_cluster_is_not_up_yet_waits_for_it() -> None:
    """No node answers at start (the cluster's pods still starting): the worker keeps trying,
    as on one server, instead of exiting; it stops cleanly when asked."""
    worker = Worker(settings(f"redis+cluster://127.0.0.1:{free_port()}", "q-later"))
    run = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: "Cluster" in worker.health.redis_error or run.done(), 10,
                         "a failed attempt to reach the cluster")
        assert not run.done(), "the worker exited instead of waiting for its cluster"
        assert worker.state == "starting"
        assert "Redis Cluster cannot be connected" in worker.health.redis_error
    finally:
        worker.stop()
        await asyncio.wait_for(run, 10)
