"""Durability replicated: submits and completions return once a replica has them.

Real processes: a primary and a replica (``--replicaof``). A replica that does not answer is
one stopped with SIGSTOP: the primary still takes writes, but no replica acknowledges them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one
from redis_freeze import frozen

from agentpool.acl import Role, acl_rules, password_hash, set_user
from agentpool.client import Client
from agentpool.durability import DEFAULT_REPLICA_TIMEOUT, Durability, NotReplicated
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, sentinel_admin

TIMEOUT = 0.2
"""Where no replica answers; elsewhere the default timeout leaves a loaded machine room."""


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    fast_sync = ("--repl-diskless-sync-delay", "0")
    with RedisServer(extra_args=fast_sync) as primary, \
            RedisServer(replica_of=primary.port, extra_args=fast_sync) as replica:
        wait_replica_online(primary)
        yield primary, replica


def wait_replica_online(primary: RedisServer, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    with sentinel_admin(primary.port) as admin:
        while (admin.info("replication").get("slave0") or {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not come online"
            time.sleep(0.05)


@pytest.fixture
async def clients(
    pair: tuple[RedisServer, RedisServer],
) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    primary, replica = pair
    async with aioredis.Redis.from_url(primary.url) as on_primary, \
            aioredis.Redis.from_url(replica.url) as on_replica:
        yield on_primary, on_replica


def replicated(redis: aioredis.Redis, name: str | None = None, *,
               timeout: float = DEFAULT_REPLICA_TIMEOUT) -> TaskQueue:
    return TaskQueue(redis, name or f"q-{uuid.uuid4().hex[:8]}", durability="replicated",
                     replica_timeout=timeout)


async def test_a_replicated_submit_returns_once_the_replica_has_the_task(
    clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    on_primary, on_replica = clients
    queue = replicated(on_primary)
    task_id = await queue.submit({"n": 1})
    assert await on_replica.hget(queue.task_key(task_id), "state") == b"queued"
    ids = await queue.submit_many([{"n": i} for i in range(50)])
    async with on_replica.pipeline(transaction=False) as pipe:
        for other in ids:
            pipe.hget(queue.task_key(other), "state")
        assert set(await pipe.execute()) == {b"queued"}


async def test_with_no_replica_answering_a_submit_says_so_and_keeps_the_task(
    pair: tuple[RedisServer, RedisServer], clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    on_primary, on_replica = clients
    queue = replicated(on_primary)
    with frozen(pair[1]):
        with pytest.raises(NotReplicated) as raised:
            await replicated(on_primary, queue.name, timeout=TIMEOUT).submit(
                {"n": 1}, idempotency_key="order-1")
        task_id = raised.value.result
        assert "within 0.2s" in str(raised.value)
        assert (await queue.get(task_id)) is not None
    # Submitting again with the same key is the producer's way to learn it is safe now:
    # the same task, and this time the replica has it.
    assert await queue.submit({"n": 1}, idempotency_key="order-1") == task_id
    assert await on_replica.hget(queue.task_key(task_id), "state") == b"queued"


async def test_concurrent_replicated_submits_each_learn_their_own_task_was_not_replicated(
    pair: tuple[RedisServer, RedisServer], clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    """Submits sent together (agentpool.coalesce) share one WAIT: each caller gets the
    outcome with its own task's id."""
    on_primary, on_replica = clients
    queue = replicated(on_primary, timeout=TIMEOUT)
    with frozen(pair[1]):
        outcomes = await asyncio.gather(*(queue.submit({"n": i}) for i in range(30)),
                                        return_exceptions=True)
    assert all(isinstance(outcome, NotReplicated) for outcome in outcomes)
    ids = [outcome.result for outcome in outcomes if isinstance(outcome, NotReplicated)]
    assert len(set(ids)) == 30
    infos = [await queue.get(task_id) for task_id in ids]
    assert [info.payload for info in infos if info is not None] == [{"n": i} for i in range(30)]
    acked = await asyncio.gather(*(queue.submit({"n": i}) for i in range(30, 60)))
    assert len(set(acked)) == 30
    assert {await on_replica.hget(queue.task_key(task_id), "state") for task_id in acked} == {
        b"queued"}


