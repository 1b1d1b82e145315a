"""Runs that go on after their end or their stop: what they may still do, how long the worker
waits for them, and what it says about a process that did not run (a handler holding the GIL
or blocking the event loop)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import sample_handlers
from structlog.testing import CapturingLogger
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.protocol import TaskQueue
from agentpool_worker.handlers import TaskContext
from agentpool_worker.worker import Worker, heartbeat_late


def warnings(log: CapturingLogger, starting: str) -> list[dict[str, Any]]:
    """The warnings logged whose message starts with `starting`, each as its fields and
    ``msg``."""
    return [{"msg": call.args[0], **call.kwargs} for call in log.calls
            if call.method_name == "warning" and call.args[0].startswith(starting)]


def captured(worker: Worker) -> CapturingLogger:
    """From now on, what `worker` logs (its own lines) is kept, not printed."""
    log = CapturingLogger()
    worker._log = log  # type: ignore[assignment]
    return log


def refused(task_id: str, what: str) -> str:
    return f"LeaseLost: task {task_id}: this run is over or stopping; ctx.{what} refused"


@pytest.fixture
def late_calls() -> Iterator[dict[str, dict[str, str]]]:
    sample_handlers.LATE_CALLS.clear()
    sample_handlers.LATE_CALLS_MADE.clear()
    yield sample_handlers.LATE_CALLS
    for task in sample_handlers.LEFT_BEHIND:
        task.cancel()
    sample_handlers.LEFT_BEHIND.clear()


async def test_a_sync_planner_that_ignores_its_cancel_queues_nothing_more(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
    late_calls: dict[str, dict[str, str]],
) -> None:
    queue = TaskQueue(redis, queue_name)
    plan = await queue.submit({}, max_attempts=1)
    async with running(settings(redis_url, queue_name,
                                f"{HANDLERS}:plans_on_after_its_cancel")) as worker:
        await eventually(lambda: queue.list_tasks("delayed"), 10, "its first step")
        await queue.cancel(plan)
        await eventually(lambda: task_in(queue, plan, "cancelled"), 10, "the cancel")
        await eventually(sample_handlers.LATE_CALLS_MADE.is_set, 10, "its calls after it")
        assert worker.state == "running"
    assert late_calls[plan] == {"submit": refused(plan, "submit"),
                                "submit_many": refused(plan, "submit_many")}
    steps = await queue.list_tasks("delayed")
    assert [step.payload for step in steps] == [{"step": 0}], "nothing queued after the cancel"


async def test_a_task_an_async_handler_left_behind_cannot_act_for_the_run(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
    late_calls: dict[str, dict[str, str]],
) -> None:
    queue = TaskQueue(redis, queue_name)
    other = f"{queue_name}-other"
    task_id = await queue.submit({"other": other})
    async with running(settings(redis_url, queue_name,
                                f"{HANDLERS}:leaves_a_background_task", submits_to=other)):
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the run")
        sample_handlers.BACKGROUND_GATES[task_id].set()
        await eventually(sample_handlers.LATE_CALLS_MADE.is_set, 10, "the calls after it")
    assert late_calls[task_id] == {name: refused(task_id, name)
                                   for name in ("submit", "submit_many", "wait_many")}
    assert (await queue.figures()).stats["submitted"] == 1


def test_a_heartbeat_is_late_when_more_than_a_lease_passed_since_the_last() -> None:
    assert not heartbeat_late(0.0, interval=7 / 3, lease=7)
    assert not heartbeat_late(4.6, interval=7 / 3, lease=7)  # on the edge: still in time
    assert heartbeat_late(4.7, interval=7 / 3, lease=7)
    assert not heartbeat_late(-1.0, interval=7 / 3, lease=7)  # called early (a state change)


async def test_a_sync_handler_holding_the_gil_past_the_lease_is_logged(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Two calls into C holding the GIL for 2 s each, with a moment between (the heartbeat
    goes out then, so that the second one holds up the next): lease 1.5 s."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:holds_the_gil",
                                lease_seconds=1.5, loop_stall_seconds=60)) as worker:
        log = captured(worker)
        task_id = await queue.submit({"seconds": 2, "times": 2})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 20, "the run")
    late = warnings(log, "heartbeat ")
    assert late, "no late heartbeat logged"
    for said in late:
        assert said["msg"].endswith(" s late (lease 1.5 s): a handler held the GIL or "
                                    "blocked the event loop"), said
        assert said["late_seconds"] > 1.0
    assert not warnings(log, "event loop was blocked"), "within loop_stall_seconds"


async def test_a_blocked_event_loop_is_logged_once_per_stall(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:block_loop",
                                loop_stall_seconds=0.5)) as worker:
        log = captured(worker)
        task_id = await queue.submit({"seconds": 1.5})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the run")
    [said] = warnings(log, "event loop was blocked for ")
    assert said["msg"].endswith(" s (an async handler that blocks? a sync one holding the "
                                "GIL?)"), said
    assert said["blocked_seconds"] >= 1.5 and said["loop_stall_seconds"] == 0.5


async def test_a_lost_lease_of_a_success_waiting_for_redis_says_its_result_is_not_recorded(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """The run had returned and its success waited for the next flush (held up here, as a
    handler holding the GIL holds it up) when another run took the task: the line says so,
    not that nothing was running."""
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid")) as worker:
        log = captured(worker)
        flush, flushes = worker._flush, asyncio.Event()

        async def held_up(backoff: Any) -> None:
            await flushes.wait()
            await flush(backoff)

        worker._flush = held_up  # type: ignore[method-assign]
        task_id = await queue.submit({})
        await eventually(lambda: any(task.id == task_id for task, _ in worker._completions),
                         10, "its success to wait")
        await redis.hset(queue.task_key(task_id), "token", "another-run")  # type: ignore[misc]
        said = await eventually(lambda: warnings(log, "lease lost"), 10, "the lost lease")
        flushes.set()
    assert said == [{"msg": "lease lost; abandoning the task", "task": task_id,
                     "run": "had succeeded; its result is not recorded"}]


@pytest.mark.parametrize(("sync", "of"), [
    (TaskContext.submit_sync, TaskContext.submit),
    (TaskContext.submit_many_sync, TaskContext.submit_many)])
def test_the_sync_submits_take_the_options_of_the_async_ones_by_name(
        sync: Any, of: Any) -> None:
    """Not **options: mypy (and a TypeError at once) catches a misspelled option."""
    def options(method: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.default, p.annotation)
                for p in inspect.signature(method).parameters.values()
                if p.kind is p.KEYWORD_ONLY]

    assert options(sync) == options(of)
    with pytest.raises(TypeError, match="max_atempts"):
        sync(TaskContext("t", 1, 3, "q", "w"), {}, max_atempts=2)
