"""Draining: on SIGTERM (finish, hand back the rest, exit 0) and on request through Redis
(finish, then idle and not ready until SIGTERM)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sample_handlers
from worker_helpers import (
    HANDLERS,
    WorkerProcess,
    eventually,
    probe,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool_worker import worker as worker_module


async def in_flight(queue: TaskQueue, n: int) -> bool:
    return (await queue.figures()).in_flight == n


async def test_sigterm_finishes_short_tasks_and_releases_long_ones(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    short = await queue.submit_many([{"seconds": 0.5}] * 2)
    long = await queue.submit_many([{"seconds": 60}] * 2)
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:sleep", concurrency=4,
                                  drain_seconds=2))
        await eventually(lambda: in_flight(queue, 4), 15, "four runs")
        worker.signal(signal.SIGTERM)
        await eventually(lambda: "draining" in worker.logs(), 5, "the drain to begin")
        late = await queue.submit({"seconds": 0})
        assert await worker.exit_code(10) == 0
    for task_id in short:
        assert await task_in(queue, task_id, "succeeded")
    for task_id in long:
        info = await task_in(queue, task_id, "queued")
        assert info is not None and info.attempts == 0  # handed back: no attempt spent
        assert info.error == "worker shutting down"
    late_info = await task_in(queue, late, "queued")
    assert late_info is not None and late_info.started_ms is None
    assert (await queue.figures()).in_flight == 0


async def test_drain_requested_through_redis_finishes_then_idles_until_sigterm(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    first = await queue.submit({"seconds": 1.0})
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:sleep", pod_name="pod-d",
                                  port=port, lease_seconds=0.9))
        await eventually(lambda: task_in(queue, first, "running"), 15, "the first run")
        assert (await probe(port, "/readyz"))[0] == 200
        await queue.request_drain("pod-d")
        await eventually(lambda: _status(port, "/readyz", 503), 5, "readiness to fail")
        assert (await probe(port, "/livez"))[0] == 200, "draining is not dead"
        later = await queue.submit_many([{"seconds": 0}] * 2)
        await eventually(lambda: task_in(queue, first, "succeeded"), 10, "in-flight work")
        drained = await eventually(lambda: _worker_in(queue, "pod-d", "drained"), 5, "drained")
        # several heartbeats later it is still there, idle, alive and not ready
        await eventually(
            lambda: _beat_after(queue, "pod-d", drained.last_heartbeat + 1.0), 5, "heartbeats")
        assert worker.alive()
        assert await probe(port, "/livez") == (200, "ok\n")
        assert await probe(port, "/readyz") == (503, "worker is drained\n")
        for task_id in later:
            assert await task_in(queue, task_id, "queued")
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(3) == 0


async def _status(port: int, path: str, code: int) -> bool:
    return (await probe(port, path))[0] == code


async def _worker_in(queue: TaskQueue, pod: str, state: str) -> object:
    return next((w for w in await queue.workers() if w.pod == pod and w.state == state), None)


async def _beat_after(queue: TaskQueue, pod: str, when: float) -> bool:
    return any(w.pod == pod and w.last_heartbeat > when for w in await queue.workers())


async def test_runs_slow_to_stop_are_handed_back_at_the_drain_deadline(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A handler that takes long to react to its cancellation (a cleanup call that hangs)
    neither keeps its task until its lease expires (an attempt spent) nor the worker from
    exiting: the task goes back to the queue at the deadline, the worker waits a bounded
    time for the run."""
    monkeypatch.setattr(worker_module, "STOP_SECONDS", 1.0)
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"cleanup": 60})
    worker_settings = settings(redis_url, queue_name, f"{HANDLERS}:slow_to_stop",
                               drain_seconds=0.5)
    sample_handlers.SLOW_TO_STOP.clear()
    try:
        async with running(worker_settings) as worker:
            await eventually(lambda: task_in(queue, task_id, "running"), 10, "the run")
            worker.stop()
            info = await eventually(lambda: task_in(queue, task_id, "queued"), 5,
                                    "the task handed back")
            assert info.attempts == 0 and info.error == "worker shutting down"
            assert not sample_handlers.SLOW_TO_STOP[0].done(), "the run is still cleaning up"
        # running() gives the worker drain_seconds + 10 s to return; it returned.
    finally:
        for run in sample_handlers.SLOW_TO_STOP:
            run.cancel()


async def test_a_run_that_ignores_its_cancellation_does_not_keep_the_process(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Its task goes back at the drain deadline; the process then exits instead of waiting
    for the run (the pod would otherwise be killed at drainSeconds + 15 s)."""
    queue = TaskQueue(redis, queue_name)
    proc = WorkerProcess(worker_env(redis_url, queue_name, f"{HANDLERS}:ignores_cancellation",
                                    drain_seconds=1), tmp_path / "worker.log")
    try:
        task_id = await queue.submit({})
        await eventually(lambda: task_in(queue, task_id, "running"), 15, "the run")
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.exit_code(worker_module.STOP_SECONDS + 15) == 0
        assert await task_in(queue, task_id, "queued")
    finally:
        proc.close()
