"""The ``shutdown`` hook's time counts from the stop request: a drain that took its whole
time leaves the hook what remains of the pod's termination grace, not a budget of its own
that would run past the SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import exit_after_task_hooks
import pytest
import redis.asyncio as aioredis
import slow_shutdown_hooks
import structlog
from worker_helpers import eventually, settings, task_in

from agentpool.protocol import TaskQueue
from agentpool_worker import worker as worker_module
from agentpool_worker.worker import (
    AFTER_TASK_SECONDS,
    SHUTDOWN_FLOOR_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    STOP_SECONDS,
    Worker,
    after_task_wait,
    shutdown_budget,
)


@pytest.fixture
def hung_shutdown() -> Iterator[None]:
    slow_shutdown_hooks.GATE.clear()
    slow_shutdown_hooks.STATE["shutdown_began"] = None
    yield
    slow_shutdown_hooks.GATE.set()


@pytest.fixture
def hung_after_task() -> Iterator[None]:
    exit_after_task_hooks.GATE.clear()
    exit_after_task_hooks.STATE.update(after_task_began=False, shutdown_began=None)
    yield
    exit_after_task_hooks.GATE.set()


@pytest.mark.parametrize(("drain", "since_stop", "budget"), [
    (60.0, 0.0, 60 + SHUTDOWN_GRACE_SECONDS),
    (60.0, 60.0, SHUTDOWN_GRACE_SECONDS),
    (60.0, 71.04, round(SHUTDOWN_GRACE_SECONDS - 11.04, 1)),
    (60.0, 72.0, SHUTDOWN_FLOOR_SECONDS),
    (60.0, 200.0, SHUTDOWN_FLOOR_SECONDS),
    (0.0, 0.0, SHUTDOWN_GRACE_SECONDS),
])
def test_the_hook_gets_what_remains_of_the_grace_with_a_floor(
    drain: float, since_stop: float, budget: float,
) -> None:
    assert shutdown_budget(drain, since_stop) == budget


@pytest.mark.parametrize(("drain", "since_stop", "wait"), [
    (60.0, 0.0, AFTER_TASK_SECONDS),
    (2.0, 2.0 + STOP_SECONDS, SHUTDOWN_GRACE_SECONDS - STOP_SECONDS - SHUTDOWN_FLOOR_SECONDS),
    (2.0, 16.0, 0.0),
])
def test_after_task_hooks_at_exit_leave_the_shutdown_hook_its_floor_within_the_grace(
    drain: float, since_stop: float, wait: float,
) -> None:
    assert after_task_wait(drain, since_stop) == pytest.approx(wait)
    assert since_stop + wait + SHUTDOWN_FLOOR_SECONDS <= max(
        drain + SHUTDOWN_GRACE_SECONDS, since_stop + SHUTDOWN_FLOOR_SECONDS)


def test_the_hook_ends_before_the_pods_termination_grace() -> None:
    """The pod's grace is drainSeconds + 15 s (the operator's GRACE_MARGIN_SECONDS)."""
    assert SHUTDOWN_GRACE_SECONDS < 15
    for drain in (0.0, 30.0, 600.0):
        for since_stop in (0.0, drain, drain + 11.0):
            assert since_stop + shutdown_budget(drain, since_stop) < drain + 15


async def test_a_hung_shutdown_hook_after_a_full_drain_is_given_up_on_within_the_grace(
    monkeypatch: pytest.MonkeyPatch, hung_shutdown: None, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    # a grace of 1.5 s past the drain (the pod's is 14 s), the floor below what remains
    monkeypatch.setattr(worker_module, "SHUTDOWN_GRACE_SECONDS", 1.5)
    monkeypatch.setattr(worker_module, "SHUTDOWN_FLOOR_SECONDS", 0.2)
    drain = 1.5
    queue = TaskQueue(redis, queue_name)
    worker = Worker(settings(redis_url, queue_name, "slow_shutdown_hooks:run",
                             drain_seconds=drain))
    with structlog.testing.capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        try:
            await worker.wait_started()
            task_id = await queue.submit({})
            await eventually(lambda: task_in(queue, task_id, "running"), 10, "a run")
            stopped = time.monotonic()
            worker.stop()  # the run goes on through the whole drain
            await asyncio.wait_for(asyncio.shield(run), 20)
            took = time.monotonic() - stopped
        finally:
            if not run.done():
                run.cancel()
    assert slow_shutdown_hooks.STATE["shutdown_began"]
    [failed] = [entry for entry in logs if entry["event"] == "shutdown hook failed"]
    given = float(failed["error"].removeprefix("did not return within ").removesuffix(" s"))
    # what remained of drain + grace once the drain was over, not a budget of its own
    assert 0.2 <= given <= 1.5, failed["error"]
    assert took < drain + 1.5 + 1.0, "the hook ran past the grace"
    assert await task_in(queue, task_id, "queued"), "the run's task was handed back"


async def test_after_task_hooks_hung_at_exit_leave_the_shutdown_hook_its_floor_in_time(
    monkeypatch: pytest.MonkeyPatch, hung_after_task: None, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    """A billing call still hanging when the worker stops is waited for only until the
    shutdown hook's floor is left of the grace, not for the after_task hook's own time."""
    # a grace of 4 s past the drain (the pod's is 14 s), an after_task hook's time of 10 s
    monkeypatch.setattr(worker_module, "SHUTDOWN_GRACE_SECONDS", 4.0)
    monkeypatch.setattr(worker_module, "AFTER_TASK_SECONDS", 10.0)
    drain = 0.5
    latest = drain + 4.0 - SHUTDOWN_FLOOR_SECONDS  # the hook's start, from the stop request
    queue = TaskQueue(redis, queue_name)
    worker = Worker(settings(redis_url, queue_name, "exit_after_task_hooks:run",
                             drain_seconds=drain))
    with structlog.testing.capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        try:
            await worker.wait_started()
            task_id = await queue.submit({})
            await eventually(lambda: exit_after_task_hooks.STATE["after_task_began"], 10,
                             "the run's after_task hook")
            stopped = time.monotonic()
            worker.stop()
            await asyncio.wait_for(asyncio.shield(run), 20)
        finally:
            if not run.done():
                run.cancel()
            exit_after_task_hooks.GATE.set()
            await eventually(lambda: worker.runs_left == 0, 10, "the hung hook to return")
    began = exit_after_task_hooks.STATE["shutdown_began"]
    assert began is not None, "the shutdown hook did not run"
    assert latest - 0.1 <= began - stopped <= latest + 1.0, began - stopped
    [failed] = [entry for entry in logs if entry["event"] == "shutdown hook failed"]
    given = float(failed["error"].removeprefix("did not return within ").removesuffix(" s"))
    assert given >= SHUTDOWN_FLOOR_SECONDS, failed["error"]
    assert await task_in(queue, task_id, "succeeded")
