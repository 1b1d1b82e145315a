"""Producers on a Redis Cluster submit on script lines (both clients), to each queue's primary.

What the line cannot answer goes the cluster client's way, which follows it: a slot moved to
another node (``MOVED`` after a failover) and a primary lost (kill -9). Real processes: three
primaries with a replica each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
from protocol_helpers import promoted, replica_of
from redis.commands.core import AsyncScript

from agentpool.client import Client, SyncClient
from agentpool.connection import node_of_key, redis_from_url
from agentpool.direct import BlockingScriptLine
from agentpool.protocol import key_prefix
from agentpool.redis_server import RedisCluster, RedisServer, sentinel_admin

KINDS = pytest.mark.parametrize("kind", ["async", "blocking"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000) as started:
        yield started


class Producer:
    """Submits through `kind` of client, and records the submits that go the client's way
    instead of on its line."""

    def __init__(self, url: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.through_client: list[object] = []
        self._recording = False
        if kind == "async":
            self._client: Client | None = Client.from_url(url)
            self._blocking: SyncClient | None = None
            self._record_async(monkeypatch)
        else:
            self._client, self._blocking = None, SyncClient.from_url(url)
            line = self._blocking._blocking
            assert line is not None
            self._record_blocking(line, monkeypatch)

    def _record_async(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = AsyncScript.__call__

        async def recording(script: Any, *args: Any, **kwargs: Any) -> Any:
            if self._recording:
                self.through_client.append(args)
            return await original(script, *args, **kwargs)

        monkeypatch.setattr(AsyncScript, "__call__", recording)

    def _record_blocking(self, line: BlockingScriptLine,
                         monkeypatch: pytest.MonkeyPatch) -> None:
        original = line._through_client

        def recording(*args: Any) -> Any:
            if self._recording:
                self.through_client.append(args)
            return original(*args)

        monkeypatch.setattr(line, "_through_client", recording)

    def record(self) -> None:
        """Count what goes the client's way from now on (a first submit loads the script)."""
        self._recording = True

    async def submit(self, queue: str, payload: Any) -> str:
        if self._client is not None:
            return await self._client.queue(queue).submit(payload)
        assert self._blocking is not None
        return await asyncio.to_thread(self._blocking.queue(queue).submit, payload)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._blocking is not None:
            self._blocking.close()


@asynccontextmanager
async def producer(url: str, kind: str,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Producer]:
    made = Producer(url, kind, monkeypatch)
    try:
        yield made
    finally:
        await made.close()


@asynccontextmanager
async def admin(url: str) -> AsyncIterator[Any]:
    client = redis_from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def _primary_port(client: Any, queue: str) -> int:
    return (await node_of_key(client, key_prefix(queue) + "queued")).port


def _held_by(port: int, queue: str, task_ids: list[str]) -> list[bool]:
    with redis.Redis(port=port) as node:
        return [bool(node.exists(f"{key_prefix(queue)}t:{task_id}")) for task_id in task_ids]


async def _queues_on_every_primary(client: Any) -> list[str]:
    """One queue name for each primary (a queue's keys share one slot)."""
    by_node: dict[int, str] = {}
    while len(by_node) < 3:
        name = f"q-{uuid.uuid4().hex[:8]}"
        by_node.setdefault(await _primary_port(client, name), name)
    return list(by_node.values())


def _fail_over_to(cluster: RedisCluster, replica: RedisServer) -> None:
    """CLUSTER FAILOVER, asked again when a manual failover gives up (after 5 s, when the
    primary did not hand over in time); then until every node knows the replica as a primary,
    so that a client made later reads the new slot map from whichever node it asks."""
    for _ in range(5):
        with sentinel_admin(replica.port) as node:
            node.execute_command("CLUSTER", "FAILOVER")
        if promoted(replica.port, within=6.0):
            break
    else:
        raise AssertionError("the replica was not promoted")
    deadline = time.monotonic() + 30
    while not all(_sees_primary(server.port, replica.port) for server in cluster.servers):
        assert time.monotonic() < deadline, "the failover did not reach every node"
        time.sleep(0.05)


def _sees_primary(port: int, primary: int) -> bool:
    with sentinel_admin(port) as node:
        lines = str(node.execute_command("CLUSTER", "NODES")).splitlines()
    return any(f":{primary}@" in line.split()[1] and "master" in line.split()[2].split(",")
               for line in lines if line.strip())


@KINDS
async def test_cluster_submits_go_on_the_line_to_each_queues_primary(
        cluster: RedisCluster, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with admin(cluster.url) as client, producer(cluster.url, kind, monkeypatch) as made:
        queues = await _queues_on_every_primary(client)
        for queue in queues:
            await made.submit(queue, "loads the script on its primary")
        made.record()
        submitted = {queue: [await made.submit(queue, i) for i in range(5)] for queue in queues}
        primaries = {queue: await _primary_port(client, queue) for queue in queues}
    assert made.through_client == []
    assert len(set(primaries.values())) == 3
    for queue, port in primaries.items():
        assert _held_by(port, queue, submitted[queue]) == [True] * 5


@KINDS
async def test_a_submit_to_a_primary_turned_replica_goes_through_the_client(
        cluster: RedisCluster, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLUSTER FAILOVER: the old primary answers the line's next call with MOVED; that call
    goes the client's way (which reads the new map) and the calls after it on the line go to
    the new primary."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    cluster.wait_ok()  # every replica in sync, as a manual failover needs
    async with admin(cluster.url) as client, producer(cluster.url, kind, monkeypatch) as made:
        await made.submit(queue, "opens the line to the primary")
        replica = replica_of(cluster, await _primary_port(client, queue))
        _fail_over_to(cluster, replica)

        made.record()
        moved = await made.submit(queue, "meets the old primary")
        redirected = len(made.through_client)
        after = [await made.submit(queue, i) for i in range(5)]
    assert redirected == 1
    assert len(made.through_client) == 1
    assert _held_by(replica.port, queue, [moved, *after]) == [True] * 6


@KINDS
async def test_a_submit_to_a_lost_primary_goes_through_the_client(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of the queue's primary: the line cannot reach it, the call goes the client's
    way, which finds the promoted replica once the cluster has it."""
    with RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000) as own:
        async with admin(own.url) as client, producer(own.url, kind, monkeypatch) as made:
            await made.submit("lost", "opens the line to the primary")
            old = await _primary_port(client, "lost")
            replica = replica_of(own, old)
            next(server for server in own.servers if server.port == old).kill()
            assert promoted(replica.port), "the replica was not promoted"
            deadline = time.monotonic() + 30
            while True:
                try:
                    after = await made.submit("lost", "after the failover")
                    break
                except redis.RedisError:
                    assert time.monotonic() < deadline, "no submit reached the new primary"
                    await asyncio.sleep(0.05)
            made.record()
            later = await made.submit("lost", "on the line again")
        assert made.through_client == []
        assert _held_by(replica.port, "lost", [after, later]) == [True, True]
