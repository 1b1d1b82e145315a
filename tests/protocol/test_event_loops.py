"""A Client kept from one event loop to the next (one ``asyncio.run`` after another, as a test
suite or a framework with a loop per request does) works in every loop, on every kind of
Redis: its connections, its line's and its pool's lock follow the loop in use."""

from __future__ import annotations

import asyncio
import gc

import redis

from agentpool.client import Client
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
