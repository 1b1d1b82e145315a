"""A client's life beyond one process and one ``with`` block: a forked child that uses its
parent's client, a SyncClient dropped without being closed, a Client used after ``aclose``."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
from protocol_helpers import eventually

from agentpool.client import Client, ClientClosed, SyncClient
from agentpool.direct import DEFAULT_LIMIT
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer


def connection_ids(admin: redis.Redis, name: str) -> set[int]:
    """The ids of the connections Redis has open under the client name `name`."""
    return {int(c["id"]) for c in admin.client_list() if c.get("name") == name}


def until(check: Callable[[], bool], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        time.sleep(0.01)


def test_a_child_forked_while_the_parent_has_calls_in_flight_leaves_them_be(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    """A module-level client, a worker process forked from the app: the child's first calls
    used to shut down the parent's connections and take them off the event loop the two
    share after a fork (its epoll instance), so the parent's calls in flight never got their
    replies (a timeout, or a wait for ever without ``socket_timeout``)."""
    name = f"fork-{uuid.uuid4().hex[:8]}"
    client = Client.from_url(redis_server.url, socket_timeout=10, client_name=name)
    queue = client.queue(name)
    admin = redis.Redis.from_url(redis_server.url)
    report = tmp_path / "child.json"

    def child(go: int) -> NoReturn:
        code = 1
        try:
            signal.alarm(60)
            os.read(go, 1)

            async def calls() -> list[str]:
                ids = await asyncio.gather(*(queue.submit({"child": n})
                                             for n in range(DEFAULT_LIMIT)))
                return [info.state for info in await queue.get_many(ids)]

            report.write_text(json.dumps(asyncio.run(calls())))
            code = 0
        finally:
            os._exit(code)

    async def parent() -> tuple[set[int], int, list[Any]]:
        await asyncio.gather(*(queue.submit({"warm": n}) for n in range(DEFAULT_LIMIT)))
        await asyncio.gather(*(queue.figures() for _ in range(4)))
        opened = connection_ids(admin, name)
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            child(go_read)
        in_flight = asyncio.gather(*(queue.submit({"parent": n}) for n in range(20)),
                                   *(queue.figures() for _ in range(4)))
        await asyncio.sleep(0)  # one step each: the commands are written, no reply read
        os.write(go_write, b"!")
        # blocking on purpose: the loop reads no reply while the child runs its calls
        _, status = os.waitpid(pid, 0)  # noqa: ASYNC222
        return opened, status, await in_flight

    try:
        opened, status, results = asyncio.run(parent())
        assert os.waitstatus_to_exitcode(status) == 0
        assert json.loads(report.read_text()) == ["queued"] * DEFAULT_LIMIT
        assert len(set(results[:20])) == 20
        assert opened <= connection_ids(admin, name), "the child closed the parent's connections"
        figures = asyncio.run(queue.figures())
        assert figures.queued == 2 * DEFAULT_LIMIT + 20
    finally:
        asyncio.run(client.aclose())
        admin.close()


def test_a_child_forked_while_the_parents_calls_hold_every_pool_connection_gets_its_own(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    """The connections the parent's calls held at the fork never come back to the child's
    copy of the pool: held as many as it allows, every pool call of the child used to wait
    for ever."""
    name = f"fork-held-{uuid.uuid4().hex[:8]}"
    client = Client.from_url(redis_server.url, max_connections=2, client_name=name)
    queue = client.queue(name)
    admin = redis.Redis.from_url(redis_server.url)
    report = tmp_path / "child.json"

    def following() -> int:
        return sum(c.get("name") == name and c.get("cmd") == "xread"
                   for c in admin.client_list())

    async def follow(task_id: str) -> None:
        async for _ in queue.events(task_id, block_seconds=30):
            pass

    async def both_following() -> bool:
        return following() == 2

    async def parent() -> int:
        task_id = await queue.submit("followed")
        followers = [asyncio.ensure_future(follow(task_id)) for _ in range(2)]
        await eventually(both_following, within=10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(20)
                info = asyncio.run(queue.get(task_id))
                report.write_text(json.dumps(info.state if info else None))
                code = 0
            finally:
                os._exit(code)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        return status

    try:
        assert os.waitstatus_to_exitcode(asyncio.run(parent())) == 0
        assert json.loads(report.read_text()) == "queued"
    finally:
        asyncio.run(client.aclose())
        admin.close()


def test_a_sync_client_dropped_without_closing_ends_its_thread_and_its_connections(
    redis_server: RedisServer,
) -> None:
    """A helper that makes a client per request and never closes it used to leave a thread
    and connections behind per call, for as long as the process lived."""
    name = f"dropped-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_server.url)
    client = SyncClient.from_url(redis_server.url, client_name=name)
    queue = client.queue(name)
    assert queue.get(queue.submit("x")) is not None  # the blocking line's connection
    queue.figures()  # the loop's
    assert len(connection_ids(admin, name)) >= 2
    thread = client._runner._thread
    del client, queue
    gc.collect()
    try:
        thread.join(timeout=30)
        assert not thread.is_alive()
        until(lambda: not connection_ids(admin, name))
    finally:
        admin.close()


def test_a_sync_client_forked_and_dropped_in_the_child_leaves_the_parents_be(
    redis_server: RedisServer,
) -> None:
    name = f"dropped-fork-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_server.url)
    client = SyncClient.from_url(redis_server.url, client_name=name)
    queue = client.queue(name)
    queue.submit("parent")
    queue.figures()
    opened = connection_ids(admin, name)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(60)
            queue.submit("child")
            del client, queue
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert opened <= connection_ids(admin, name)
        assert queue.figures().queued == 2
    finally:
        client.close()
        admin.close()


async def test_a_closed_client_refuses_every_call_as_a_sync_client_does(
    redis_url: str, queue_name: str,
) -> None:
    client = Client.from_url(redis_url)
    queue = client.queue(queue_name)
    task_id = await queue.submit("before")
    await client.aclose()

    async def events() -> None:
        async for _ in queue.events(task_id):
            pass

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "submit": lambda: queue.submit("after"),
        "submit_many": lambda: queue.submit_many(["a", "b"], idempotency_keys=["a", "b"]),
        "get": lambda: queue.get(task_id),
        "wait": lambda: queue.wait(task_id, timeout=5),
        "events": events,
        "figures": queue.figures,
        "cancel": lambda: queue.cancel(task_id),
        "ping": client.ping,
    }
    for what, call in calls.items():
        with pytest.raises(ClientClosed, match="the client is closed"):
            await call()
            raise AssertionError(f"{what} went through")
    with pytest.raises(ClientClosed):
        client.queue(queue_name)
    with pytest.raises(ClientClosed):
        client.rate_limit("llm")
    await client.aclose()
    async with Client.from_url(redis_url) as other:
        assert (await other.queue(queue_name).figures()).queued == 1


def test_a_submit_after_aclose_opens_no_connection(redis_server: RedisServer) -> None:
    name = f"closed-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_server.url)
    client = Client.from_url(redis_server.url, client_name=name)
    queue: TaskQueue = client.queue(name)

    async def submit_close_submit() -> None:
        await asyncio.gather(*(queue.submit(n) for n in range(20)), queue.figures())
        await client.aclose()
        with pytest.raises(ClientClosed):
            await queue.submit("after")

    try:
        asyncio.run(submit_close_submit())
        until(lambda: not connection_ids(admin, name))
    finally:
        admin.close()
