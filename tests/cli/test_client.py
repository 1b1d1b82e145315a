from __future__ import annotations

import asyncio
import threading

import pytest
import redis.exceptions

from agentpool.client import Client, ClientConfigError, SyncClient
from agentpool.protocol import CancelOutcome, TaskQueue
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
