from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from agentpool import client as client_module
from agentpool.client import Client, ClientClosed, ClientConfigError, SyncClient
from agentpool.protocol import CancelOutcome, TaskQueue
from agentpool.protocol.waiting import waits_subscribed
from agentpool.redis_server import free_port


async def complete_one(url: str, queue: str, result_of: str = "done") -> None:
    """A minimal worker: claim one task (polling) and complete it."""
    async with Client.from_url(url) as client:
        q = client.queue(queue)
        for _ in range(500):
            batch = await q.claim("pod-t:inst", 1, 30)
            if batch.tasks:
                [task] = batch.tasks
                assert await q.complete(task, {result_of: task.payload_raw})
                return
            await asyncio.sleep(0.01)
    raise AssertionError("no task to claim")


def test_sync_client_round_trip(redis_url: str, queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        task_id = queue.submit({"prompt": "hi"}, priority=2)
        assert queue.figures().queued == 1
        worker = threading.Thread(target=lambda: asyncio.run(complete_one(redis_url, queue_name)))
        worker.start()
        info = queue.wait(task_id, timeout=10)
        worker.join()
    assert info.state == "succeeded"
    assert info.result == {"done": '{"prompt":"hi"}'}


def test_sync_client_producer_operations(redis_url: str, queue_name: str) -> None:
    with SyncClient(redis_url) as client:
        queue = client.queue(queue_name)
        ids = queue.submit_many([1, 2, 3])
        again = queue.submit("x", idempotency_key="k")
        assert queue.submit("x", idempotency_key="k") == again
        got = queue.get(ids[0])
        assert got is not None and got.payload == 1
        assert queue.get("missing") is None
        assert queue.cancel(ids[1]) is CancelOutcome.CANCELLED
        with pytest.raises(TimeoutError):
            queue.wait(ids[0], timeout=0.1)
        assert queue.dead_letters() == []
        assert queue.requeue_dead() == 0
        assert queue.purge_dead() == 0
        assert queue.workers() == []
        assert queue.figures().queued == 3


def test_sync_client_works_inside_a_running_event_loop(redis_url: str,
                                                       queue_name: str) -> None:
    async def notebook_cell() -> str:
        with SyncClient(redis_url) as client:
            return client.queue(queue_name).submit("from a loop")

    task_id = asyncio.run(notebook_cell())
    with SyncClient(redis_url) as client:
        info = client.queue(queue_name).get(task_id)
    assert info is not None and info.payload == "from a loop"


def test_sync_client_errors_propagate_and_close_is_idempotent(queue_name: str) -> None:
    client = SyncClient(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1)
    with pytest.raises(redis.exceptions.ConnectionError):
        client.queue(queue_name).submit(1)
    client.close()
    client.close()


async def test_client_from_environment(redis_url: str, queue_name: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPOOL_REDIS_URL", redis_url)
    async with Client.from_url() as client:
        queue = client.queue(queue_name)
        assert isinstance(queue, TaskQueue)
        assert client.queue(queue_name) is queue
        await client.ping()
        assert await queue.get(await queue.submit(1)) is not None


def test_client_needs_a_usable_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTPOOL_REDIS_URL", raising=False)
    with pytest.raises(ClientConfigError, match="no Redis URL"):
        Client.from_url()
    with pytest.raises(ClientConfigError, match="no Redis URL"):
        SyncClient()
    with pytest.raises(ClientConfigError) as caught:
        Client.from_url("http://user:secret@host/0")
    assert "secret" not in str(caught.value)
    assert Client.from_url("redis://:pw@h:1/0").display_url == "redis://:***@h:1/0"


def test_a_sync_client_made_before_fork_serves_the_child(
    redis_url: str, queue_name: str, tmp_path: Path,
) -> None:
    """A web server imports the app (and its SyncClient), then forks its workers: the loop's
    thread stayed in the parent, so every call through it hung in the child."""
    client = SyncClient.from_url(redis_url)
    queue = client.queue(queue_name)
    queue.submit({"from": "parent"})
    report = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:  # the child: exit without running the parent's test machinery
        code = 1
        try:
            signal.alarm(20)
            task_id = queue.submit({"from": "child"})
            report.write_text(json.dumps({
                "queued": queue.figures().queued, "state": queue.get(task_id).state,
            }))
            client.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert json.loads(report.read_text()) == {"queued": 2, "state": "queued"}
        assert queue.figures().queued == 2  # the parent's client still serves the parent
    finally:
        client.close()


def raising_in_thread(call: Callable[[], object], name: str | None = None
                      ) -> tuple[threading.Thread, list[BaseException]]:
    """`call` started in a thread of its own; the list gets what it raised."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, outcome


def test_closing_a_sync_client_ends_the_calls_other_threads_wait_in(
    redis_url: str, queue_name: str,
) -> None:
    client = SyncClient.from_url(redis_url)
    queue = client.queue(queue_name)
    task_id = queue.submit({})
    waiter, outcome = raising_in_thread(lambda: queue.wait(task_id, timeout=30))
    deadline = time.monotonic() + 10
    while not waits_subscribed.get(client._parts()[1].redis):
        assert time.monotonic() < deadline, "the wait did not start"
        time.sleep(0.01)
    client.close()
    waiter.join(10)
    assert not waiter.is_alive(), "the waiting thread still waits after close"
    assert [type(error) for error in outcome] == [ClientClosed]
    with pytest.raises(ClientClosed):
        queue.submit({})
    with pytest.raises(ClientClosed):
        queue.get(task_id)


def test_sync_client_takes_the_async_clients_pool_options(redis_url: str,
                                                         queue_name: str) -> None:
    with SyncClient.from_url(redis_url, pool_timeout=5) as client:
        queue = client.queue(queue_name)
        queue.submit({})  # on the blocking line, whose client takes no pool_timeout
        assert queue.figures().queued == 1


async def test_a_closed_clients_line_keeps_no_connection_of_calls_in_flight(
    redis_url: str, queue_name: str,
) -> None:
    """Calls in flight when the client closes put their line connections back: they are
    closed instead of kept open for nobody."""
    client = Client.from_url(redis_url)
    queue = client.queue(queue_name)
    await queue.submit({})  # load the script
    submits = [asyncio.ensure_future(queue.submit({"n": n})) for n in range(8)]
    await asyncio.sleep(0)
    await client.aclose()
    await asyncio.gather(*submits)
    line = client._line
    assert line is not None
    servers = [line._one] if line._one is not None else list(line._nodes.values())
    assert [(len(s.idle), s.opened) for s in servers if s is not None] == [(0, 0)] * len(servers)


def test_a_call_handed_over_while_the_client_closes_ends_closed(
    redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread between the client's `closed` check and handing its call to the loop when
    another thread closes the client: the call ends with ClientClosed (it met a closed event
    loop, or waited for ever), and the close is not held up past the hand-over."""
    client = SyncClient.from_url(redis_url)
    queue = client.queue(queue_name)
    task_id = queue.submit({})
    entered, proceed = threading.Event(), threading.Event()
    real = client_module.asyncio.run_coroutine_threadsafe

    def slow_hand_over(coro: Any, loop: Any) -> Any:
        if threading.current_thread().name == "late":
            entered.set()
            proceed.wait(10)
        return real(coro, loop)

    monkeypatch.setattr(client_module.asyncio, "run_coroutine_threadsafe", slow_hand_over)
    caller, outcome = raising_in_thread(lambda: queue.wait(task_id, timeout=5), name="late")
    assert entered.wait(10)
    closer = threading.Thread(target=client.close)
    closer.start()
    closer.join(1.0)  # the close waits for the hand-over in progress (before: it went on)
    proceed.set()
    caller.join(10)
    closer.join(10)
    assert not caller.is_alive() and not closer.is_alive()
    assert [type(error) for error in outcome] == [ClientClosed]


def test_a_signal_handler_that_closes_the_client_during_a_hand_over_ends_it_closed(
    redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shutdown handler (here SIGUSR1's) closes the client while the main thread is handing
    a call to the loop: the close finishes and the interrupted call ends with ClientClosed
    (with a plain lock the handler waited for its own thread for ever)."""
    client = SyncClient.from_url(redis_url)
    queue = client.queue(queue_name)
    queue.submit({})
    real = client_module.asyncio.run_coroutine_threadsafe
    armed = [True]

    def hand_over(coro: Any, loop: Any) -> Any:
        if armed and threading.current_thread() is threading.main_thread():
            armed.clear()
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(coro, loop)

    previous = signal.signal(signal.SIGUSR1, lambda *_: client.close())
    monkeypatch.setattr(client_module.asyncio, "run_coroutine_threadsafe", hand_over)
    try:
        with pytest.raises(ClientClosed):
            queue.figures()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not armed, "the signal was not raised in a hand-over"
