"""Retries: backoff with jitter, attempts, crashes counted, dead-lettering."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from protocol_helpers import claim_one, claim_within, eventually
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentpool.protocol import FailOutcome, TaskQueue, retry_delay, worth_retrying


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base=st.floats(min_value=0.001, max_value=10),
    cap=st.floats(min_value=0.01, max_value=3600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_retry_delay_is_between_half_and_all_of_a_capped_doubling_step(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    step = min(cap, base * 2.0 ** min(attempt - 1, 200))
    delay = retry_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert step / 2 <= delay <= step


def test_retry_delay_is_jittered() -> None:
    rng = random.Random(7)
    delays = [retry_delay(3, base=1.0, cap=300.0, rng=rng) for _ in range(500)]
    assert len(set(delays)) > 400
    assert min(delays) < 2.2 and max(delays) > 3.8


@pytest.mark.parametrize(("error", "reached", "failing_for", "retry"), [
    (RedisConnectionError("closed"), True, 0.0, True),  # a failover: ride it out
    (RedisTimeoutError("slow"), True, 29.0, True),
    (ConnectionResetError(), True, 0.0, True),
    (RedisConnectionError("closed"), True, 31.0, False),  # out of patience
    (RedisConnectionError("refused"), False, 0.0, False),  # never reached: say so at once
    (AuthenticationError("invalid password"), True, 0.0, False),  # no retry mends it
    (TimeoutError(), True, 0.0, False),  # the caller's deadline
    (ValueError("bug"), True, 0.0, False),
])
def test_what_a_waiting_caller_retries(error: Exception, reached: bool, failing_for: float,
                                       retry: bool) -> None:
    assert worth_retrying(error, reached=reached, failing_for=failing_for,
                          patience=30.0) is retry


def test_an_event_stream_retries_a_lost_connection_for_as_long_as_it_lasts() -> None:
    assert worth_retrying(RedisConnectionError("closed"), failing_for=3600.0)
    assert not worth_retrying(AuthenticationError("invalid password"))


async def test_failed_task_waits_out_a_backoff_before_its_retry(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    async def redis_ms() -> int:
        seconds, micros = await redis.time()
        return seconds * 1000 + micros // 1000

    task_id = await queue.submit("flaky")
    task = await claim_one(queue, "w:1")
    before_fail = await redis_ms()
    assert await queue.fail(task, "boom") == FailOutcome.RETRY
    after_fail = await redis_ms()
    raw_due = await redis.hget(queue.task_key(task_id), "due")
    assert raw_due is not None
    due = int(raw_due)
    # first retry: 0.5-1 s after the fail, which came between the two readings of the clock
    # (a loaded machine may take a while between them: bound each side by the fitting one)
    assert due - before_fail >= 450 and due - after_fail <= 1000
    info = await queue.get(task_id)
    assert info is not None and (info.state, info.error) == ("delayed", "boom")
    before_claim = await redis_ms()
    batch = await queue.claim("w:1", 1, 30)
    after_claim = await redis_ms()
    assert batch.tasks == []
    assert batch.next_due_in is not None
    assert (due - after_claim) / 1000 - 0.01 <= batch.next_due_in <= (
        due - before_claim) / 1000 + 0.01


async def test_task_is_retried_up_to_max_attempts_then_dead_with_last_error(
    queue: TaskQueue,
) -> None:
    task_id = await queue.submit("flaky")
    outcomes = []
    for n in range(1, 4):
        task = await claim_within(queue, "w:1")
        assert (task.id, task.attempts, task.max_attempts) == (task_id, n, 3)
        outcomes.append(await queue.fail(task, f"boom {n}", delay=0))
    assert outcomes == [FailOutcome.RETRY, FailOutcome.RETRY, FailOutcome.DEAD]
    assert (await queue.claim("w:1", 1, 30)).tasks == []
    dead = await queue.dead_letters()
    assert [(d.id, d.state, d.error, d.attempts) for d in dead] == [
        (task_id, "dead", "boom 3", 3)]


async def test_non_retryable_failure_is_dead_at_once(queue: TaskQueue) -> None:
    task_id = await queue.submit("bad input", max_attempts=5)
    task = await claim_one(queue, "w:1")
    assert await queue.fail(task, "invalid payload", retryable=False) == FailOutcome.DEAD
    info = await queue.get(task_id)
    assert info is not None and (info.state, info.error) == ("dead", "invalid payload")


async def test_worker_crash_counts_as_an_attempt(queue: TaskQueue) -> None:
    task_id = await queue.submit("poison")
    results = []
    for n in range(1, 4):
        task = await claim_one(queue, f"pod-a:i{n}")
        assert task.attempts == n
        results.append(await queue.requeue_owner(f"pod-a:i{n}"))
    assert [(r.requeued, r.dead_lettered) for r in results] == [(1, 0), (1, 0), (0, 1)]
    info = await queue.get(task_id)
    assert info is not None
    assert info.state == "dead"
    assert info.error == "worker lost, held by pod-a:i3 (attempt 3 of 3)"
    assert [d.id for d in await queue.dead_letters()] == [task_id]


async def test_expired_lease_counts_as_an_attempt(queue: TaskQueue) -> None:
    task_id = await queue.submit("poison", max_attempts=1)
    await claim_one(queue, "pod-a:i1", lease=0.05)

    async def reaped() -> bool:
        return (await queue.reap_expired()).dead_lettered == 1

    await eventually(reaped)
    info = await queue.get(task_id)
    assert info is not None
    assert (info.state, info.error) == ("dead", "lease expired, held by pod-a:i1 (attempt 1 of 1)")


async def test_queue_default_max_attempts_and_per_task_override(queue: TaskQueue) -> None:
    await queue.configure(max_attempts=1)
    default_id = await queue.submit("default")
    override_id = await queue.submit("override", max_attempts=2)

    task = await claim_one(queue, "w:1")
    assert (task.id, task.max_attempts) == (default_id, 1)
    assert await queue.fail(task, "boom", delay=0) == FailOutcome.DEAD

    task = await claim_one(queue, "w:1")
    assert (task.id, task.max_attempts) == (override_id, 2)
    assert await queue.fail(task, "boom", delay=0) == FailOutcome.RETRY
    task = await claim_within(queue, "w:1")
    assert await queue.fail(task, "boom", delay=0) == FailOutcome.DEAD
