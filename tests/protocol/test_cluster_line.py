"""Producers on a Redis Cluster submit on the Client's script line, to each queue's primary.

What the line cannot answer goes the cluster client's way, which follows it: a slot moved to
another node (``MOVED`` after a failover) and a primary lost (kill -9). Real processes: three
primaries with a replica each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from agentpool.client import Client
from agentpool.connection import node_of_key
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisCluster, RedisServer, sentinel_admin


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000) as started:
        yield started


def _through_client(monkeypatch: pytest.MonkeyPatch, queue: TaskQueue) -> list[object]:
    """Records the calls of `queue`'s submit script that go the client's way."""
    script = queue._script("submit")
    calls: list[object] = []
    original = type(script).__call__

    async def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(type(script), "__call__", recording)
    return calls


def _held_by(port: int, queue: TaskQueue, task_ids: list[str]) -> list[bool]:
    with redis.Redis(port=port) as node:
        return [bool(node.exists(queue.task_key(task_id))) for task_id in task_ids]


async def _queues_on_every_primary(client: Client) -> list[TaskQueue]:
    """One queue for each primary (a queue's keys share one slot)."""
    by_node: dict[str, TaskQueue] = {}
    while len(by_node) < 3:
        queue = client.queue(f"q-{uuid.uuid4().hex[:8]}")
        by_node.setdefault((await node_of_key(client.redis, queue.prefix + "queued")).name,
                           queue)
    return list(by_node.values())


def _replica_of(cluster: RedisCluster, port: int) -> RedisServer:
    for server in cluster.servers:
        with sentinel_admin(server.port) as node:
            replication = node.info("replication")
        if replication.get("role") == "slave" and int(replication["master_port"]) == port:
            return server
    raise AssertionError(f"no replica of port {port}")


def _promoted(port: int, within: float = 30.0) -> None:
    with sentinel_admin(port) as node:
        deadline = time.monotonic() + within
        while node.info("replication").get("role") != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.05)


async def test_cluster_submits_go_on_the_line_to_each_queues_primary(
        cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Client.from_url(cluster.url) as client:
        queues = await _queues_on_every_primary(client)
        for queue in queues:
            await queue.submit("loads the script on its primary")
        through_client = _through_client(monkeypatch, queues[0])
        submitted = {queue.name: [await queue.submit(i) for i in range(5)] for queue in queues}
        primaries = [(await node_of_key(client.redis, q.prefix + "queued")).port for q in queues]
        assert client._line is not None
        servers = len(client._line._nodes)
    assert through_client == []
    assert servers == 3
    for queue, port in zip(queues, primaries, strict=True):
        assert _held_by(port, queue, submitted[queue.name]) == [True] * 5


async def test_a_submit_to_a_primary_turned_replica_goes_through_the_client(
        cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLUSTER FAILOVER: the old primary answers the line's next call with MOVED; that call
    goes the client's way (which reads the new map) and the calls after it on the line go to
    the new primary."""
    async with Client.from_url(cluster.url) as client:
        queue = client.queue(f"q-{uuid.uuid4().hex[:8]}")
        await queue.submit("opens the line to the primary")
        old = (await node_of_key(client.redis, queue.prefix + "queued")).port
        replica = _replica_of(cluster, old)
        with sentinel_admin(replica.port) as node:
            node.execute_command("CLUSTER", "FAILOVER")
        _promoted(replica.port)

        through_client = _through_client(monkeypatch, queue)
        moved = await queue.submit("meets the old primary")
        redirected = len(through_client)
        after = [await queue.submit(i) for i in range(5)]
    assert redirected == 1
    assert len(through_client) == 1
    assert _held_by(replica.port, queue, [moved, *after]) == [True] * 6


async def test_a_submit_to_a_lost_primary_goes_through_the_client() -> None:
    """kill -9 of the queue's primary: the line cannot reach it, the call goes the client's
    way, which finds the promoted replica once the cluster has it."""
    with RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000) as own:
        async with Client.from_url(own.url) as client:
            queue = client.queue("lost")
            await queue.submit("opens the line to the primary")
            old = (await node_of_key(client.redis, queue.prefix + "queued")).port
            replica = _replica_of(own, old)
            next(server for server in own.servers if server.port == old).kill()
            _promoted(replica.port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    after = await queue.submit("after the failover")
                    break
                except redis.RedisError:
                    assert time.monotonic() < deadline, "no submit reached the new primary"
                    await asyncio.sleep(0.05)
            later = await queue.submit("on the line again")
        assert _held_by(replica.port, queue, [after, later]) == [True, True]
