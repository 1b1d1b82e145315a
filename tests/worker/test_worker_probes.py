"""/livez, /readyz and /metrics: what fails which probe, and recovery without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import sample_handlers
from prometheus_client import REGISTRY
from worker_helpers import (
    HANDLERS,
    eventually,
    probe,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, free_port
from agentpool_worker import metrics


async def status_is(port: int, path: str, code: int, reason: str = "") -> bool:
    status, body = await probe(port, path)
    return status == code and reason in body


async def test_livez_fails_while_a_handler_blocks_the_loop_and_recovers(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:block_loop", port=port,
                                  loop_stall_seconds=0.5))
        await eventually(lambda: status_is(port, "/livez", 200), 15, "a live worker")
        task_id = await queue.submit({"seconds": 2.5})
        await eventually(lambda: status_is(port, "/livez", 503, "event loop blocked"), 5,
                         "liveness to fail")
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the run to end")
        await eventually(lambda: status_is(port, "/livez", 200), 5, "liveness to recover")
        assert worker.alive()


async def test_livez_fails_when_the_heartbeat_stalls_and_recovers(
    redis_url: str, queue_name: str,
) -> None:
    port = free_port()
    async with running(settings(redis_url, queue_name, port=port, lease_seconds=0.6,
                                redis_timeout_seconds=0.3)) as worker:
        await eventually(lambda: status_is(port, "/livez", 200), 5, "a live worker")
        unstuck = asyncio.Event()
        real = worker.queue.heartbeat

        async def stuck(*args: Any, **kwargs: Any) -> Any:
            await unstuck.wait()
            return await real(*args, **kwargs)

        worker.queue.heartbeat = stuck  # type: ignore[method-assign]
        await eventually(lambda: status_is(port, "/livez", 503, "no heartbeat attempt"), 5,
                         "liveness to fail")
        worker.queue.heartbeat = real  # type: ignore[method-assign]
        unstuck.set()
        await eventually(lambda: status_is(port, "/livez", 200), 5, "liveness to recover")


async def test_readyz_fails_while_redis_is_down_but_livez_does_not(queue_name: str) -> None:
    port = free_port()
    with RedisServer() as server:
        worker_settings = settings(server.url, queue_name, port=port, lease_seconds=0.6,
                                   redis_timeout_seconds=0.3)
        async with running(worker_settings):
            await eventually(lambda: status_is(port, "/readyz", 200), 5, "a ready worker")
            server.stop()
            await eventually(lambda: status_is(port, "/readyz", 503, "redis unreachable"), 5,
                             "readiness to fail")
            assert ready_gauge(queue_name) == 0, "the gauge says what /readyz says"
            # well past the heartbeat stall limit (lease + redis timeout): still live
            outage_end = asyncio.get_running_loop().time() + 2 * (
                worker_settings.heartbeat_stall_seconds)
            while asyncio.get_running_loop().time() < outage_end:
                assert await probe(port, "/livez") == (200, "ok\n")
                await asyncio.sleep(0.1)
            server.start()
            await eventually(lambda: status_is(port, "/readyz", 200), 10, "readiness back")
            assert ready_gauge(queue_name) == 1


def ready_gauge(queue: str) -> float | None:
    return REGISTRY.get_sample_value("agentpool_worker_ready", {"queue": queue})


async def test_metrics_expose_the_documented_names(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, port=port)):
        task_id = await queue.submit(None)
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 5, "a task")
        # counted once the worker reads Redis's answer, a moment after Redis shows it
        await eventually(lambda: REGISTRY.get_sample_value(
            "agentpool_worker_tasks_succeeded_total", {"queue": queue_name}) == 1, 5, "count")
        status, text = await probe(port, "/metrics")
    assert status == 200
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    for name in metrics.NAMES:
        assert name in names or f"{name}_bucket" in names, name
    assert f'agentpool_worker_tasks_succeeded_total{{queue="{queue_name}"}} 1.0' in text
    assert f'agentpool_worker_task_wait_seconds_bucket{{le="0.01",queue="{queue_name}"}}' in text
    assert f'agentpool_worker_task_duration_seconds_bucket{{le="3600.0",queue="{queue_name}"}}' \
        in text


async def test_readyz_fails_while_every_slot_is_held_by_a_thread_that_never_returns(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Sync runs that timed out but whose threads block on: the worker can claim nothing,
    so it says so instead of reading ready."""
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    sample_handlers.STUCK.clear()
    try:
        async with running(settings(redis_url, queue_name, f"{HANDLERS}:stuck", port=port,
                                    concurrency=2, task_timeout_seconds=0.3)):
            first = await queue.submit({"stuck": True}, max_attempts=1)
            await eventually(lambda: task_in(queue, first, "dead"), 10,
                             "the first run to time out")
            assert await probe(port, "/readyz") == (200, "ok\n"), "one slot is still free"
            await queue.submit({"stuck": True}, max_attempts=1)
            await eventually(lambda: status_is(port, "/readyz", 503, "all 2 slots are held"),
                             10, "readiness to fail")
            assert await probe(port, "/livez") == (200, "ok\n")
            sample_handlers.STUCK.set()
            await eventually(lambda: status_is(port, "/readyz", 200), 5, "readiness back")
            task_id = await queue.submit({})
            done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "a run")
            assert done.result == "returned"
    finally:
        sample_handlers.STUCK.set()
