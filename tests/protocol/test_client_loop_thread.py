"""A SyncClient's event loop thread in a web app: a stream iterator that the garbage collector
finalizes there or on a thread the loop must not be waited from, a blocking call or a close
made there or as the interpreter exits, and an ``events()`` view that writes keep-alives while
its task is quiet."""

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

from agentpool.client import CLOSE_GRACE_SECONDS, SyncClient
from agentpool.connection import ClientClosed, redis_from_url
from agentpool.protocol import RunEvents, TaskEvent, TaskQueue
from agentpool.redis_server import RedisServer

T = TypeVar("T")

BOUND = 10.0
"""Seconds within which a call that must not hang returns."""
PROMPTLY = CLOSE_GRACE_SECONDS / 2
"""Seconds within which a close that must not wait for the calls it cancels has returned."""


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


def test_close_called_on_the_loop_thread_returns_at_once_and_ends_the_other_calls(
    redis_server: RedisServer, queue_name: str,
) -> None:
    """A coroutine on the client's loop closes it: a close that waited there for the calls it
    cancels held up the loop, every other thread's call with it, for CLOSE_GRACE_SECONDS,
    then failed, the async client left open."""
    client = SyncClient(redis_server.url)
    queue = client.queue(queue_name)
    task_id = queue.submit({})
    runner = client._runner
    ended: list[BaseException] = []

    def wait() -> None:
        try:
            queue.wait(task_id, timeout=BOUND * 3)
        except BaseException as error:  # handed to the test's thread
            ended.append(error)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    deadline = time.monotonic() + BOUND
    while not runner._waiting:
        assert time.monotonic() < deadline, "the other thread's wait was never handed over"
        time.sleep(0.01)

    async def close_on_the_loop() -> float:
        started = time.monotonic()
        client.close()
        return time.monotonic() - started

    took = asyncio.run_coroutine_threadsafe(close_on_the_loop(), runner.loop).result(BOUND)
    assert took < PROMPTLY
    waiter.join(PROMPTLY)
    assert not waiter.is_alive(), "the other thread's wait was not ended"
    assert len(ended) == 1 and isinstance(ended[0], ClientClosed), ended
    runner._thread.join(PROMPTLY)
    assert not runner._thread.is_alive() and runner.loop.is_closed()
    with pytest.raises(ClientClosed):
        queue.get(task_id)


def test_a_del_the_collector_runs_on_the_loop_thread_closes_the_client_cleanly(
    redis_server: RedisServer, queue_name: str, tmp_path: Path,
) -> None:
    """An object that closes its client in ``__del__``, collected on the client's loop
    thread: the async client's close runs there after it, so the process prints no
    coroutine never awaited nor task destroyed while pending."""
    script = tmp_path / "closes_on_the_loop.py"
    script.write_text(textwrap.dedent(f"""\
        import asyncio, gc, sys
        from agentpool.client import SyncClient
        from agentpool.connection import ClientClosed

        class Tidy:
            def __init__(self) -> None:
                self.client = SyncClient({redis_server.url!r})
                self.queue = self.client.queue({queue_name!r})
                self.cycle = self

            def __del__(self) -> None:
                self.client.close()

        async def collect() -> int:
            return gc.collect()

        tidy = Tidy()
        queue, runner = tidy.queue, tidy.client._runner
        task_id = queue.submit({{}})
        gc.disable()
        del tidy
        asyncio.run_coroutine_threadsafe(collect(), runner.loop).result({BOUND})
        gc.enable()
        runner._thread.join({PROMPTLY})
        print("loop thread alive:", runner._thread.is_alive())
        try:
            queue.get(task_id)
        except ClientClosed as error:
            print("later call:", error)
        gc.collect()
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=BOUND)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "loop thread alive: False\nlater call: the client is closed\n"


def test_a_script_whose_global_closes_its_client_in_del_exits_at_once(
    redis_server: RedisServer, queue_name: str, tmp_path: Path,
) -> None:
    """The interpreter runs the ``__del__`` as it clears the module, once the loop's daemon
    thread runs no more: a close that waited for the loop held the exit up for
    CLOSE_GRACE_SECONDS, then failed closing a loop still marked running."""
    script = tmp_path / "closes_at_exit.py"
    script.write_text(textwrap.dedent(f"""\
        import time
        from agentpool.client import SyncClient

        class Tidy:
            def __init__(self) -> None:
                self.client = SyncClient({redis_server.url!r})
                self.client.queue({queue_name!r}).get("0" * 32)

            def __del__(self) -> None:
                self.client.close()

        tidy = Tidy()
        print(time.time())
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=BOUND)
    exited = time.time()
    assert (done.returncode, done.stderr) == (0, "")
    assert exited - float(done.stdout) < PROMPTLY
