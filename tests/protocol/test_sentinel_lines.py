"""Producers on Sentinel submit on script lines, with both clients, and follow the primary.

After ``SENTINEL FAILOVER`` the old primary keeps taking writes until the sentinels turn it
into a replica (seconds later); a submit written there is lost with it. A line asks the
sentinels again once a second, so the submits that follow the sentinels' new answer by more
than that go to the new primary; a call that meets the demoted primary (``READONLY``, on a
connection the sentinels' clean-up did not close) goes to the new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from agentpool.client import Client, SyncClient
from agentpool.connection import PRIMARY_CHECK_SECONDS
from agentpool.direct import BlockingScriptLine, ScriptLine
from agentpool.lua_source import script_source
from agentpool.redis_server import SENTINEL_SERVICE, SentinelGroup, sentinel_admin

Submit = Callable[[Any], Awaitable[str]]
Line = ScriptLine | BlockingScriptLine
KINDS = pytest.mark.parametrize("kind", ["async", "blocking"])


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as started:
        yield started


@asynccontextmanager
async def producer(url: str, kind: str) -> AsyncIterator[tuple[Submit, Line]]:
    """A queue's submit through `kind` of client, and the client's line."""
    if kind == "async":
        async with Client.from_url(url) as client:
            assert client._line is not None
            yield client.queue("lines").submit, client._line
        return
    blocking = SyncClient.from_url(url)
    try:
        assert blocking._blocking is not None
        queue = blocking.queue("lines")
        yield (lambda payload: asyncio.to_thread(queue.submit, payload)), blocking._blocking
    finally:
        blocking.close()


async def _aim(line: Line, port: int) -> None:
    """Give `line` a new idle connection, next in turn, to the server on `port` whatever its
    role, and that server the submit script (a replica's full sync left it none). The line
    has just asked the sentinels, as if the server had been demoted within the last second."""
    with redis.Redis(port=port) as server:
        server.script_load(script_source("submit"))
    address = ("127.0.0.1", port)
    if isinstance(line, ScriptLine):
        assert line._sentinel is not None and line._one is not None
        line._sentinel._checked_at = time.monotonic()
        idle = list(line._one.idle)
        line._one.idle.clear()
        wire = line._take(line._one)
        assert wire is not None and wire not in idle
        await wire.connection.connect_to(address)
        line._one.idle[:] = [*idle, wire]
    else:
        line._primary_asked_at = time.monotonic()
        assert line._one is not None
        blocking_idle = list(line._one.idle)
        line._one.idle.clear()
        blocking_wire = line._take(line._one)
        assert blocking_wire is not None and blocking_wire not in blocking_idle
        blocking_wire.connection.connect_to(address)
        line._one.idle[:] = [*blocking_idle, blocking_wire]


def _on(port: int, task_ids: list[str]) -> list[bool]:
    with redis.Redis(port=port) as server:
        return [bool(server.exists(f"ap:{{lines}}:t:{task_id}")) for task_id in task_ids]


def _role(port: int) -> str:
    with redis.Redis(port=port) as server:
        role: bytes = server.role()[0]
        return role.decode()


async def _fail_over_gracefully(group: SentinelGroup) -> tuple[int, int, float]:
    """SENTINEL FAILOVER: (old port, new port, when the sentinels first named the new one)."""
    group.wait_healthy()
    old = group.primary_port()
    assert old is not None
    with sentinel_admin(group.sentinel_ports[0]) as sentinel:
        sentinel.sentinel_failover(SENTINEL_SERVICE)
    deadline = time.monotonic() + 30
    while (new := group.primary_port()) in (None, old):
        assert time.monotonic() < deadline, "the sentinels promoted no replica within 30 s"
        await asyncio.sleep(0.02)
    assert new is not None
    return old, new, time.monotonic()


@KINDS
async def test_submits_on_sentinel_lines_go_to_the_new_primary(
        group: SentinelGroup, kind: str) -> None:
    async with producer(group.url, kind) as (submit, line):
        await submit("opens the line on the old primary")
        old, new, named_at = await _fail_over_gracefully(group)

        await asyncio.sleep(max(0.0, named_at + PRIMARY_CHECK_SECONDS - time.monotonic()))
        moved = [await submit(i) for i in range(5)]
        old_still_took_writes = _role(old) == "master"

        group.wait_demoted(old)
        group.wait_healthy()  # synced: what it loads now stays
        await _aim(line, old)
        after_demotion = await submit("meets the demoted primary")

    assert old_still_took_writes, "the old primary was demoted before the submits were made"
    assert _on(new, moved) == [True] * 5
    assert _on(new, [after_demotion]) == [True]


@KINDS
async def test_sentinel_submits_go_on_the_line(group: SentinelGroup, kind: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Once Redis knows the script: no submit takes the client's way to Redis."""
    through_client: list[object] = []
    if kind == "async":
        async with Client.from_url(group.url) as client:
            queue = client.queue("lines")
            await queue.submit("loads the script")
            script = queue._script("submit")
            monkeypatch.setattr(type(script), "__call__",
                                lambda *args, **kwargs: through_client.append(args))
            ids = [await queue.submit(i) for i in range(10)]
    else:
        with SyncClient.from_url(group.url) as blocking:
            blocking_queue = blocking.queue("lines")
            blocking_queue.submit("loads the script")
            line = blocking._blocking
            assert line is not None
            monkeypatch.setattr(line, "_through_client",
                                lambda *args: through_client.append(args))
            ids = [blocking_queue.submit(i) for i in range(10)]
    primary = group.primary_port()
    assert primary is not None
    assert len(set(ids)) == 10 and _on(primary, ids) == [True] * 10
    assert through_client == []
