"""A running worker that claims nothing says why in its heartbeat record (what its /readyz
says), for `agentpool workers`; and /readyz says so while the startup hook runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import hook_handlers
import pytest
import redis.asyncio as aioredis
import unruly_hooks
from worker_helpers import eventually, probe, running, settings

from agentpool.protocol import TaskQueue, WorkerState
from agentpool.redis_server import free_port
from agentpool_worker.probes import Health
from agentpool_worker.worker import (
    DRAINING,
    FULL_READY_REASON,
    RUNNING,
    Worker,
    not_ready_reason,
)


def health(state: str = RUNNING, **fields: Any) -> Health:
    h = Health(5.0, 5.0, state=state)
    for name, value in fields.items():
        setattr(h, name, value)
    return h


@pytest.mark.parametrize(("h", "reason"), [
    (health(), ""),
    (health(check_error="ready() returned False"), "ready check failed: ready() returned False"),
    (health(slots_error="all 4 slots are held"), "all 4 slots are held"),
    (health(full_error=FULL_READY_REASON), FULL_READY_REASON),
    (health(check_error="x", full_error=FULL_READY_REASON), "ready check failed: x"),
    (health(redis_ok=False, redis_error="redis unreachable: boom"), ""),
    (health(DRAINING, check_error="x"), ""),
], ids=["ready", "ready-hook", "slots", "full", "hook-first", "unreachable", "draining"])
def test_the_reason_published_is_readyz_s_for_a_running_worker(h: Health, reason: str) -> None:
    assert not_ready_reason(h) == reason


async def test_a_failing_ready_hook_reaches_the_heartbeat_record_and_leaves_it(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    hook_handlers.READY.update(answer=False, checks=0)
    queue = TaskQueue(redis, queue_name)
    try:
        async with running(settings(redis_url, queue_name, "hook_handlers:run",
                                    lease_seconds=0.6)):
            shown = await eventually(
                lambda: _with_reason(queue, "ready check failed: ready() returned False"), 5,
                "the reason in the record")
            assert shown.state == "running"
            hook_handlers.READY["answer"] = True
            await eventually(lambda: _with_reason(queue, ""), 5, "the reason gone")
    finally:
        hook_handlers.READY.update(answer=True, checks=0)


async def _with_reason(queue: TaskQueue, reason: str) -> WorkerState | None:
    workers = await queue.workers()
    return workers[0] if workers and workers[0].not_ready == reason else None


@pytest.fixture
def slow_startup() -> Iterator[dict[str, Any]]:
    unruly_hooks.STATE.update(startup_seconds=2.0, startup_began=False)
    yield unruly_hooks.STATE
    unruly_hooks.STATE.update(startup_seconds=0.0)


async def test_readyz_says_the_startup_hook_is_running_while_it_runs(
    slow_startup: dict[str, Any], redis_url: str, queue_name: str,
) -> None:
    port = free_port()
    worker = Worker(settings(redis_url, queue_name, "unruly_hooks:run", port=port))
    run = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: slow_startup["startup_began"], 10, "the startup hook")
        status, body = await eventually(lambda: _answer(port), 5, "the probe server")
        assert status == 503
        assert body.startswith("the startup hook has been running for "), body
        assert body.rstrip().endswith("s; the worker connects to Redis once it returns")
        await asyncio.wait_for(worker.wait_started(), 10)
        assert await probe(port, "/readyz") == (200, "ok\n")
    finally:
        worker.stop()
        await asyncio.wait_for(run, 15)


async def _answer(port: int) -> tuple[int, str] | None:
    status, body = await probe(port, "/readyz")
    return (status, body) if status else None
