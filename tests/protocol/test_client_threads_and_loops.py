"""A producer's client in a web server's process: the first calls of a forked worker made from
several threads at once, a Client reached from two event loops at once, and what a wait that
runs out of time says."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import pytest
from redis_freeze import frozen

from agentpool.client import Client, SyncClient
from agentpool.connection import ClientClosed
from agentpool.protocol import TaskInfo
from agentpool.redis_server import RedisServer

THREADS = 8


def _forked(child: Callable[[int], NoReturn]) -> str:
    """Run `child(write)` in a forked process that reports on the pipe `write`: what it
    reported, once it exited 0."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child(write)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        said = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said or "the child did not report"
    return said


def _first_calls_from_threads(queue: Any, report: int) -> NoReturn:
    """A forked child's body: THREADS threads make their first call together; the child
    writes what each got and exits 0 if every one was answered within the bound."""
    code = 1
    try:
        signal.alarm(60)  # a hang elsewhere ends the child too
        barrier = threading.Barrier(THREADS)
        got: list[str] = []

        def call() -> None:
            barrier.wait()
            try:
                queue.get("0" * 32)
                got.append("answered")
            except Exception as error:  # reported to the parent
                got.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=call, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in threads)
        os.write(report, f"{sorted(got)} stuck={stuck}".encode())
        code = 0 if stuck == 0 and got == ["answered"] * THREADS else 3
    finally:
        os._exit(code)


def test_threads_making_a_forked_childs_first_calls_together_are_all_answered(
    redis_server: RedisServer,
) -> None:
    """A SyncClient made at import, then a pre-fork server's worker whose threads serve
    requests at once: the first thread used to note the child's pid before the child's loop
    was running, and the threads arriving meanwhile called on the parent's loop, whose thread
    the child does not have: their calls never returned."""
    client = SyncClient.from_url(redis_server.url)
    queue = client.queue(f"fork-threads-{uuid.uuid4().hex[:8]}")
    client.ping()
    try:
        for _ in range(5):  # the race is lost most of the time, not every time
            _forked(lambda write: _first_calls_from_threads(queue, write))
        assert queue.get("0" * 32) is None  # the parent's client carries on
    finally:
        client.close()


async def _cancelled(call: asyncio.Task[Any]) -> None:
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call


async def _within(call: Awaitable[Any]) -> Any:
    async with asyncio.timeout(10):  # a refused call raises at once; it must never hang
        return await call


def test_a_call_on_a_second_event_loop_while_the_first_has_calls_in_flight_raises_at_once(
    redis_server: RedisServer,
) -> None:
    """Threads each running ``asyncio.run`` on one Client used to hang: the pool's lock, the
    submit groups and the line follow one loop, and flipped between two their calls waited
    for ever. The call on the second loop is refused; the first loop's wait carries on."""
    client = Client.from_url(redis_server.url)
    queue = client.queue(f"two-loops-{uuid.uuid4().hex[:8]}")
    task_id = asyncio.run(queue.submit("waited for"))
    waiting = threading.Event()
    waited: list[TaskInfo | BaseException] = []

    async def wait_on_first_loop() -> None:
        call = asyncio.ensure_future(queue.wait(task_id, timeout=30))
        await asyncio.sleep(0)  # the wait has started: one call in flight on this loop
        waiting.set()
        try:
            waited.append(await call)
        except BaseException as error:
            waited.append(error)
            raise

    first = threading.Thread(target=asyncio.run, args=(wait_on_first_loop(),))
    first.start()
    try:
        assert waiting.wait(timeout=10)

        async def events() -> None:
            async for _ in queue.events(task_id, follow=False):
                pass

        second_loop_calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "submit": lambda: queue.submit("refused"),
            "get": lambda: queue.get(task_id),
            "wait": lambda: queue.wait(task_id, timeout=5),
            "events": events,
            "ping": client.ping,
        }
        for what, call in second_loop_calls.items():
            with pytest.raises(RuntimeError, match=(
                    r"calls in flight on another event loop.*one event loop at a time: make "
                    r"one Client per event loop.*or use SyncClient")):
                asyncio.run(_within(call()))
                raise AssertionError(f"{what} went through")

        async def run_the_task() -> None:
            async with Client.from_url(redis_server.url) as worker:
                done = worker.queue(queue.name)
                claimed = (await done.claim("w1", 1, 30)).tasks
                assert [task.id for task in claimed] == [task_id]
                assert await done.complete(claimed[0], "done")

        asyncio.run(run_the_task())
        first.join(timeout=30)
        assert not first.is_alive()
        assert [getattr(info, "state", info) for info in waited] == ["succeeded"]
        assert asyncio.run(_within(queue.figures())).queued == 0  # the first loop is gone
    finally:
        first.join(timeout=30)
        asyncio.run(client.aclose())


