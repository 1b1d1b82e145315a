"""A SyncClient's event loop thread in a web app: a stream iterator that the garbage collector
finalizes there or on a thread the loop must not be waited from, a blocking call made there or
as the interpreter exits, and an ``events()`` view that writes keep-alives while its task is
quiet."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from protocol_helpers import claim_one

from agentpool.client import SyncClient
from agentpool.connection import redis_from_url
from agentpool.protocol import RunEvents, TaskEvent, TaskQueue
from agentpool.redis_server import RedisServer

T = TypeVar("T")

BOUND = 10.0
"""Seconds within which a call that must not hang returns."""


def within(call: Callable[[], T], seconds: float = BOUND) -> T:
    """`call()` run in a thread of its own, which must have returned within `seconds`."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", call()))
        except BaseException as error:  # handed to the test's thread
            outcome.append(("error", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call did not return within {seconds}s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    result: T = value
    return result


def emit(url: str, queue_name: str, task_id: str, *data: str) -> None:
    """A worker's run of `task_id` emits a ``token`` event per JSON text in `data`."""
    async def run() -> None:
        client = redis_from_url(url)
        try:
            queue = TaskQueue(client, queue_name)
            claimed = await claim_one(queue, "pod-t:i1")
            assert claimed.id == task_id
            await queue.record([RunEvents(task_id, claimed.attempts,
                                          [("token", raw) for raw in data], claimed.token)], [])
        finally:
            await client.aclose()

    asyncio.run(run())


async def _collect_garbage() -> int:
    return gc.collect()


def test_an_events_iterator_collected_on_the_loop_thread_leaves_the_client_working(
    redis_server: RedisServer, queue_name: str,
) -> None:
    """An SSE view left after its first event, the iterator held in a reference cycle (a
    caught exception's traceback): the cyclic collector may finalize it on any thread, the
    client's loop thread included, whose blocking close waited there for itself and locked
    every later call of every thread."""
    client = SyncClient(redis_server.url)
    queue = client.queue(queue_name)
    task_id = queue.submit({})
    emit(redis_server.url, queue_name, task_id, '"a"')
    cycle: list[Any] = [queue.events(task_id)]
    cycle.append(cycle)
    assert next(cycle[0]).data == "a"
    gc.disable()
    try:
        del cycle
        asyncio.run_coroutine_threadsafe(_collect_garbage(), client._runner.loop).result(BOUND)
    finally:
        gc.enable()
    info = within(lambda: queue.get(task_id))
    assert info is not None and info.state == "running"
    within(client.close)


def test_collecting_an_iterator_on_another_thread_does_not_wait_for_the_loop(
    redis_server: RedisServer, queue_name: str,
) -> None:
    """The collector finalizes whatever is garbage on the thread that allocated last, which
    may hold a lock the loop needs next (a future's, while it waits for its own step): a
    close that waited for the loop there never returned. Here the loop is busy instead."""
    client = SyncClient(redis_server.url)
    queue = client.queue(queue_name)
    task_id = queue.submit({})
    cycle: list[Any] = [queue.events(task_id, idle=0.05)]
    cycle.append(cycle)
    assert next(cycle[0]) is None
    loop_free = threading.Event()
    client._runner.loop.call_soon_threadsafe(loop_free.wait, BOUND)
    gc.disable()
    try:
        del cycle
        within(gc.collect, BOUND / 2)
    finally:
        loop_free.set()
        gc.enable()
    info = within(lambda: queue.get(task_id))
    assert info is not None and info.state == "queued"
    within(client.close)


def test_a_blocking_call_on_the_loop_thread_is_refused_not_waited_for(
    redis_server: RedisServer, queue_name: str,
) -> None:
    client = SyncClient(redis_server.url)
    queue = client.queue(queue_name)
    task_id = queue.submit({})

    async def on_the_loop() -> str:
        with pytest.raises(RuntimeError, match="own event loop thread") as refused:
            queue.get(task_id)
        return str(refused.value)

    said = asyncio.run_coroutine_threadsafe(on_the_loop(), client._runner.loop).result(BOUND)
    assert "async Client" in said
    info = within(lambda: queue.get(task_id))
    assert info is not None and info.state == "queued"
    within(client.close)


def test_an_idle_events_iterator_yields_none_while_the_task_is_quiet_then_its_events(
    redis_server: RedisServer, queue_name: str,
) -> None:
    """A Flask or Django SSE view writes a keep-alive on each None: it notices a browser that
    left, and holds its thread no longer than `idle` between two writes."""
    with SyncClient(redis_server.url) as client:
        queue = client.queue(queue_name)
        task_id = queue.submit({})
        steps = queue.events(task_id, idle=0.2)
        started = time.monotonic()
        assert within(lambda: next(steps)) is None
        assert time.monotonic() - started >= 0.15
        assert within(lambda: next(steps)) is None
        emit(redis_server.url, queue_name, task_id, '"a"', '"b"')
        seen: list[TaskEvent] = []
        for _ in range(int(BOUND / 0.2)):
            item = within(lambda: next(steps))
            if item is not None:
                seen.append(item)
            if len(seen) == 2:
                break
        assert [(event.kind, event.data) for event in seen] == [("token", "a"), ("token", "b")]
        steps.close()
        with pytest.raises(ValueError, match="idle must be a positive number"):
            queue.events(task_id, idle=0)


def test_closing_an_idle_iterator_mid_wait_ends_its_read_and_frees_the_client(
    redis_server: RedisServer, queue_name: str,
) -> None:
    """The browser left after a keep-alive: the view closes the iterator while its step still
    waits on the loop (a blocking XREAD); the step is cancelled, the stream closed, and the
    client serves on."""
    name = f"idle-{queue_name}"
    admin = redis.Redis.from_url(redis_server.url)
    with SyncClient(redis_server.url, client_name=name) as client:
        queue = client.queue(queue_name)
        task_id = queue.submit({})
        steps = queue.events(task_id, idle=0.1)
        assert within(lambda: next(steps)) is None
        within(steps.close)

        deadline = time.monotonic() + BOUND
        while any(c.get("name") == name and c.get("cmd") == "xread" and "b" in c["flags"]
                  for c in admin.client_list()):
            assert time.monotonic() < deadline, "the stream's XREAD still blocks"
            time.sleep(0.01)
        info = within(lambda: queue.get(task_id))
        assert info is not None and info.state == "queued"
        again = queue.events(task_id, idle=0.1)
        assert within(lambda: next(again)) is None
        again.close()
    admin.close()


def test_a_script_that_leaves_an_idle_iterator_in_its_globals_exits(
    redis_server: RedisServer, queue_name: str, tmp_path: Path,
) -> None:
    """The interpreter closes the iterator as it clears the module, after its daemon threads,
    the client's loop thread, stopped running: a close that waited there never returned."""
    script = tmp_path / "leaves_it.py"
    script.write_text(textwrap.dedent(f"""\
        from agentpool.client import SyncClient
        client = SyncClient({redis_server.url!r})
        queue = client.queue({queue_name!r})
        steps = queue.events(queue.submit({{}}), idle=0.1)
        print(next(steps))
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=BOUND)
    assert (done.returncode, done.stdout) == (0, "None\n"), done.stderr


def test_a_call_made_as_the_interpreter_exits_is_refused_not_waited_for(
    redis_server: RedisServer, queue_name: str, tmp_path: Path,
) -> None:
    """An object of a module's globals whose ``__del__`` calls the client: by then the
    loop's daemon thread no longer runs, and the call waited for ever."""
    script = tmp_path / "calls_at_exit.py"
    script.write_text(textwrap.dedent(f"""\
        from agentpool.client import SyncClient

        class Tidy:
            def __init__(self) -> None:
                self.client = SyncClient({redis_server.url!r})
                self.queue = self.client.queue({queue_name!r})

            def __del__(self) -> None:
                self.queue.get("0" * 32)

        tidy = Tidy()
        tidy.queue.get("0" * 32)
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=BOUND)
    assert done.returncode == 0, done.stderr
    assert "ClientClosed: the interpreter is exiting" in done.stderr
