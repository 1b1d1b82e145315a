"""Checkpoints through the worker: the next attempt resumes from the last one after kill -9,
and a zombie's checkpoint is refused (its run stops, nothing of it is recorded)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from worker_helpers import (
    HANDLERS,
    eventually,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import TaskQueue

HANDLER = f"{HANDLERS}:stepper"


async def checkpointed(queue: TaskQueue, task_id: str, step: int, by: int = 1) -> bool:
    state = await queue.checkpoint_state(task_id)
    return bool(state) and state["step"] >= step and state["by"] == by


async def test_after_kill_9_the_next_attempt_resumes_from_the_last_checkpoint(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"steps": 40, "every": 5, "pause": 0.05})
    with worker_processes(tmp_path) as start:
        first = start(worker_env(redis_url, queue_name, HANDLER, pod_name="pod-a"))
        await eventually(lambda: checkpointed(queue, task_id, 10), 20, "two checkpoints")
        first.signal(signal.SIGKILL)
        await first.exit_code(10)
        saved = (await queue.checkpoint_state(task_id))["step"]
        await queue.requeue_pod("pod-a")
        start(worker_env(redis_url, queue_name, HANDLER, pod_name="pod-b"))
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 30, "success")
    assert done.result["total"] == sum(range(40))
    assert done.result["attempt"] == 2
    assert done.result["resumed_from"] >= saved >= 10
    assert done.result["resumed_from"] % 5 == 0
    assert (await queue.checkpoint_state(task_id) or {}).get("by") == 2  # the second run's


async def test_a_zombie_checkpoint_is_refused_and_its_run_stops(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"steps": 60, "every": 1, "pause": 0.05})
    async with running(settings(redis_url, queue_name, HANDLER, lease_seconds=1.0,
                                concurrency=1)) as zombie:
        await eventually(lambda: checkpointed(queue, task_id, 2), 10, "a first checkpoint")
        partitioned = asyncio.Event()
        real = zombie.queue.heartbeat

        async def cut_off(*args: Any, **kwargs: Any) -> Any:
            await partitioned.wait()
            return await real(*args, **kwargs)

        zombie.queue.heartbeat = cut_off  # type: ignore[method-assign]
        await eventually(lambda: _reaped(queue, task_id), 10, "the lease to be reaped")
        with worker_processes(tmp_path) as start:
            start(worker_env(redis_url, queue_name, HANDLER, pod_name="pod-b"))
            await eventually(lambda: zombie.metrics.checkpoints_refused._value.get() >= 1, 10,
                             "the zombie's checkpoint to be refused")
            assert zombie.metrics.lost._value.get() == 1
            done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 30, "success")
        zombie.queue.heartbeat = real  # type: ignore[method-assign]
        partitioned.set()
    assert done.result["total"] == sum(range(60))
    assert done.result["attempt"] == 2
    assert done.result["resumed_from"] >= 2
    assert (await queue.figures()).stats["checkpoints_refused"] >= 1


async def _reaped(queue: TaskQueue, task_id: str) -> bool:
    await queue.reap_expired()
    info = await queue.get(task_id)
    return info is not None and info.state == "queued"


async def test_the_simulated_agent_reports_progress_and_resumes_after_kill_9(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"mean_seconds": 2.0, "steps": 8, "seed": 3})
    handler = "agentpool_worker.builtin:simulated_agent"
    with worker_processes(tmp_path) as start:
        first = start(worker_env(redis_url, queue_name, handler, pod_name="pod-a"))
        await eventually(lambda: _step_saved(queue, task_id, 2), 20, "two steps checkpointed")
        first.signal(signal.SIGKILL)
        await first.exit_code(10)
        await queue.requeue_pod("pod-a")
        start(worker_env(redis_url, queue_name, handler, pod_name="pod-b"))
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 30, "success")
    assert done.result["attempt"] == 2
    assert done.result["resumed_from_step"] >= 2
    assert done.progress is not None and done.progress.message == "step 8 of 8"
    progress = [e for e in [e async for e in queue.events(task_id, follow=False)]
                if e.kind == "progress"]
    assert {e.attempt for e in progress} == {1, 2}
    assert progress[-1].data == {"fraction": 1.0, "message": "step 8 of 8"}


async def _step_saved(queue: TaskQueue, task_id: str, step: int) -> bool:
    state = await queue.checkpoint_state(task_id)
    return bool(state) and state["step"] >= step


async def test_a_sync_handler_checkpoints_from_its_thread_and_resumes_after_a_failure(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sync_stepper")) as worker:
        task_id = await queue.submit({"steps": 6, "fail_at": 3})
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "success")
        assert worker.metrics.checkpoints._value.get() >= 6
    assert done.result == {"resumed_from": 3, "attempt": 2}


async def test_hundreds_of_runs_checkpoint_at_once_without_a_redis_error(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Concurrency 400, every run checkpointing at the same moments: more requests at once than
    the client keeps connections (100). They wait for one; none fails, so the worker neither
    counts a Redis error nor reports Redis down (redis-py's own pool fails them)."""
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"steps": 3, "every": 1, "pause": 0.05}] * 400)
    async with running(settings(redis_url, queue_name, HANDLER, concurrency=400,
                                lease_seconds=10)) as worker:
        async def all_done() -> bool:
            return (await queue.figures()).stats.get("succeeded", 0) == 400

        await eventually(all_done, 60, "400 successes")
        assert worker.metrics.redis_errors._value.get() == 0
        assert worker.metrics.checkpoints._value.get() == 1200
    results = [info.result for info in [await queue.get(task_id) for task_id in ids] if info]
    assert [r["attempt"] for r in results] == [1] * 400
