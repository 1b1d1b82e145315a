"""A full Redis (maxmemory reached, maxmemory-policy noeviction) is not an unreachable one.

Redis then refuses claims, events and checkpoints, and takes heartbeats and outcomes
(agentpool/lua/common.lua). The worker records its outcomes while Redis is full and sends the
events that waited once memory is freed, keeps its runs' leases, starts no new run, says once
in its log that Redis is full (and once that it has room again), and answers /readyz with that
reason, steadily, while its heartbeats go on (the operator leaves such pods alone).

Each test makes its own real redis-server full with ``CONFIG SET maxmemory`` below what it
uses, and frees it with ``CONFIG SET maxmemory 0``. The handlers below are loaded by the
in-process workers as ``test_worker_redis_full:<name>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError
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

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, free_port
from agentpool_worker.handlers import TaskContext

MODULE = "test_worker_redis_full"
LEASE = 1.5
FULL_LOG = "Redis is full (maxmemory reached): new tasks are not claimed until memory is freed"
ROOM_LOG = "Redis has room again: claiming new tasks"
FULL_READY = ("redis is full (maxmemory reached): new tasks are not claimed until memory is "
              "freed; runs in progress go on")

RUNS: Counter[str] = Counter()
"""Runs started, per task id (a task run twice shows here)."""
STEPS: Counter[str] = Counter()
"""Checkpointed steps done, per task id."""
_GATES: dict[tuple[str, str], asyncio.Event] = {}


def gate(task_id: str, name: str) -> asyncio.Event:
    """What a run waits for before going on (set by the test). Workers and tests share the
    event loop, so an asyncio.Event does."""
    return _GATES.setdefault((task_id, name), asyncio.Event())


async def emits_then_ends(payload: Any, ctx: TaskContext) -> dict[str, str]:
    """Emits `events` events once let (gate "emit"), then succeeds once let (gate "end"), or
    fails on a first attempt when `fail_first`."""
    RUNS[ctx.task_id] += 1
    await gate(ctx.task_id, "emit").wait()
    for i in range(payload["events"]):
        await ctx.emit("step", {"i": i})
    await gate(ctx.task_id, "end").wait()
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("planned failure")
    return {"done": ctx.task_id}


async def steps_until_let_go(payload: Any, ctx: TaskContext) -> dict[str, int]:
    """The shape of an agent's loop: each step reports progress and checkpoints, until the
    test lets it end (gate "end")."""
    RUNS[ctx.task_id] += 1
    end = gate(ctx.task_id, "end")
    step = 0
    while not end.is_set():
        step += 1
        await ctx.progress(min(step / 100, 1.0), f"step {step}")
        await ctx.checkpoint({"step": step})
        STEPS[ctx.task_id] = step
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(end.wait(), 0.05)  # the step's work
    return {"steps": step}


async def checkpoints_once_then_waits(payload: Any, ctx: TaskContext) -> dict[str, str]:
    """One checkpoint once let (gate "checkpoint"), then nothing Redis would refuse until let
    end (gate "end")."""
    RUNS[ctx.task_id] += 1
    await gate(ctx.task_id, "checkpoint").wait()
    await ctx.checkpoint({"step": 1})
    STEPS[ctx.task_id] = 1
    await gate(ctx.task_id, "end").wait()
    return {"done": ctx.task_id}


# -- a redis-server to fill ------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=("--maxmemory-policy", "noeviction")) as started:
        yield started


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the server; memory is freed after the test, whatever happened."""
    client = redis_from_url(server.url)
    yield client
    await client.config_set("maxmemory", 0)
    await client.aclose()


async def fill(admin: aioredis.Redis) -> None:
    """Redis is full from now on: its limit is below what it uses."""
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory", max(used - 300_000, 1))
    assert await full(admin)


async def free(admin: aioredis.Redis) -> None:
    await admin.config_set("maxmemory", 0)


async def full(admin: aioredis.Redis) -> bool:
    """Whether Redis refuses a write that grows memory (counted in refusals(), too)."""
    try:
        await admin.set("probe:full", "1")
    except OutOfMemoryError:
        return True
    await admin.delete("probe:full")
    return False


async def refusals(admin: aioredis.Redis) -> int:
    """Calls Redis refused for being full so far (INFO errorstats)."""
    stats = await admin.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def lease_until_ms(admin: aioredis.Redis, queue: TaskQueue, task_id: str) -> float:
    """When the task's lease runs out, on Redis's clock (0 when it has none)."""
    return float(await admin.zscore(queue.prefix + "leases", task_id) or 0)


async def redis_ms(admin: aioredis.Redis) -> float:
    seconds, micros = await admin.time()
    return seconds * 1000 + micros / 1000


# -- the tests -------------------------------------------------------------------------------

