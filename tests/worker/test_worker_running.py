"""Running tasks: concurrency, threads for sync handlers, timeouts, leases, bad payloads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import sample_handlers
from worker_helpers import HANDLERS, eventually, retry_wait, running, settings, task_in

from agentpool.protocol import CancelOutcome, TaskQueue


async def test_concurrency_cap_is_respected(redis_url: str, queue_name: str,
                                            redis: aioredis.Redis) -> None:
    queue = TaskQueue(redis, queue_name)
    gauge = sample_handlers.GAUGE = sample_handlers.Gauge()
    ids = await queue.submit_many([{"seconds": 0.15}] * 12)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:counted", concurrency=3)):
        for task_id in ids:
            await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 10, "all done")
    assert gauge.peak == 3


async def test_sync_handlers_run_in_threads_without_blocking_the_loop(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    gauge = sample_handlers.GAUGE = sample_handlers.Gauge()
    ids = await queue.submit_many([{"seconds": 0.4}] * 4)
    worst_gap = 0.0
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sync_counted",
                                concurrency=4)):
        last = time.monotonic()
        while any([await task_in(queue, t, "queued", "running") for t in ids]):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst_gap, last = max(worst_gap, now - last), now
    results = [(await queue.get(t)) for t in ids]
    assert all(r is not None and r.state == "succeeded" for r in results)
    assert gauge.peak == 4
    assert all(name.startswith("agentpool-handler") for name in gauge.threads)
    assert worst_gap < 0.3, f"the event loop stalled for {worst_gap:.2f}s"


async def test_a_run_past_the_task_timeout_fails_and_frees_its_slot(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    slow = await queue.submit({"seconds": 30}, max_attempts=1)
    quick = await queue.submit({"seconds": 0})
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleep", concurrency=1,
                                task_timeout_seconds=0.3)):
        dead = await eventually(lambda: task_in(queue, slow, "dead"), 10, "timeout")
        await eventually(lambda: task_in(queue, quick, "succeeded"), 10, "the next task")
    assert dead.error == "timed out after 0.3s"


async def test_a_task_with_a_shorter_timeout_of_its_own_is_stopped_by_it(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    slow = await queue.submit({"seconds": 30}, max_attempts=1, task_timeout=0.3)
    quick = await queue.submit({"seconds": 0}, task_timeout=5)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleeps_within_its_timeout",
                                task_timeout_seconds=60)):
        dead = await eventually(lambda: task_in(queue, slow, "dead"), 10, "its own timeout")
        done = await eventually(lambda: task_in(queue, quick, "succeeded"), 10, "the other")
    assert dead.error == "timed out after 0.3s (the task's own timeout)"
    assert done.result == 5


async def test_a_tasks_timeout_never_lengthens_the_pools(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    slow = await queue.submit({"seconds": 30}, max_attempts=1, task_timeout=3600)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleeps_within_its_timeout",
                                task_timeout_seconds=0.3)):
        dead = await eventually(lambda: task_in(queue, slow, "dead"), 10, "the pool's timeout")
    assert dead.error == "timed out after 0.3s (the pool's task timeout; the task's own is 3600s)"


@pytest.mark.parametrize("handler", ["retries_later", "sync_retries_later"])
async def test_a_handler_that_raises_retry_runs_again_after_its_delay_not_the_backoff(
    redis_url: str, queue_name: str, redis: aioredis.Redis, handler: str,
) -> None:
    """The worker's backoff here would hold the retry for at least 500 s."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"delay": 0.5, "reason": "the index is still building"})
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:{handler}",
                                retry_backoff_base_seconds=1000,
                                retry_backoff_cap_seconds=1000)):
        assert 0.5 <= await retry_wait(queue, task_id) < 5
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the retry")
    assert (done.attempts, done.result) == (2, {"attempt": 2})


async def test_retries_asked_by_every_failed_child_of_a_task_group_are_honoured(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({})
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:retries_from_a_task_group",
                                retry_backoff_base_seconds=1000,
                                retry_backoff_cap_seconds=1000)):
        assert 0.5 <= await retry_wait(queue, task_id) < 5  # the longer of its children's
        done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "the retry")
    assert (done.attempts, done.result) == (2, {"attempt": 2})


@pytest.mark.parametrize("handler", ["retries_when_its_timeout_cancels_it",
                                     "returns_when_its_timeout_cancels_it"])
async def test_what_a_handler_makes_of_its_timeouts_cancel_is_a_timeout(
    redis_url: str, queue_name: str, redis: aioredis.Redis, handler: str,
) -> None:
    """Raising Retry or returning a result once the timeout cancelled it: the run was too long."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({}, max_attempts=1)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:{handler}",
                                task_timeout_seconds=0.3)):
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the timeout")
    assert dead.error == "timed out after 0.3s" and dead.result is None


async def test_a_retry_asked_on_the_last_attempt_dead_letters_with_why(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"delay": 30, "reason": "quota resets at midnight"},
                                 max_attempts=1)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:retries_later")):
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "the dead letter")
    assert dead.error == "asked to run again in 30s: quota resets at midnight"


async def test_a_timed_out_run_is_retried(redis_url: str, queue_name: str,
                                          redis: aioredis.Redis) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"seconds": 30}, max_attempts=2)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleep",
                                task_timeout_seconds=0.2)):
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "two attempts")
    assert dead.attempts == 2


async def test_heartbeats_extend_leases(redis_url: str, queue_name: str,
                                        redis: aioredis.Redis) -> None:
    """A run three times longer than its lease is not reaped while its worker lives."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"seconds": 3.0})
    reaped = 0
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleep",
                                lease_seconds=1.0)):
        await eventually(lambda: task_in(queue, task_id, "running"), 5, "the claim")
        while not await task_in(queue, task_id, "succeeded"):
            reaped += (await queue.reap_expired()).total
            await asyncio.sleep(0.05)
    info = await queue.get(task_id)
    assert info is not None and info.attempts == 1
    assert reaped == 0


