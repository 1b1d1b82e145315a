"""A pool's ACL users on the replicas too: Redis does not replicate users, and a replica
without them would refuse the pool's workers the moment it is promoted. Against a real
primary, replica and three sentinels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from agentpool.acl import (
    Role,
    acl_rules,
    close_replica_clients,
    delete_user,
    password_hash,
    set_user,
)
from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.redis_server import SentinelGroup, sentinel_admin


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as started:
        yield started


def _clients_of(group: SentinelGroup) -> int:
    """Clients of the group's servers other than this check's own, the sentinels and the
    replication links."""
    count = 0
    for server in group.servers:
        with sentinel_admin(server.port) as node:
            count += sum(1 for c in node.client_list()
                         if not c["name"].startswith("sentinel-")
                         and not set(c["flags"]) & {"S", "M"}) - 1
    return count


def _users(port: int) -> list[str]:
    with sentinel_admin(port) as node:
        return list(node.acl_users())


async def test_a_pools_user_is_set_on_the_primary_and_its_replicas(
        group: SentinelGroup) -> None:
    """And the connections to the replicas this opened close with the client."""
    admin = redis_from_url(group.url)
    try:
        await set_user(admin, "pool-worker", acl_rules("q", Role.WORKER, [password_hash("pw")]))
        assert all("pool-worker" in _users(server.port) for server in group.servers)
        assert await delete_user(admin, "pool-worker")
        assert not any("pool-worker" in _users(server.port) for server in group.servers)
    finally:
        await close_replica_clients(admin)
        await admin.aclose()
    assert _clients_of(group) == 0


async def test_a_pools_producer_submits_on_the_promoted_replica_at_once(
        group: SentinelGroup) -> None:
    """No round of the operator's runs between the failover and the submit: the promoted
    replica already knows the user."""
    admin = redis_from_url(group.url)
    producer = redis_from_url(group.url.replace("redis+sentinel://",
                                                "redis+sentinel://pool-producer:pw@"))
    try:
        await set_user(admin, "pool-producer",
                       acl_rules("q", Role.PRODUCER, [password_hash("pw")]))
        queue = TaskQueue(producer, "q")
        await queue.submit("before")
        old = group.primary_port()
        assert old is not None
        group.server_on(old).kill()
        deadline = time.monotonic() + 30
        while group.primary_port() in (old, None):
            assert time.monotonic() < deadline, "no replica was promoted"
            await asyncio.sleep(0.05)
        while True:
            try:
                await queue.submit("after")
                break
            except redis.AuthenticationError:
                raise
            except redis.RedisError:
                assert time.monotonic() < deadline, "the producer never reached the new primary"
                await asyncio.sleep(0.05)
    finally:
        await producer.aclose()
        await close_replica_clients(admin)
        await admin.aclose()
