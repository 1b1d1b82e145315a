"""The worker counts a run's outcome by what Redis recorded of it: a success or failure that
Redis refused, another run holding the task by then, counts as lost, and nothing counts before
Redis answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis_freeze import frozen
from worker_helpers import eventually, running, settings, task_in

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer

HANDLER = f"{__name__}:gated"


@dataclass
class Gate:
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)


GATES: dict[str, Gate] = {}


async def gated(payload: Any) -> dict[str, bool]:
    """Waits for the test to open its gate, then succeeds, or fails when told to."""
    gate = GATES[payload["gate"]]
    gate.entered.set()
    await gate.opened.wait()
    if payload.get("fail"):
        raise RuntimeError("planned failure")
    return {"ok": True}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to freeze."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def gate(queue_name: str) -> Iterator[Gate]:
    GATES[queue_name] = Gate()
    yield GATES[queue_name]
    del GATES[queue_name]


def counted(queue: str, name: str) -> float:
    value = REGISTRY.get_sample_value(f"agentpool_worker_tasks_{name}_total", {"queue": queue})
    return value or 0.0


def counts(queue: str, *names: str) -> dict[str, float]:
    return {name: counted(queue, name) for name in names}


def runs_ended(queue: str) -> float:
    return REGISTRY.get_sample_value("agentpool_worker_task_duration_seconds_count",
                                     {"queue": queue}) or 0.0


@pytest.mark.parametrize("fail", [False, True], ids=["success", "failure"])
async def test_an_outcome_refused_because_another_run_holds_the_task_counts_as_lost(
    redis_url: str, queue_name: str, redis: aioredis.Redis, gate: Gate, fail: bool,
) -> None:
    """The worker is cut off past its lease (its heartbeats do not get through, so it does not
    learn of the loss), the task goes to another worker, then its run ends: Redis refuses the
    outcome, and the run counts as lost, not as succeeded or failed."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"gate": queue_name, "fail": fail})
    async with running(settings(redis_url, queue_name, HANDLER, concurrency=1)) as worker:
        await asyncio.wait_for(gate.entered.wait(), 10)
        partitioned = asyncio.Event()
        real = worker.queue.heartbeat

        async def cut_off(*args: Any, **kwargs: Any) -> Any:
            await partitioned.wait()
            return await real(*args, **kwargs)

        worker.queue.heartbeat = cut_off  # type: ignore[method-assign]
        try:
            await queue.requeue_owner(worker.worker_id, reason="reaped")
            other = await queue.claim("pod-other:1", 1, 60)
            assert [task.id for task in other.tasks] == [task_id]
            gate.opened.set()
            await eventually(lambda: sum(counts(queue_name, "succeeded", "failed",
                                                "lost").values()), 10,
                             "the worker to count the run")
        finally:
            worker.queue.heartbeat = real  # type: ignore[method-assign]
            partitioned.set()
        assert counts(queue_name, "succeeded", "failed", "retried", "dead_lettered", "lost") == {
            "succeeded": 0, "failed": 0, "retried": 0, "dead_lettered": 0, "lost": 1}
        assert await task_in(queue, task_id, "running"), "the other worker's run goes on"


async def test_a_success_counts_once_redis_recorded_it(
    own_redis: RedisServer, queue_name: str, gate: Gate,
) -> None:
    async with redis_from_url(own_redis.url) as redis, \
            running(settings(own_redis.url, queue_name, HANDLER, concurrency=1)):
        queue = TaskQueue(redis, queue_name)
        task_id = await queue.submit({"gate": queue_name})
        await asyncio.wait_for(gate.entered.wait(), 10)
        with frozen(own_redis):
            gate.opened.set()
            await eventually(lambda: runs_ended(queue_name) == 1, 10, "the run to end")
            assert counted(queue_name, "succeeded") == 0, "Redis has not recorded it yet"
        await eventually(lambda: counted(queue_name, "succeeded") == 1, 10, "the count")
        assert await task_in(queue, task_id, "succeeded")
        assert counted(queue_name, "lost") == 0


async def test_a_timed_out_failure_counts_once_redis_recorded_it(
    own_redis: RedisServer, queue_name: str, gate: Gate,
) -> None:
    """Failed, timed out and retried alike: the run's timeout stops it while Redis cannot
    answer, and nothing counts until Redis took the failure."""
    names = ("failed", "timed_out", "retried", "lost")
    async with redis_from_url(own_redis.url) as redis, \
            running(settings(own_redis.url, queue_name, HANDLER, concurrency=1,
                             task_timeout_seconds=1.0)):
        queue = TaskQueue(redis, queue_name)
        task_id = await queue.submit({"gate": queue_name}, max_attempts=2)
        await asyncio.wait_for(gate.entered.wait(), 10)
        with frozen(own_redis):
            await eventually(lambda: runs_ended(queue_name) == 1, 10, "the run's timeout")
            assert counts(queue_name, *names) == {
                "failed": 0, "timed_out": 0, "retried": 0, "lost": 0}
        await eventually(lambda: counted(queue_name, "failed") == 1, 10, "the count")
        assert counts(queue_name, *names) == {"failed": 1, "timed_out": 1, "retried": 1,
                                              "lost": 0}
        gate.opened.set()  # the retry succeeds
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the retry")
