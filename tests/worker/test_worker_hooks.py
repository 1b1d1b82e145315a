"""Handler module hooks: startup/shutdown once per process, after_task on every outcome,
ready joining /readyz, and a failing startup stopping the process with one line."""

from __future__ import annotations

import signal
from pathlib import Path

import hook_handlers
import pytest
import redis.asyncio as aioredis
from worker_helpers import (
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

HANDLER = "hook_handlers:run"


@pytest.fixture(autouse=True)
def fresh_hook_records() -> None:
    hook_handlers.CALLS.clear()
    hook_handlers.OUTCOMES.clear()
    hook_handlers.READY.update(answer=True, checks=0)
    hook_handlers.AFTER_TASK.update(delay=0.0, finished=[])


async def outcome_of(task_id: str) -> str | None:
    outcomes = hook_handlers.OUTCOMES.get(task_id)
    return outcomes[0].status if outcomes else None


async def test_startup_state_reaches_tasks_and_shutdown_runs_once(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER)) as worker:
        assert hook_handlers.CALLS == ["startup"]
        ids = [await queue.submit({}) for _ in range(3)]
        for task_id in ids:
            done = await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 10,
                                    "the task to succeed")
            assert done.result == {"client": f"client-of-{worker.worker_id}"}
    assert hook_handlers.CALLS == ["startup", "shutdown"]


async def test_shutdown_waits_for_after_task_hooks_still_running(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    hook_handlers.AFTER_TASK["delay"] = 0.5
    async with running(settings(redis_url, queue_name, HANDLER)):
        task_id = await queue.submit({})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "success")
        assert hook_handlers.AFTER_TASK["finished"] == []
    assert hook_handlers.AFTER_TASK["at_shutdown"] == [task_id]


async def test_after_task_sees_every_outcome_and_its_errors_change_nothing(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HANDLER)) as worker:
        ok = await queue.submit({})
        failed = await queue.submit({"mode": "fail"})
        await eventually(lambda: task_in(queue, ok, "succeeded"), 10, "success")
        await eventually(lambda: task_in(queue, failed, "dead"), 10, "dead-letter")
        await eventually(lambda: outcome_of(failed), 5, "after_task of the failure")

        cancelled = await queue.submit({"mode": "sleep", "seconds": 30})
        await eventually(lambda: task_in(queue, cancelled, "running"), 10, "a running task")
        await queue.cancel(cancelled)
        await eventually(lambda: task_in(queue, cancelled, "cancelled"), 10, "the cancel")

        lost = await queue.submit({"mode": "sleep", "seconds": 30})
        await eventually(lambda: task_in(queue, lost, "running"), 10, "a running task")
        await queue.requeue_owner(worker.worker_id, reason="taken away")
        await eventually(lambda: outcome_of(lost), 10, "after_task of the lost run")
        await queue.cancel(lost)

    outcomes = {task_id: runs[0] for task_id, runs in hook_handlers.OUTCOMES.items()}
    assert outcomes[ok].status == "succeeded"
    assert outcomes[ok].result == {"client": f"client-of-{worker.worker_id}"}
    assert outcomes[failed].status == "failed"
    assert not outcomes[failed].retryable
    assert outcomes[failed].error is not None and "bad prompt" in outcomes[failed].error
    assert outcomes[cancelled].status == "cancelled"
    assert outcomes[lost].status == "lost"
    info = await queue.get(ok)
    assert info is not None and info.state == "succeeded"
    assert worker.info.done == 1


async def test_a_failing_ready_hook_stops_claims_and_fails_readyz_only(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, HANDLER, port=port, lease_seconds=0.6)):
        assert (await probe(port, "/readyz"))[0] == 200
        hook_handlers.READY["answer"] = ConnectionError("LLM API unreachable")
        await eventually(
            lambda: _probe_is(port, "/readyz", 503,
                              "ready check failed: ConnectionError: LLM API unreachable"),
            5, "readiness to fail")
        assert (await probe(port, "/livez"))[0] == 200
        task_id = await queue.submit({})
        checks = hook_handlers.READY["checks"]
        await eventually(lambda: hook_handlers.READY["checks"] >= checks + 3, 10,
                         "three more ready checks")
        assert await task_in(queue, task_id, "queued"), "a not-ready worker claimed a task"
        hook_handlers.READY["answer"] = True
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the claim")
        assert await _probe_is(port, "/readyz", 200, "ok")


async def _probe_is(port: int, path: str, code: int, text: str) -> bool:
    status, body = await probe(port, path)
    return status == code and text in body


async def test_a_failing_startup_hook_stops_the_process_with_one_line(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    env = worker_env(redis_url, queue_name, HANDLER)
    env["HOOKS_STARTUP_FAILS"] = "1"
    with worker_processes(tmp_path) as start:
        worker = start(env)
        assert await worker.exit_code(20) == 3
        lines = worker.logs().strip().splitlines()
    assert lines == [
        "agentpool-worker: startup hook of 'hook_handlers:run' failed: "
        "RuntimeError: OPENAI_API_KEY is not set"
    ]
    assert await TaskQueue(redis, queue_name).workers() == []


async def test_hooks_run_in_a_worker_process(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, HANDLER))
        task_id = await queue.submit({})
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 20, "success")
        assert str(done.result["client"]).startswith("client-of-pod-sub:")
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(20) == 0
    assert "after_task hook failed" in worker.logs()
