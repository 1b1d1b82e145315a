"""A Client kept from one event loop to the next (one ``asyncio.run`` after another, as a test
suite or a framework with a loop per request does) works in every loop, on every kind of
Redis: its connections, its line's and its pool's lock follow the loop in use."""

from __future__ import annotations

import asyncio
import gc

import redis

from agentpool.client import Client
from agentpool.ratelimit import LimitConfig, RateLimiter, key_prefix
from agentpool.redis_server import RedisServer


def _rounds(url: str, queue_name: str, rounds: int) -> list[tuple[list[str], int]]:
    """Each round in a loop of its own: concurrent submits (on the line, the rest gathered)
    and more concurrent pool calls than the pool has connections (so its callers wait)."""
    client = Client.from_url(url, max_connections=2)
    queue = client.queue(queue_name)

    async def one_round(n: int) -> tuple[list[str], int]:
        ids = await asyncio.gather(*(queue.submit({"round": n, "i": i}) for i in range(20)))
        figures = await asyncio.gather(*(queue.figures() for _ in range(20)))
        return list(ids), figures[-1].queued

    try:
        return [asyncio.run(one_round(n)) for n in range(rounds)]
    finally:
        asyncio.run(client.aclose())


def test_a_client_serves_one_event_loop_after_another(redis_url: str, queue_name: str) -> None:
    submitted: list[str] = []
    for ids, queued in _rounds(redis_url, queue_name, rounds=3):
        submitted += ids
        assert queued == len(submitted)
    assert len(set(submitted)) == 60


def test_connections_of_a_finished_loop_are_let_go(redis_server: RedisServer) -> None:
    """Redis sees the connections of a finished loop end when the next loop needs them, not
    when a garbage collection (kept off here) gets to their sockets."""
    admin = redis.Redis.from_url(redis_server.url)
    client = Client.from_url(redis_server.url, max_connections=2)
    queue = client.queue("loops-let-go")

    async def one_round() -> None:
        await asyncio.gather(*(queue.submit({}) for _ in range(20)),
                             *(queue.figures() for _ in range(20)))

    gc.disable()
    try:
        before = len(admin.client_list())
        asyncio.run(one_round())
        opened = len(admin.client_list()) - before
        for _ in range(5):
            asyncio.run(one_round())
        assert 0 < len(admin.client_list()) - before <= opened
    finally:
        gc.enable()
        asyncio.run(client.aclose())
        admin.close()


def test_a_slot_left_held_by_a_loop_closed_without_cancelling_goes_back(
    redis_server: RedisServer
) -> None:
    """A loop stopped with a hold still open (not `asyncio.run`'s way, which cancels): the
    next loop's first ask gives that hold back, so its own caller gets the only slot."""
    name = "loops-slot"
    admin = redis.Redis.from_url(redis_server.url)
    client = Client.from_url(redis_server.url)
    limit = client.rate_limit(name)
    asyncio.run(RateLimiter(client.redis, name).declare(
        LimitConfig(name, max_concurrent=1), "tests/pool"))
    admin.hdel(key_prefix(name) + "config", "since")  # no quiet time: not its subject
    first = asyncio.new_event_loop()
    entered = first.run_until_complete(limit.slots.acquire())  # and never released
    first.close()
    del first
    assert admin.zcard(key_prefix(name) + "held") == 1

    async def second_loop() -> str:
        async with asyncio.timeout(10):  # a guard: before, the old hold was renewed forever
            held = await limit.slots.acquire()
        await limit.slots.release(held)
        return held.holder

    try:
        assert asyncio.run(second_loop()) != entered.holder
    finally:
        asyncio.run(client.aclose())
        admin.close()
        gc.collect()  # the first loop's abandoned tasks end here, not in another test