async def test_heartbeats_report_when_each_run_began(redis_url: str, queue_name: str,
                                                     redis: aioredis.Redis) -> None:
    """Scale-down reads how long a pod's runs have been going from its heartbeats."""
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"seconds": 30.0}] * 2)

    async def reported() -> tuple[float, ...]:
        instances = await queue.instances("pod-local")
        return instances[0].runs_since if instances else ()

    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleep",
                                lease_seconds=0.6, drain_seconds=0.1)):
        since = await eventually(lambda: _two(reported()), 10, "both runs in a heartbeat")
        began = []
        for task_id in ids:
            info = await queue.get(task_id)
            assert info is not None and info.started_ms is not None
            began.append(info.started_ms / 1000)
        assert sorted(since) == pytest.approx(sorted(began))


async def _two(reported: Any) -> tuple[float, ...] | None:
    since = await reported
    return since if len(since) == 2 else None


async def test_malformed_payload_is_dead_lettered_and_the_worker_goes_on(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    not_json = await queue.submit({"ok": 1})
    not_utf8 = await queue.submit({"ok": 2})
    good = await queue.submit({"ok": 3})
    await redis.hset(queue.task_key(not_json), "payload", "{not json")  # type: ignore[misc]
    await redis.hset(queue.task_key(not_utf8), "payload", b"\xff\xfe{")  # type: ignore[misc]
    async with running(settings(redis_url, queue_name, "agentpool_worker.builtin:echo")) as w:
        for task_id in (not_json, not_utf8):
            dead = await eventually(lambda t=task_id: task_in(queue, t, "dead"), 10, "DLQ")
            assert dead.error.startswith("malformed payload (not JSON)")
            assert dead.attempts == 1
        done = await eventually(lambda: task_in(queue, good, "succeeded"), 10, "good task")
        assert done.result == {"ok": 3}
        later = await queue.submit({"ok": 4})
        after = await eventually(lambda: task_in(queue, later, "succeeded"), 10, "next task")
        assert after.result == {"ok": 4}
        assert w.state == "running"


async def test_permanent_error_dead_letters_at_once(redis_url: str, queue_name: str,
                                                    redis: aioredis.Redis) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit(None, max_attempts=5)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:refuse")):
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "DLQ")
    assert dead.attempts == 1
    assert dead.error.startswith("PermanentError: cannot ever work")


async def test_a_running_task_can_be_cancelled(redis_url: str, queue_name: str,
                                               redis: aioredis.Redis) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"seconds": 30})
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sleep",
                                lease_seconds=0.6)):
        await eventually(lambda: task_in(queue, task_id, "running"), 5, "the claim")
        assert await queue.cancel(task_id) is CancelOutcome.REQUESTED
        await eventually(lambda: task_in(queue, task_id, "cancelled"), 5, "the cancel")


async def test_failures_are_retried_with_backoff(redis_url: str, queue_name: str,
                                                 redis: aioredis.Redis) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"fail_rate": 1.0, "mean_seconds": 0}, max_attempts=3)
    async with running(settings(redis_url, queue_name,
                                "agentpool_worker.builtin:simulated_agent")):
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 10, "3 attempts")
    assert dead.attempts == 3
    assert "SimulatedFailure" in (dead.error or "")
    assert (await queue.figures()).stats.get("retried") == 2


@pytest.mark.parametrize("mean", ["nan", "inf", 1e308, -1])
async def test_an_absurd_simulated_duration_is_dead_lettered_at_once(
    redis_url: str, queue_name: str, redis: aioredis.Redis, mean: Any,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"mean_seconds": mean}, max_attempts=3)
    async with running(settings(redis_url, queue_name,
                                "agentpool_worker.builtin:simulated_agent")):
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 5, "the dead letter")
    assert dead.attempts == 1
    assert "mean_seconds must be between 0 and 3600" in (dead.error or "")


async def test_an_idle_worker_does_not_spin_on_stale_wake_ups(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Every submit pushes a wake-up; the claim that empties the queue drops the leftovers,
    so after a burst the worker blocks instead of waking once per task already done."""
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([None] * 300)
    async with running(settings(redis_url, queue_name, "agentpool_worker.builtin:noop",
                                concurrency=50, claim_batch=50)) as worker:
        for task_id in ids:
            await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 10, "the burst")
        before = worker.metrics.round_trips._value.get()
        beat = (await queue.workers())[0].last_heartbeat
        for _ in range(2):
            beat = await eventually(lambda b=beat: _next_beat(queue, b), 5, "a heartbeat")
        idle_trips = worker.metrics.round_trips._value.get() - before
    assert await redis.llen(queue.prefix + "wake") == 0  # type: ignore[misc]
    assert idle_trips < 30


async def _next_beat(queue: TaskQueue, after: float) -> float | None:
    beats = [w.last_heartbeat for w in await queue.workers() if w.last_heartbeat > after]
    return beats[0] if beats else None
