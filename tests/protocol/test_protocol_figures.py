"""Queue figures in one round trip, and every key of a queue in one Redis Cluster slot."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from protocol_helpers import RoundTrips, claim_one, database_of_its_own, eventually, scan_keys

from agentpool.protocol import TaskQueue, WorkerInfo, full_among, known_queues


def crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cluster_slot(key: str) -> int:
    """The Redis Cluster slot of a key, honouring a `{hash tag}` as Redis does."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return crc16_xmodem(raw) % 16384


def test_cluster_slot_matches_redis() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert cluster_slot("foo") == 12182
    assert cluster_slot("{user1000}.following") == cluster_slot("{user1000}.followers")
    assert cluster_slot("foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") % 16384


async def test_figures_count_every_state_in_one_round_trip(
    queue: TaskQueue, round_trips: RoundTrips
) -> None:
    dead_id = await queue.submit("dead", max_attempts=1, priority=9)
    await queue.fail(await claim_one(queue, "pod-a:i1"), "boom")
    await queue.submit("running", priority=9)
    await claim_one(queue, "pod-a:i1")
    for prio in (0, 0, 5):
        await queue.submit("queued", priority=prio)
    await queue.submit("due soon", delay=0.05)
    await queue.submit("later", delay=60)
    await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
    assert dead_id

    async def due() -> bool:
        return (await queue.figures()).due_delayed == 1

    await eventually(due)
    round_trips.reset()
    figures = await queue.figures()
    assert round_trips.commands == ["EVALSHA"]

    assert figures.queued_by_priority == {p: {0: 2, 5: 1}.get(p, 0) for p in range(10)}
    assert figures.due_delayed == 1
    assert figures.queued == 4
    assert (figures.delayed, figures.in_flight, figures.dead, figures.workers) == (1, 1, 1, 1)
    assert figures.backlog == 5
    assert figures.stats["submitted"] == 7
    assert (figures.stats["failed"], figures.stats["dead"]) == (1, 1)


async def test_submitted_counts_every_submit_and_supersedes_an_earlier_versions_counter(
    queue: TaskQueue, redis: aioredis.Redis
) -> None:
    """Submits are counted by the submit sequence alone (no stats write per submit); a
    stats hash left by an earlier version, which counted them there, does not double them."""
    assert "submitted" not in (await queue.figures()).stats
    await queue.submit("one")
    await queue.submit_many(["two", "three"])
    await queue.submit("later", delay=60)
    assert await redis.hget(queue.prefix + "stats", "submitted") is None
    await redis.hset(queue.prefix + "stats", "submitted", 2)
    figures = await queue.figures()
    assert figures.stats["submitted"] == 4


async def test_every_key_of_a_queue_shares_one_hash_tag_and_slot(
    redis_url: str, queue_name: str
) -> None:
    """A whole lifecycle on a database of its own; afterwards every key is in one slot."""
    client = database_of_its_own(redis_url, 9)
    try:
        await client.flushdb()
        queue = TaskQueue(client, queue_name)
        await queue.configure(max_attempts=2, result_ttl=600)
        await queue.submit("first", idempotency_key="k1", priority=9)
        await queue.submit_many(["b", "c", "d", "e"], priority=5)
        await queue.submit("delayed", delay=60)
        await queue.submit("last", priority=0)
        await queue.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)

        task = await claim_one(queue, "pod-a:i1")
        await queue.complete(task, "ok")
        task = await claim_one(queue, "pod-a:i1")
        await queue.fail(task, "boom", retryable=False)
        await queue.claim("pod-b:i1", 1, 30)
        await queue.requeue_pod("pod-b")
        cancelled = (await queue.claim("pod-c:i1", 2, 30)).tasks[1]
        await queue.cancel(cancelled.id)
        await queue.cancelled(cancelled)
        await queue.claim("pod-c:i1", 1, 0.01)
        await asyncio.sleep(0.02)
        await queue.reap_expired()
        await queue.request_drain("pod-x")
        await queue.claim("pod-a:i2", 1, 30)
        await queue.heartbeat(WorkerInfo("pod-a", "i2", 4), {}, 30)
        await queue.figures()

        keys = sorted(await scan_keys(client))
        tag = "{" + queue_name + "}"
        assert keys and all(tag in key for key in keys), keys
        suffixes = {key.removeprefix(queue.prefix).split(":")[0] for key in keys}
        assert {"queued", "delayed", "leases", "dead", "workers", "stats", "config", "seq",
                "fence", "wake", "drain", "idem", "t", "owner", "w"} <= suffixes
        assert {cluster_slot(key) for key in keys} == {cluster_slot(tag)}
    finally:
        await client.flushdb()
        await client.aclose()


async def test_a_queue_is_used_once_submitted_to_or_served(
    redis: aioredis.Redis, queue_name: str, round_trips: RoundTrips
) -> None:
    submitted, served, configured, never = (
        TaskQueue(redis, f"{queue_name}-{suffix}") for suffix in ("s", "w", "c", "n"))
    await submitted.cancel(await submitted.submit("x"))
    await served.heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
    await configured.configure(max_attempts=2)
    for queue in (submitted, served, configured):
        assert (await queue.figures()).used
        assert await queue.used()
    round_trips.reset()
    assert not (await never.figures()).used
    assert round_trips.commands == ["EVALSHA"]
    assert not await never.used()


async def test_known_queues_lists_used_queues_and_says_when_it_stopped_early(
    redis_url: str, queue_name: str
) -> None:
    client = database_of_its_own(redis_url, 8)
    try:
        await client.flushdb()
        assert await known_queues(client) == ([], True)
        await TaskQueue(client, "jobs").submit("x")
        await TaskQueue(client, "demo").heartbeat(WorkerInfo("pod-a", "i1", 4), {}, 30)
        await TaskQueue(client, "old.q").configure(max_attempts=2)
        async with client.pipeline(transaction=False) as pipe:  # keys of many slots
            for i in range(5000):
                pipe.set(f"other:{i}", 1)
            await pipe.execute()
        assert await known_queues(client) == (["demo", "jobs", "old.q"], True)
        names, complete = await known_queues(client, max_keys=1000)
        assert not complete
        assert set(names) <= {"demo", "jobs", "old.q"}
    finally:
        await client.flushdb()
        await client.aclose()


async def test_which_queues_are_full_is_answered_on_every_deployment(
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """On a Cluster the queues' keys sit on different primaries: one pipeline asks each (a
    Redis with room answers for every queue; test_redis_full.py fills one)."""
    queues = [TaskQueue(redis, f"{queue_name}-{n}") for n in range(6)]
    await queues[0].submit({"x": 1})
    assert await full_among(queues) == set()
    assert await scan_keys(redis, f"ap:{{{queue_name}-*") == await scan_keys(
        redis, f"ap:{{{queue_name}-0}}:*"), "asking wrote nothing"