async def test_a_success_is_recorded_while_redis_is_full_and_its_events_land_once_freed(
    server: RedisServer, admin: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(admin, queue_name)
    handler = f"{MODULE}:emits_then_ends"
    async with running(settings(server.url, queue_name, handler, concurrency=1,
                                lease_seconds=LEASE)):
        task_id = await queue.submit({"events": 5})
        await _emits_on_a_full_redis(admin, task_id)
        gate(task_id, "end").set()
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10,
                         "the success to be recorded while Redis is full")
        assert await full(admin)
        assert await admin.xlen(queue.events_key(task_id)) == 0  # the events wait for room
        await free(admin)
        events = await eventually(lambda: _stream(queue, task_id, 6), 10,
                                  "the events to land once memory is freed")
    assert [(e.kind, e.data) for e in events] == [
        *(("step", {"i": i}) for i in range(5)), ("final", {"state": "succeeded"})]
    assert {e.attempt for e in events} == {1}
    info = await queue.get(task_id)
    assert info is not None and info.result == {"done": task_id} and info.attempts == 1
    assert RUNS[task_id] == 1


async def test_a_failure_is_recorded_while_redis_is_full_and_retried_once_freed(
    server: RedisServer, admin: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(admin, queue_name)
    handler = f"{MODULE}:emits_then_ends"
    async with running(settings(server.url, queue_name, handler, concurrency=1,
                                lease_seconds=LEASE)):
        task_id = await queue.submit({"events": 3, "fail_first": True})
        await _emits_on_a_full_redis(admin, task_id)
        gate(task_id, "end").set()
        # Redis takes the failure (its retry waits: claims are refused); the failed run's
        # events are lost, as Redis takes no events of a run once its failure is recorded
        failed = await eventually(lambda: task_in(queue, task_id, "delayed", "queued"), 10,
                                  "the failure to be recorded while Redis is full")
        assert failed.attempts == 1 and (failed.error or "").startswith("RuntimeError")
        assert await full(admin)
        assert RUNS[task_id] == 1
        await free(admin)
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10,
                         "the retry to run once memory is freed")
        events = await eventually(lambda: _stream(queue, task_id, 4), 10, "the events")
    assert [(e.kind, e.data, e.attempt) for e in events] == [
        *(("step", {"i": i}, 2) for i in range(3)), ("final", {"state": "succeeded"}, 2)]
    assert RUNS[task_id] == 2


