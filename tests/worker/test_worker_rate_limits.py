"""Handlers wait on the pool's rate limits through their context (real Redis, real workers).

Assertions are on the grant times Redis computed and on what Redis recorded, not on timing.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

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

from agentpool.connection import redis_from_url, sync_redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.ratelimit import LimitConfig, RateLimiter, encode_limits, key_prefix
from agentpool.redis_server import free_port
from agentpool_worker import metrics
from agentpool_worker.handlers import TaskContext
from agentpool_worker.limits import WorkerLimits
from agentpool_worker.settings import ConfigError, load_settings

US = 1_000_000
ASYNC = "limit_handlers:limited"
SYNC = "limit_handlers:limited_sync"


@pytest.fixture
def limit() -> str:
    return f"l-{uuid.uuid4().hex[:10]}"


def limits_env(*configs: LimitConfig) -> str:
    return encode_limits(configs)


async def declared_long_ago(redis: aioredis.Redis, config: LimitConfig) -> None:
    """As the operator declares it, without the quiet time of a fresh declaration (6 s
    without slots, tested in tests/protocol/test_slots.py)."""
    await RateLimiter(redis, config.name).declare(config, "tests/pool")
    await redis.hdel(key_prefix(config.name) + "config", "since")


async def results(queue: TaskQueue, ids: list[str]) -> list[Any]:
    infos = [await queue.wait(task_id, timeout=60) for task_id in ids]
    assert [i.state for i in infos] == ["succeeded"] * len(ids), [i.error for i in infos]
    return [i.result for i in infos]


async def test_worker_processes_share_one_budget_and_stay_inside_it(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str, tmp_path: Path
) -> None:
    config = LimitConfig(limit, requests_per_minute=1200, burst_seconds=0.25)  # 20/s, burst 5
    queue = TaskQueue(redis, queue_name)
    env = worker_env(redis_url, queue_name, ASYNC, concurrency=10, lease_seconds=30,
                     rate_limits=limits_env(config))
    with worker_processes(tmp_path) as start:
        workers = [start(env), start(env)]
        ids = await queue.submit_many([{"limit": limit}] * 60)
        done = await results(queue, ids)
        assert all(w.alive() for w in workers)
    grants = sorted(r["grant"] for r in done)
    for window in (0.25, 1.0, 2.0):
        counted = [g for g in grants if g - grants[0] < window * US]
        assert len(counted) <= 5 + 20 * window + 1
    assert (grants[-1] - grants[0]) / US >= (60 - 5 - 1) / 20
    assert len({r["pid"] for r in done}) == 2
    # a run that lost its lease on a starved machine runs again and takes another grant
    assert (await RateLimiter(redis, limit).state()).grants >= 60


async def test_the_heartbeat_reports_the_time_runs_spent_waiting(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str
) -> None:
    config = LimitConfig(limit, requests_per_minute=600, burst_seconds=0.1)  # 10/s, burst 1
    queue = TaskQueue(redis, queue_name)
    port = free_port()
    async with running(settings(redis_url, queue_name, ASYNC, concurrency=8, port=port,
                                rate_limits=limits_env(config))):
        ids = await queue.submit_many([{"limit": limit}] * 16)
        done = await results(queue, ids)
        waited = sum(r["wait"] for r in done)

        async def reported() -> bool:
            """A heartbeat taken once every run ended (its own count of runs done, not the
            live `in_flight`, which Redis gives): a wait counts when granted, before it is
            waited, so a beat taken during the last runs shows more waited than busy."""
            (worker,) = await queue.workers()
            window = worker.limit_window or {}
            seen = window.get("waited", {}).get(limit, 0)
            return worker.done == len(ids) and seen == pytest.approx(waited, abs=0.01)

        await eventually(reported, 5, "a heartbeat reporting the waits")
        (worker,) = await queue.workers()
        status, text = await probe(port, "/metrics")
    assert worker.limit_window is not None
    assert worker.limit_window["busy"] >= worker.limit_window["waited"][limit] > 0
    assert status == 200
    for name in metrics.LIMIT_NAMES:
        assert f'{name}{{limit="{limit}",queue="{queue_name}"}}' in text, name
    assert f'agentpool_worker_limit_grants_total{{limit="{limit}",queue="{queue_name}"}} 16.0' \
        in text


async def spend(redis: aioredis.Redis, config: LimitConfig, seconds: int) -> None:
    """Spend the budget so that the next grant is about `seconds` away."""
    assert config.requests_per_minute == 60
    await RateLimiter(redis, config.name, config=config).reserve(requests=seconds)


@pytest.mark.parametrize("handler", [ASYNC, SYNC])
async def test_a_run_cancelled_while_it_waits_gives_its_reservation_back(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str, handler: str
) -> None:
    config = LimitConfig(limit, requests_per_minute=60)
    await spend(redis, config, 60)
    queue = TaskQueue(redis, queue_name)
    limiter = RateLimiter(redis, limit)
    async with running(settings(redis_url, queue_name, handler,
                                rate_limits=limits_env(config))):
        task_id = await queue.submit({"limit": limit})

        async def waiting() -> bool:
            return (await limiter.state()).waiting >= 1 and (await limiter.state()).grants == 2

        await eventually(waiting, 5, "the run to wait for its grant")
        await queue.cancel(task_id)
        await eventually(lambda: task_in(queue, task_id, "cancelled"), 5, "the cancel")

        async def released() -> bool:
            return (await limiter.state()).released == 1

        await eventually(released, 5, "the reservation to be given back")


async def test_an_undeclared_limit_dead_letters_the_task_with_a_clear_message(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str
) -> None:
    queue = TaskQueue(redis, queue_name)
    config = LimitConfig(limit, requests_per_minute=60)
    async with running(settings(redis_url, queue_name, ASYNC, rate_limits=limits_env(config))):
        task_id = await queue.submit({"limit": "not-declared"})
        info = await queue.wait(task_id, timeout=10)
    assert info.state == "dead"
    assert info.attempts == 1
    assert "rate limit 'not-declared' is not declared for this pool" in (info.error or "")
    assert f"declared: {limit}" in (info.error or "")


async def test_a_handler_reporting_a_429_pauses_the_limit_for_everyone(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str
) -> None:
    config = LimitConfig(limit, requests_per_minute=600)
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "limit_handlers:throttled",
                                rate_limits=limits_env(config))):
        task_id = await queue.submit({"limit": limit, "retryAfter": 30})
        info = await queue.wait(task_id, timeout=10)
    assert info.state == "succeeded"
    assert info.result["factor"] == 0.5
    state = await RateLimiter(redis, limit).state()
    assert state.throttles == 1 and state.paused_for > 25
    other = await RateLimiter(redis, limit, config=config, caller="elsewhere").reserve()
    assert other.wait > 25


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("{", "AGENTPOOL_RATE_LIMITS must be a JSON list of rate limits"),
        ('[{"name": "openai"}]', "AGENTPOOL_RATE_LIMITS must be a JSON list of rate limits"),
        ('[{"name": "a", "requestsPerMinute": 1}, {"name": "a", "requestsPerMinute": 2}]',
         "AGENTPOOL_RATE_LIMITS must be"),
    ],
)
def test_malformed_rate_limits_stop_the_worker_with_one_line(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url="redis://r", handler="m:f", rate_limits=value)
    assert why in str(caught.value)
    assert "\n" not in str(caught.value)


HELD = {"async": "limit_handlers:held", "sync": "limit_handlers:held_sync"}


@pytest.mark.parametrize("kind", sorted(HELD))
async def test_runs_of_two_worker_processes_never_exceed_max_concurrent(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str, tmp_path: Path,
    kind: str
) -> None:
    config = LimitConfig(limit, max_concurrent=3)
    await declared_long_ago(redis, config)
    queue = TaskQueue(redis, queue_name)
    counter = f"inside-{limit}"
    envs = [worker_env(redis_url, queue_name, HELD[kind], concurrency=6, lease_seconds=30,
                       rate_limits=limits_env(config), pod_name=f"pod-{n}") for n in (1, 2)]
    with worker_processes(tmp_path) as start:
        workers = [start(env) for env in envs]
        ids = await queue.submit_many(
            [{"limit": limit, "redis": redis_url, "counter": counter}] * 30)
        done = await results(queue, ids)
        assert all(w.alive() for w in workers)
    assert max(r["inside"] for r in done) == 3
    assert len({r["pid"] for r in done}) == 2
    state = await RateLimiter(redis, limit).state()
    assert (state.held, state.in_line, state.holds) == (0, 0, 30)


@pytest.mark.parametrize("kind", sorted(HELD))
async def test_a_run_cancelled_while_it_waits_for_a_slot_leaves_the_line(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str, kind: str
) -> None:
    config = LimitConfig(limit, max_concurrent=1)
    await declared_long_ago(redis, config)
    queue = TaskQueue(redis, queue_name)
    elsewhere = RateLimiter(redis, limit, config=config, caller="elsewhere")
    async with elsewhere.hold(), running(settings(
            redis_url, queue_name, HELD[kind], rate_limits=limits_env(config))):
        task_id = await queue.submit({"limit": limit, "redis": redis_url, "counter": "c"})

        async def in_line() -> bool:
            return (await elsewhere.state()).in_line == 1

        await eventually(in_line, 5, "the run to wait for the slot")
        await queue.cancel(task_id)
        await eventually(lambda: task_in(queue, task_id, "cancelled"), 5, "the cancel")

        async def left() -> bool:
            state = await elsewhere.state()
            return (state.in_line, state.held) == (0, 1)

        await eventually(left, 5, "the run to leave the line")


async def test_a_wait_for_a_slot_counts_in_the_heartbeat_while_it_lasts(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str
) -> None:
    """The autoscaler sees runs held back by a cap before they get their slot."""
    config = LimitConfig(limit, max_concurrent=1)
    await declared_long_ago(redis, config)
    queue = TaskQueue(redis, queue_name)
    elsewhere = RateLimiter(redis, limit, config=config, caller="elsewhere")
    async with elsewhere.hold(), running(settings(
            redis_url, queue_name, HELD["async"], rate_limits=limits_env(config))):
        task_id = await queue.submit({"limit": limit, "redis": redis_url, "counter": "c"})

        async def reported_waiting() -> bool:
            workers = await queue.workers()
            window = (workers[0].limit_window or {}) if workers else {}
            return window.get("waited", {}).get(limit, 0) > 0

        await eventually(reported_waiting, 10, "a heartbeat counting the wait")
        assert (await elsewhere.state()).in_line == 1
        await queue.cancel(task_id)


async def test_a_hold_of_a_limit_the_pool_declares_without_a_cap_dead_letters_the_task(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str
) -> None:
    config = LimitConfig(limit, requests_per_minute=60)
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, HELD["async"],
                                rate_limits=limits_env(config))):
        task_id = await queue.submit({"limit": limit, "redis": redis_url, "counter": "c"})
        info = await queue.wait(task_id, timeout=10)
    assert (info.state, info.attempts) == ("dead", 1)
    assert f"rate limit {limit!r} declares no maxConcurrent for this pool" in (info.error or "")


async def test_the_simulated_agent_sleeps_in_a_slot_and_submits_its_next_step(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str
) -> None:
    """The built-in handler the end-to-end tests use for caps and pipelines."""
    config = LimitConfig(limit, max_concurrent=1)
    await declared_long_ago(redis, config)
    queue, later = TaskQueue(redis, queue_name), TaskQueue(redis, f"{queue_name}-next")
    payloads = [{"mean_seconds": 0.1, "hold": limit,
                 "then": {"queue": later.name, "payload": {"step": n}}} for n in range(4)]
    async with running(settings(redis_url, queue_name, "agentpool_worker.builtin:simulated_agent",
                                concurrency=4, rate_limits=limits_env(config),
                                submits_to=later.name)):
        done = await results(queue, await queue.submit_many(payloads))
    assert all(r["capped"] for r in done)
    spans = sorted(tuple(r["held"]) for r in done)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    steps = [await later.get(r["submitted"]) for r in done]
    assert sorted(s.payload["step"] for s in steps if s is not None) == [0, 1, 2, 3]


async def nested_hold(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """A handler whose helper holds the slot its caller holds already."""
    async with ctx.hold(payload["limit"]) as outer:
        async with ctx.hold(payload["limit"]) as inner:
            same = inner.holder == outer.holder
        client = redis_from_url(payload["redis"])
        try:
            after = (await RateLimiter(client, payload["limit"]).state()).held
        finally:
            await client.aclose()
    return {"same": same, "held_after_inner": after}


def nested_hold_sync(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    with ctx.hold_sync(payload["limit"]) as outer:
        with ctx.hold_sync(payload["limit"]) as inner:
            same = inner.holder == outer.holder
        client = sync_redis_from_url(payload["redis"])
        try:
            after = int(client.zcard(key_prefix(payload["limit"]) + "held"))
        finally:
            client.close()
    return {"same": same, "held_after_inner": after}


NESTED = {"async": f"{__name__}:nested_hold", "sync": f"{__name__}:nested_hold_sync"}


@pytest.mark.parametrize("kind", sorted(NESTED))
async def test_a_run_that_holds_a_limit_it_holds_already_takes_no_second_slot(
    redis: aioredis.Redis, redis_url: str, queue_name: str, limit: str, kind: str
) -> None:
    """Two such runs under a cap of one: a second slot per run would make both wait until
    their timeout, and every other holder of the limit with them."""
    config = LimitConfig(limit, max_concurrent=1)
    await declared_long_ago(redis, config)
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, NESTED[kind], concurrency=2,
                                rate_limits=limits_env(config))):
        ids = await queue.submit_many([{"limit": limit, "redis": redis_url}] * 2)
        infos = [await queue.wait(task_id, timeout=10) for task_id in ids]
    assert [i.state for i in infos] == ["succeeded"] * 2, [i.error for i in infos]
    assert [i.result for i in infos] == [{"same": True, "held_after_inner": 1}] * 2
    state = await RateLimiter(redis, limit).state()
    assert (state.held, state.in_line, state.holds) == (0, 0, 2)


async def test_a_task_that_outlives_the_held_block_takes_a_slot_of_its_own(
    redis: aioredis.Redis, limit: str
) -> None:
    """Its context still names the outer hold, whose slot went back when the block ended:
    reusing it would let it run beside the slot's next holder, past the cap."""
    config = LimitConfig(limit, max_concurrent=1)
    await declared_long_ago(redis, config)
    limits = WorkerLimits(redis, {limit: config}, caller="outlive", queue="q")
    block_ended = asyncio.Event()

    async def later() -> tuple[str, int]:
        await block_ended.wait()
        async with limits.hold(limit) as held:
            return held.holder, (await RateLimiter(redis, limit).state()).held

    async with limits.hold(limit) as outer:
        child = asyncio.create_task(later())
    assert (await RateLimiter(redis, limit).state()).held == 0
    block_ended.set()
    async with asyncio.timeout(10):
        holder, held_then = await child
    assert holder != outer.holder and held_then == 1
    assert (await RateLimiter(redis, limit).state()).held == 0


async def test_blocks_running_side_by_side_take_a_slot_each_and_share_the_slot_they_run_in(
    redis: aioredis.Redis, limit: str
) -> None:
    """Re-entrance follows the task: sibling tasks each hold a slot of their own; tasks
    started inside a held block run in its slot."""
    config = LimitConfig(limit, max_concurrent=2)
    await declared_long_ago(redis, config)
    limits = WorkerLimits(redis, {limit: config}, caller="side", queue="q")
    inside = asyncio.Barrier(3)

    async def one() -> str:
        async with limits.hold(limit) as held:
            await inside.wait()
            return held.holder

    siblings = asyncio.gather(one(), one())
    await inside.wait()
    assert (await RateLimiter(redis, limit).state()).held == 2
    first, second = await siblings
    assert first != second
    async with limits.hold(limit) as outer:
        inside = asyncio.Barrier(3)
        children = asyncio.gather(one(), one())
        async with asyncio.timeout(10):  # a guard: a slot each would wait forever here
            await inside.wait()
        assert (await RateLimiter(redis, limit).state()).held == 1
        assert await children == [outer.holder, outer.holder]
    assert (await RateLimiter(redis, limit).state()).held == 0