def test_a_loop_without_calls_in_flight_gives_way_to_another(redis_server: RedisServer) -> None:
    """A loop that still runs but has no call in flight (an app's loop between requests)
    lets another loop use the client, and takes it back once that one's calls are over."""
    client = Client.from_url(redis_server.url)
    queue = client.queue(f"loops-in-turn-{uuid.uuid4().hex[:8]}")
    loop = asyncio.new_event_loop()
    turn = threading.Thread(target=loop.run_forever)
    turn.start()

    def on_running_loop(call: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(_within(call), loop).result(timeout=30)

    try:
        first = on_running_loop(queue.submit("first"))
        assert loop.is_running()
        second = asyncio.run(_within(queue.submit("second")))
        third = on_running_loop(queue.submit("third"))
        assert on_running_loop(queue.figures()).queued == len({first, second, third}) == 3
    finally:
        with contextlib.suppress(Exception):
            on_running_loop(client.aclose())
        loop.call_soon_threadsafe(loop.stop)
        turn.join(timeout=30)
        loop.close()


async def test_a_wait_that_runs_out_of_time_says_how_many_tasks_are_not_final(
    redis_server: RedisServer,
) -> None:
    """The builtin TimeoutError a wait raised said nothing; it still is one (``except
    TimeoutError`` goes on working), with the count, the queue and the time given."""
    name = f"timeouts-{uuid.uuid4().hex[:8]}"
    async with Client.from_url(redis_server.url) as client:
        queue = client.queue(name)
        ids = [await queue.submit(n) for n in range(3)]
        claimed = (await queue.claim("w1", 1, 30)).tasks[0]
        assert await queue.complete(claimed, "done")

        with pytest.raises(TimeoutError, match=rf"^1 of 1 tasks of queue '{name}' not final "
                                               r"after 0\.2s$"):
            await queue.wait(ids[1], timeout=0.2)
        with pytest.raises(TimeoutError, match=rf"^2 of 3 tasks of queue '{name}' not final "
                                               r"after 0\.2s$"):
            await queue.wait_many(ids, timeout=0.2)
        handed: list[str] = []
        with pytest.raises(TimeoutError, match=rf"^2 of 3 tasks of queue '{name}' not final "
                                               r"after 0s$"):
            async for info in queue.as_finished(ids, timeout=0):
                handed.append(info.id)
        assert handed == [claimed.id]

    def blocking_wait() -> None:
        with SyncClient.from_url(redis_server.url) as blocking:
            blocking.queue(name).wait(ids[2], timeout=0.2)

    with pytest.raises(TimeoutError, match=rf"^1 of 1 tasks of queue '{name}' not final "
                                           r"after 0\.2s$"):
        await asyncio.to_thread(blocking_wait)


async def test_waits_on_a_client_with_a_small_pool_see_their_tasks_finish(
    redis_server: RedisServer,
) -> None:
    """A producer that lowers ``max_connections`` to hold fewer connections: its waits'
    subscriptions used to take every pooled connection, and no wait could read its task
    (each waited for its timeout, or for ever without one)."""
    name = f"small-pool-{uuid.uuid4().hex[:8]}"
    async with (Client.from_url(redis_server.url, max_connections=4) as client,
                Client.from_url(redis_server.url) as worker):
        queue = client.queue(name)
        ids = [await queue.submit(n) for n in range(6)]
        waits = [asyncio.ensure_future(queue.wait(task_id, timeout=15)) for task_id in ids]
        await asyncio.sleep(0.5)  # the waits are subscribed, or polling
        done = worker.queue(name)
        for task in (await done.claim("w1", len(ids), 30)).tasks:
            assert await done.complete(task, "done")
        infos = await asyncio.gather(*waits)
        assert [info.state for info in infos] == ["succeeded"] * len(ids)


def test_threads_submitting_through_a_sync_client_with_a_small_pool_all_get_through() -> None:
    """``max_connections=`` makes the blocking client's pool small too: submits beyond the
    line's connections (here every first one, whose script the new server does not know yet)
    went through redis-py's pool, which raised "Too many connections" past its cap instead of
    waiting for a connection."""
    threads, each = 48, 5
    with RedisServer() as server, SyncClient.from_url(server.url, max_connections=2) as client:
        queue = client.queue("small-sync-pool")
        barrier = threading.Barrier(threads)
        failed: list[str] = []
        submitted: list[str] = []

        def submit() -> None:
            barrier.wait()
            for n in range(each):
                try:
                    submitted.append(queue.submit(n))
                except Exception as error:  # counted below
                    failed.append(f"{type(error).__name__}: {error}")

        workers = [threading.Thread(target=submit) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert not any(worker.is_alive() for worker in workers)
        assert failed == []
        assert len(set(submitted)) == queue.figures().queued == threads * each


def test_a_submit_waiting_for_a_connection_when_the_client_closes_is_not_sent() -> None:
    """`close` ends the calls other threads wait in: one waiting for a connection of the
    blocking client's pool raises ClientClosed once it gets one, instead of submitting on a
    connection the closed client then leaves open."""
    with RedisServer() as server:
        client = SyncClient.from_url(server.url, max_connections=1)
        queue = client.queue("closed-while-waiting")
        queue.submit("first")  # the client's parts and the script, made
        line = client._blocking
        assert line is not None
        line._through.acquire()  # the pool's one connection, busy
        outcome: list[str] = []

        def submit() -> None:
            try:
                line._through_client("0" * 40, "return 1", ["ap:{x}:queued"], [])
                outcome.append("sent")
            except ClientClosed:
                outcome.append("ClientClosed")
            except Exception as error:  # shown by the assertion
                outcome.append(f"{type(error).__name__}: {error}")

        waiting = threading.Thread(target=submit)
        waiting.start()
        client.close()
        line._through.release()
        waiting.join(timeout=10)
        assert outcome == ["ClientClosed"]


def test_a_loop_that_takes_the_client_back_still_refuses_another_loop(
    redis_server: RedisServer,
) -> None:
    """A loop stopped with a call in flight gives way to another; when it takes the client
    back and that old call ends, the end used to come off the new count: below zero, the next
    call in flight counted nothing, and a second loop was let in beside the first."""
    client = Client.from_url(redis_server.url)
    queue = client.queue(f"turns-{uuid.uuid4().hex[:8]}")
    task_id = asyncio.run(queue.submit("waited for"))
    first = asyncio.new_event_loop()

    async def start_a_wait(timeout: float) -> asyncio.Task[TaskInfo]:
        call = asyncio.ensure_future(queue.wait(task_id, timeout=timeout))
        await asyncio.sleep(0.1)  # the wait is in flight
        return call

    async def take_back_and_see_it_end(call: asyncio.Task[TaskInfo]) -> None:
        await queue.get(task_id)
        with pytest.raises(TimeoutError):
            await call

    left_behind = first.run_until_complete(start_a_wait(0.5))
    asyncio.run(_within(queue.get(task_id)))  # the stopped loop gives way
    first.run_until_complete(take_back_and_see_it_end(left_behind))
    running = threading.Thread(target=first.run_forever)
    running.start()
    try:
        in_flight = asyncio.run_coroutine_threadsafe(start_a_wait(30), first).result(10)
        with pytest.raises(RuntimeError, match="calls in flight on another event loop"):
            asyncio.run(_within(queue.get(task_id)))
        asyncio.run_coroutine_threadsafe(_cancelled(in_flight), first).result(10)
    finally:
        first.call_soon_threadsafe(first.stop)
        running.join(timeout=30)
        first.close()
        asyncio.run(client.aclose())


async def test_a_wait_that_runs_out_of_time_on_a_redis_that_does_not_answer_says_so() -> None:
    """A frozen Redis: the wait's TimeoutError said the task was not final, as though Redis
    had answered that it was not."""
    with RedisServer() as server:
        async with Client.from_url(server.url) as client:
            queue = client.queue("frozen")
            task_id = await queue.submit("never read")
            with frozen(server), pytest.raises(
                    TimeoutError, match=r"^1 of 1 tasks of queue 'frozen' not final after "
                                        r"1\.5s; Redis did not answer$"):
                await queue.wait(task_id, timeout=1.5)

            async def wait_while_it_freezes() -> None:
                waiting = asyncio.ensure_future(queue.wait(task_id, timeout=4))
                await asyncio.sleep(1.5)  # read once, then again after a second without news
                with frozen(server):
                    await waiting

            with pytest.raises(TimeoutError, match=(
                    r"^1 of 1 tasks of queue 'frozen' not final after 4s; Redis did not "
                    r"answer for the last [\d.]+s$")):
                await wait_while_it_freezes()


def _close_while_the_first_call_starts(client: SyncClient, queue: Any, delay: float,
                                       report: int) -> NoReturn:
    """A forked child's body: a thread makes the child's first call while the main thread
    closes the client; the child writes how many of the client's loop threads still run."""
    code = 1
    try:
        signal.alarm(30)

        def first_call() -> None:
            with contextlib.suppress(Exception):  # ClientClosed, or answered before close
                queue.get("0" * 32)

        caller = threading.Thread(target=first_call, daemon=True)
        caller.start()
        time.sleep(delay)
        client.close()
        caller.join(timeout=15)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                thread.name == "agentpool-client" for thread in threading.enumerate()):
            time.sleep(0.01)
        running = sum(thread.name == "agentpool-client" for thread in threading.enumerate())
        os.write(report, f"{running}".encode())
        code = 0
    finally:
        os._exit(code)


def test_closing_a_forked_sync_client_as_its_first_call_starts_leaves_nothing_running(
    redis_server: RedisServer,
) -> None:
    """``close`` in a forked child while another thread's first call was making the child's
    loop and connections: close saw the parent's, left them be, and the child's were made
    after it and ran on, a loop thread and its connections for the rest of the process."""
    client = SyncClient.from_url(redis_server.url)
    queue = client.queue(f"fork-close-{uuid.uuid4().hex[:8]}")
    client.ping()
    left: list[str] = []
    try:
        for attempt in range(16):  # the race is lost some of the time, not every time
            left.append(_forked(functools.partial(
                _close_while_the_first_call_starts, client, queue, attempt % 4 / 1000)))
        assert left == ["0"] * 16
        assert queue.get("0" * 32) is None  # the parent's client carries on
    finally:
        client.close()
