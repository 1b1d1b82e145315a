"""Handler module hooks: startup/shutdown once per process, after_task on every outcome,
ready joining /readyz, and a failing startup stopping the process with one line."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hook_handlers
import pytest
import redis.asyncio as aioredis
import structlog
import unruly_hooks
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
from agentpool_worker import worker as worker_module
from agentpool_worker.worker import Worker

HANDLER = "hook_handlers:run"


@pytest.fixture(autouse=True)
def fresh_hook_records() -> None:
    hook_handlers.CALLS.clear()
    hook_handlers.OUTCOMES.clear()
    hook_handlers.READY.update(answer=True, checks=0)
    hook_handlers.AFTER_TASK.update(delay=0.0, finished=[], follow_up_for=set())
    hook_handlers.FOLLOW_UPS.clear()


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


async def test_after_task_may_submit_for_a_run_that_ended_not_for_a_stopped_one(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A follow-up (a notification, a next step) submitted from the hook of a run that
    succeeded or failed is queued; the hook of a cancelled run may not act for it."""
    queue = TaskQueue(redis, queue_name)
    ok = await queue.submit({})
    failed = await queue.submit({"mode": "fail"})
    cancelled = await queue.submit({"mode": "sleep", "seconds": 30})
    hook_handlers.AFTER_TASK["follow_up_for"] = {ok, failed, cancelled}  # before any run ends
    async with running(settings(redis_url, queue_name, HANDLER)):
        await eventually(lambda: task_in(queue, cancelled, "running"), 10, "a running task")
        await queue.cancel(cancelled)
        await eventually(lambda: len(hook_handlers.FOLLOW_UPS) == 3, 10, "the three hooks")

        assert hook_handlers.FOLLOW_UPS[cancelled] == "LeaseLost"
        for task_id in (ok, failed):
            follow_up = await queue.get(hook_handlers.FOLLOW_UPS[task_id])
            assert follow_up is not None and follow_up.payload == {"follow_up_of": task_id}


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


@pytest.mark.parametrize(("fails", "line"), [
    ("1", "RuntimeError: OPENAI_API_KEY is not set"),
    ("lines", "ValueError: 2 validation errors for Settings; api_key; Field required"),
], ids=["one-line-error", "error-of-several-lines"])
async def test_a_failing_startup_hook_stops_the_process_with_one_line(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis, fails: str,
    line: str,
) -> None:
    env = worker_env(redis_url, queue_name, HANDLER)
    env["HOOKS_STARTUP_FAILS"] = fails
    with worker_processes(tmp_path) as start:
        worker = start(env)
        assert await worker.exit_code(20) == 3
        lines = worker.logs().strip().splitlines()
    assert lines == [f"agentpool-worker: startup hook of 'hook_handlers:run' failed: {line}"]
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


UNRULY = "unruly_hooks:run"


@pytest.fixture
def unruly() -> Iterator[dict[str, Any]]:
    """unruly_hooks' state, reset, with its gate opened at the end."""
    unruly_hooks.STATE.update(startup_seconds=0.0, ready_hangs=False, ready_checks=0,
                              after_task_gated=False, after_task_hang_first=0,
                              after_task_done=[], startup_began=False)
    unruly_hooks.GATE.clear()
    for key in unruly_hooks.RUNNING:
        unruly_hooks.RUNNING[key] = 0
    yield unruly_hooks.STATE
    unruly_hooks.GATE.set()


async def test_a_hung_sync_shutdown_hook_does_not_keep_the_process_alive(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """It is given up on (here at the floor of 3 s: drainSeconds 1 and a grace of 2 s past
    it, from the SIGTERM, leave less); its thread does not hold the exit."""
    queue = TaskQueue(redis, queue_name)
    env = worker_env(redis_url, queue_name, UNRULY, drain_seconds=1)
    env["UNRULY_HOOKS"] = "hang-shutdown,short-grace"
    with worker_processes(tmp_path) as start:
        worker = start(env)
        task_id = await queue.submit({})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 20, "a task done")
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(20) == 0
    [failed] = [json.loads(line) for line in worker.logs().splitlines()
                if '"shutdown hook failed"' in line]
    assert failed["error"] == "did not return within 3 s", "the floor"


async def test_a_hung_sync_ready_check_is_not_called_again_until_it_returns(
    monkeypatch: pytest.MonkeyPatch, unruly: dict[str, Any], redis_url: str,
    queue_name: str, redis: aioredis.Redis,
) -> None:
    monkeypatch.setattr(worker_module, "READY_CHECK_SECONDS", 0.3)
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, UNRULY, port=port,
                                lease_seconds=0.6)) as worker:
        unruly["ready_hangs"] = True
        await eventually(lambda: _probe_is(port, "/readyz", 503, "no answer within 0.3s"), 5,
                         "the hung check to fail")
        await eventually(
            lambda: _probe_is(port, "/readyz", 503, "the previous check has not returned yet"),
            5, "the next check to find it still running")
        checks, rounds = unruly["ready_checks"], []
        check = worker._check_ready

        async def counted() -> None:
            rounds.append(1)
            await check()

        worker._check_ready = counted  # type: ignore[method-assign]
        await eventually(lambda: len(rounds) >= 3, 5, "three more rounds of checks")
        task_id = await queue.submit({})
        assert unruly_hooks.RUNNING["ready_peak"] == 1, "hung checks piled up"
        assert unruly["ready_checks"] == checks
        assert await task_in(queue, task_id, "queued")
        unruly["ready_hangs"] = False
        unruly_hooks.GATE.set()
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "claims again")
        assert await _probe_is(port, "/readyz", 200, "ok")