async def test_without_durability_a_submit_does_not_wait_for_a_replica(
    pair: tuple[RedisServer, RedisServer], clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    queue = TaskQueue(clients[0], f"q-{uuid.uuid4().hex[:8]}")
    with frozen(pair[1]):
        task_id = await queue.submit({"n": 1})
    assert (await queue.get(task_id)) is not None


async def test_replicated_completions_wait_for_the_replica(
    pair: tuple[RedisServer, RedisServer], clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    on_primary, on_replica = clients
    queue = replicated(on_primary)
    first, second = await queue.submit_many(["a", "b"])
    task = await claim_one(queue, "pod:1")
    assert await queue.complete_many([(task, "done")]) == [True]
    assert await on_replica.hget(queue.task_key(task.id), "state") == b"succeeded"
    other = await claim_one(queue, "pod:1")
    with frozen(pair[1]), pytest.raises(NotReplicated) as raised:
        await replicated(on_primary, queue.name, timeout=TIMEOUT).record([], [(other, '"done"')])
    assert raised.value.result == [True]
    assert {task.id, other.id} == {first, second}
    # Sent again once a replica answers: recorded already (the same token), now replicated.
    assert await queue.record([], [(other, '"done"')]) == [True]
    assert await on_replica.hget(queue.task_key(other.id), "state") == b"succeeded"


def test_durability_is_checked_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="durability must be one of none, replicated"):
        Client.from_url("redis://127.0.0.1:1/0", durability="sync")
    client = Client.from_url("redis://127.0.0.1:1/0", durability="REPLICATED")
    assert client.queue("a").durability is Durability.REPLICATED
    assert client.queue("a", durability="none").durability is Durability.NONE


@pytest.mark.parametrize("role", list(Role))
async def test_the_queues_acl_users_may_send_replicated_writes(
    pair: tuple[RedisServer, RedisServer], clients: tuple[aioredis.Redis, aioredis.Redis],
    role: Role,
) -> None:
    on_primary, on_replica = clients
    name = f"q-{uuid.uuid4().hex[:8]}"
    user = f"durable-{role.value}-{name}"
    await set_user(on_primary, user, acl_rules(name, role, [password_hash("pw")]))
    async with aioredis.Redis(port=pair[0].port, username=user, password="pw") as as_user:
        queue = TaskQueue(as_user, name, durability="replicated")
        if role is Role.PRODUCER:
            task_id = await queue.submit({"n": 1})
            assert await on_replica.hget(queue.task_key(task_id), "state") == b"queued"
        else:
            await TaskQueue(on_primary, name).submit({"n": 1})
            task = await claim_one(queue, "pod:1")
            assert await queue.complete_many([(task, "done")]) == [True]
            assert await on_replica.hget(queue.task_key(task.id), "state") == b"succeeded"


async def test_a_completion_on_a_full_primary_is_recorded_and_replicated(
    clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    """A full Redis (maxmemory, noeviction) takes completions; the write that WAIT counts
    after them must be taken too, or the worker would send its success for ever."""
    on_primary, on_replica = clients
    queue = replicated(on_primary)
    await queue.submit({"n": 1})
    task = await claim_one(queue, "w1:i")
    used = int((await on_primary.info("memory"))["used_memory"])
    await on_primary.config_set("maxmemory-policy", "noeviction")
    await on_primary.config_set("maxmemory", used - 200_000)
    try:
        assert await queue.complete(task, "done")
    finally:
        await on_primary.config_set("maxmemory", 0)
    info = await TaskQueue(on_replica, queue.name).get(task.id)
    assert info is not None and info.state == "succeeded"