async def test_a_run_keeps_its_lease_while_redis_is_full_and_no_new_run_starts(
    server: RedisServer, admin: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(admin, queue_name)
    handler = f"{MODULE}:steps_until_let_go"
    async with running(settings(server.url, queue_name, handler, concurrency=1,
                                lease_seconds=LEASE, pod_name="pod-a")):
        running_id = await queue.submit({})
        await eventually(lambda: STEPS[running_id] >= 1, 10, "the run to start")
        queued_id = await queue.submit({})  # the only slot is taken: it waits in the queue
        await fill(admin)
        filled_ms = await redis_ms(admin)
        steps = STEPS[running_id]
        # the lease held at the fill has run out, twice over: heartbeats renewed it
        await eventually(
            lambda: _lease_beyond(admin, queue, running_id, filled_ms + 2000 * LEASE),
            15, "the run's lease to be renewed while Redis is full")
        # and the run went on past its checkpoints (Redis refuses them: not saved)
        assert STEPS[running_id] > steps + 2
        # a worker that starts while Redis is full registers and heartbeats, claims nothing
        async with running(settings(server.url, queue_name, handler, concurrency=1,
                                    lease_seconds=LEASE, pod_name="pod-b")) as late:
            await eventually(lambda: late.health.readiness() == (False, FULL_READY), 10,
                             "the late worker to find Redis full")
            assert await task_in(queue, queued_id, "queued")
            gate(running_id, "end").set()
            await eventually(lambda: task_in(queue, running_id, "succeeded"), 10,
                             "the success to be recorded while Redis is full")
            # both workers have a free slot now; Redis refuses what they ask for a while
            before = await refusals(admin)
            await eventually(lambda: _more_than(admin, before + 3), 10, "more refusals")
            assert await full(admin)
            assert await task_in(queue, queued_id, "queued")
            assert RUNS[queued_id] == 0
            await free(admin)
            gate(queued_id, "end").set()
            await eventually(lambda: task_in(queue, queued_id, "succeeded"), 10,
                             "the queued task to run once memory is freed")
            await eventually(lambda: late.health.readiness() == (True, "ok"), 10,
                             "the late worker to be ready")
    assert RUNS[running_id] == 1 and RUNS[queued_id] == 1
    for task_id in (running_id, queued_id):
        info = await queue.get(task_id)
        assert info is not None and info.attempts == 1


async def test_a_worker_whose_slots_are_busy_sees_the_room_come_back(
    server: RedisServer, admin: aioredis.Redis, queue_name: str,
) -> None:
    """With every slot busy nothing the worker sends is a write a full Redis refuses (no
    claim): its heartbeat asks whether Redis has room again, so it is ready again before its
    run ends."""
    queue = TaskQueue(admin, queue_name)
    async with running(settings(server.url, queue_name, f"{MODULE}:checkpoints_once_then_waits",
                                concurrency=1, lease_seconds=LEASE,
                                pod_name="pod-busy")) as worker:
        task_id = await queue.submit({})
        await eventually(lambda: RUNS[task_id] == 1, 10, "the run to start")
        await fill(admin)
        gate(task_id, "checkpoint").set()
        await eventually(lambda: worker.health.readiness() == (False, FULL_READY), 10,
                         "the refused checkpoint to show Redis is full")
        assert STEPS[task_id] == 1, "the run went on past its refused checkpoint"
        await free(admin)
        await eventually(lambda: worker.health.readiness() == (True, "ok"), 3 * LEASE,
                         "the worker to see the room come back while its run goes on")
        assert await task_in(queue, task_id, "running")
        gate(task_id, "end").set()
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the run to end")


async def test_the_log_says_redis_is_full_once_and_readyz_says_so_steadily(
    tmp_path: Path, server: RedisServer, admin: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(admin, queue_name)
    port = free_port()
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(server.url, queue_name, f"{HANDLERS}:pid", port=port,
                                  pod_name="pod-full", lease_seconds=LEASE))
        await eventually(lambda: _answers(port, "/readyz", (200, "ok\n")), 20,
                         "the worker to be ready")
        await fill(admin)
        await eventually(lambda: _answers(port, "/readyz", (503, FULL_READY + "\n")), 10,
                         "/readyz to say Redis is full")
        # idle, the worker claims and is refused, and heartbeats (which Redis takes, so the
        # operator leaves the pod alone) every lease/3 in between: several of each
        before = await refusals(admin)
        seen_before = await _last_seen(queue, "pod-full")
        answers: set[tuple[int, str]] = set()

        async def refused_and_heartbeating() -> bool:
            answers.add(await probe(port, "/readyz"))
            return (await refusals(admin) >= before + 3
                    and await _last_seen(queue, "pod-full") > seen_before + 2 * LEASE)

        await eventually(refused_and_heartbeating, 20, "claims refused, heartbeats taken",
                         interval=0.1)
        assert answers == {(503, FULL_READY + "\n")}
        assert (await probe(port, "/livez"))[0] == 200
        lines = _log(worker.logs())
        assert [line["msg"] for line in lines].count(FULL_LOG) == 1, lines
        said = next(line for line in lines if line["msg"] == FULL_LOG)
        assert said["level"] == "warning" and said["refused"] == "claim"
        assert not [line for line in lines if "unreachable" in line["msg"]
                    or "reachable again" in line["msg"]]
        await free(admin)
        await eventually(lambda: _answers(port, "/readyz", (200, "ok\n")), 10,
                         "/readyz to pass once memory is freed")
        await eventually(lambda: ROOM_LOG in worker.logs(), 5, "the log to say so")
        lines = _log(worker.logs())
        assert [line["msg"] for line in lines].count(FULL_LOG) == 1
        assert [line["msg"] for line in lines].count(ROOM_LOG) == 1


# -- helpers ---------------------------------------------------------------------------------

async def _emits_on_a_full_redis(admin: aioredis.Redis, task_id: str) -> None:
    """Once the run started, Redis fills and the run emits: the worker's only slot is taken,
    so it claims nothing, and what Redis refuses are the run's events."""
    await eventually(lambda: RUNS[task_id] == 1, 10, "the run to start")
    await fill(admin)
    before = await refusals(admin)
    gate(task_id, "emit").set()
    await eventually(lambda: _more_than(admin, before), 10, "the events to be refused")


async def _more_than(admin: aioredis.Redis, count: int) -> bool:
    return await refusals(admin) > count


async def _stream(queue: TaskQueue, task_id: str, length: int) -> list[Any] | None:
    events = [e async for e in queue.events(task_id, follow=False)]
    return events if len(events) >= length else None


async def _lease_beyond(admin: aioredis.Redis, queue: TaskQueue, task_id: str,
                        moment_ms: float) -> bool:
    return await lease_until_ms(admin, queue, task_id) > moment_ms


async def _answers(port: int, path: str, expected: tuple[int, str]) -> bool:
    return await probe(port, path) == expected


async def _last_seen(queue: TaskQueue, pod: str) -> float:
    instances = await queue.instances(pod)
    assert len(instances) == 1, instances
    return instances[0].last_seen


def _log(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict) and "msg" in line:
                lines.append(line)
    return lines