async def test_sync_after_task_hooks_run_as_many_at_once_as_runs(
    unruly: dict[str, Any], redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A slow billing call per run slows no run but its own: each run has a thread for its
    hook (asyncio's default executor has at most 32)."""
    queue = TaskQueue(redis, queue_name)
    unruly["after_task_gated"] = True
    async with running(settings(redis_url, queue_name, UNRULY, concurrency=40)):
        ids = await queue.submit_many([{}] * 40)
        await eventually(lambda: unruly_hooks.RUNNING["after_task"] == 40, 10,
                         "forty after_task hooks at once")
        unruly_hooks.GATE.set()
        for task_id in ids:
            assert await task_in(queue, task_id, "succeeded")


async def test_hung_sync_after_task_hooks_leave_their_threads_and_the_next_calls_run(
    monkeypatch: pytest.MonkeyPatch, unruly: dict[str, Any], redis_url: str,
    queue_name: str, redis: aioredis.Redis,
) -> None:
    """As many hung billing calls as slots: the hooks of the runs after them still run (each
    waited for a thread the hung call holds, its run's slot held meanwhile)."""
    # One deadline for every call: short enough to give up on the hung ones (20 s) early,
    # long enough for the quick ones to get a thread and return on a loaded machine (one
    # took longer than 0.3 s there); a call waiting behind a hung one would still fail.
    monkeypatch.setattr(worker_module, "AFTER_TASK_SECONDS", 2.0)
    queue = TaskQueue(redis, queue_name)
    unruly["after_task_hang_first"] = 2
    with structlog.testing.capture_logs() as logs:
        async with running(settings(redis_url, queue_name, UNRULY, concurrency=2)):
            hung = await queue.submit_many([{}] * 2)
            for task_id in hung:
                await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 10, "a run")
            later = await queue.submit_many([{}] * 4)
            await eventually(lambda: set(later) <= set(unruly["after_task_done"]), 10,
                             "the after_task hooks of the runs after the hung ones")
    failed = {entry["task"]: entry["error"] for entry in logs
              if entry["event"] == "after_task hook failed"}
    assert failed == {task_id: "did not return within 2 s" for task_id in hung}


async def test_a_slow_startup_hook_does_not_fail_livez(
    unruly: dict[str, Any], redis_url: str, queue_name: str,
) -> None:
    """Loading a model for longer than lease + Redis timeout: the startup probe's to judge."""
    port = free_port()
    worker_settings = settings(redis_url, queue_name, UNRULY, port=port, lease_seconds=0.6,
                               redis_timeout_seconds=0.3)
    unruly["startup_seconds"] = 3 * worker_settings.heartbeat_stall_seconds
    worker = Worker(worker_settings)
    run = asyncio.create_task(worker.run())
    try:
        started = asyncio.create_task(worker.wait_started())
        answers = set()
        while not started.done():
            status, body = await probe(port, "/livez")
            if status:  # listening
                answers.add((status, body))
            await asyncio.wait([started, run], timeout=0.1)
        assert answers == {(200, "ok\n")}
    finally:
        worker.stop()
        await asyncio.wait_for(run, 15)


async def test_a_stop_during_a_slow_startup_hook_ends_the_worker_without_waiting_for_it(
    unruly: dict[str, Any], redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """A pod deleted while it loads its model: nothing was claimed, nothing waits."""
    unruly["startup_seconds"] = 30
    worker = Worker(settings(redis_url, queue_name, UNRULY))
    run = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: unruly["startup_began"], 10, "the startup hook to begin")
        worker.stop()
        await asyncio.wait_for(asyncio.shield(run), 5)
    finally:
        if not run.done():
            run.cancel()
    assert await TaskQueue(redis, queue_name).workers() == []


async def test_sys_exit_in_a_hook_is_the_hook_failing(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """KeyboardInterrupt in the first ready check, SystemExit in every after_task and in
    shutdown: logged as failures; the worker goes on and exits as usual."""
    queue = TaskQueue(redis, queue_name)
    env = worker_env(redis_url, queue_name, UNRULY, lease_seconds=0.6)
    env["UNRULY_HOOKS"] = "exit"
    with worker_processes(tmp_path) as start:
        worker = start(env)
        for _ in range(2):
            task_id = await queue.submit({})
            await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 20, "a task")
        await eventually(lambda: worker.logs().count("after_task hook failed") == 2, 5,
                         "both after_task failures logged")
        assert worker.alive()
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(20) == 0
    logs = worker.logs()
    assert "ready check failed" in logs and "KeyboardInterrupt" in logs
    assert "SystemExit: billing client gave up" in logs
    assert "shutdown hook failed" in logs and "SystemExit: the client library gave up" in logs
