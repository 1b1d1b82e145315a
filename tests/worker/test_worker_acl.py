"""A worker whose Redis user is confined to its queue's keys runs, retries and drains its
tasks; a producer confined the same way submits and waits for them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest
import redis.asyncio as aioredis
import sample_handlers
from redis_freeze import frozen
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.protocol import ProtocolError, TaskQueue
from agentpool.redis_server import RedisServer
from agentpool.urls import with_credentials
from agentpool_worker import metrics
from agentpool_worker.handlers import RunChannel, TaskContext

AclUrl = Callable[[str, Role], Awaitable[str]]


async def test_a_worker_with_only_its_acl_runs_and_releases_tasks(
    acl_url: AclUrl, queue_name: str, redis: aioredis.Redis,
) -> None:
    worker_url = await acl_url(queue_name, Role.WORKER)
    producer_client = aioredis.Redis.from_url(await acl_url(queue_name, Role.PRODUCER))
    producer = TaskQueue(producer_client, queue_name)
    try:
        async with running(settings(worker_url, queue_name, f"{HANDLERS}:sleep",
                                    concurrency=2, drain_seconds=0.2)) as worker:
            quick = [await producer.submit({"seconds": 0}) for _ in range(3)]
            results = await asyncio.gather(*(producer.wait(t, timeout=10) for t in quick))
            assert [r.state for r in results] == ["succeeded"] * 3
            slow = await producer.submit({"seconds": 60})
            await eventually(lambda: task_in(producer, slow, "running"), 10, "the slow claim")
            assert worker.health.redis_ok
        released = await task_in(producer, slow, "queued")
        assert released is not None and released.attempts == 0
        assert released.error == "worker shutting down"
    finally:
        await producer_client.aclose()


async def test_a_worker_with_only_its_acl_submits_steps_and_reads_their_results(
    acl_url: AclUrl, queue_name: str, redis: aioredis.Redis,
) -> None:
    """ctx.submit (with `after`) and ctx.results_before under the worker's own user."""
    producer_client = aioredis.Redis.from_url(await acl_url(queue_name, Role.PRODUCER))
    producer = TaskQueue(producer_client, queue_name)
    try:
        async with running(settings(await acl_url(queue_name, Role.WORKER), queue_name,
                                    f"{HANDLERS}:fan_out_in", concurrency=4)):
            plan = await producer.submit({"words": ["a", "b"]})
            done = await eventually(lambda: task_in(producer, plan, "succeeded"), 10, "plan")
            summary = await producer.wait(done.result["summary"], timeout=10)
        assert (summary.state, summary.result) == ("succeeded", "a b")
    finally:
        await producer_client.aclose()


async def test_a_worker_submits_to_the_other_queues_its_pool_lists_and_no_other(
    redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """AGENTPOOL_SUBMITS_TO and the worker user's selectors (as the operator makes them from
    spec.worker.submitsTo): steps go to the other queue once per task whatever the attempts;
    a queue not listed fails the run with a message that says where to list it."""
    coder = f"{queue_name}-coder"
    producer = TaskQueue(redis, queue_name)
    async with worker_user(redis, redis_url, queue_name, coder) as (url, _):
        async with running(settings(url, queue_name, f"{HANDLERS}:delegate", max_attempts=2,
                                    submits_to=coder)):
            plan = await producer.submit({"steps": ["a", "b"], "to": coder})
            done = await eventually(lambda: task_in(producer, plan, "succeeded"), 10, "plan")
            astray = await producer.submit({"steps": ["c"], "to": f"{queue_name}-other"})
            dead = await eventually(lambda: task_in(producer, astray, "dead"), 10, "astray")
        assert done.attempts == 2
        delegated = TaskQueue(redis, coder)
        steps = await delegated.get_many([*done.result["steps"], done.result["review"]])
        assert [(s.payload, s.state) for s in steps] == [
            ("a", "queued"), ("b", "queued"), ({"review": 2}, "deferred")]
        assert (await delegated.figures()).stats["submitted"] == 3, "each step once"
        assert metrics.SUBMITTED.labels(queue_name, coder)._value.get() == 6, \
            "three submits by each of the two attempts, counted where they went"
        assert dead.error is not None and "is not one this pool submits to" in dead.error
        assert f"queue '{queue_name}-other'" in dead.error and coder in dead.error


@pytest.mark.parametrize(("handler", "expected"), [
    ("delegate_and_gather", ["a", "b"]), ("sync_delegate_and_gather", ["a", "b"])])
async def test_a_run_waits_for_the_tasks_it_handed_to_another_pool(
    redis: aioredis.Redis, redis_url: str, queue_name: str, handler: str, expected: list[str],
) -> None:
    """ctx.wait_many under the worker's own user (its selector on the other queue covers the
    subscription); a sync handler's wait ends when its run is cancelled, freeing the slot."""
    coder = f"{queue_name}-coder"
    planner = TaskQueue(redis, queue_name)
    async with worker_user(redis, redis_url, queue_name, coder) as (url, user):
        async with running(settings(url, queue_name, f"{HANDLERS}:{handler}", concurrency=1,
                                    submits_to=coder)):
            stranded = await planner.submit({"words": ["x"], "to": coder})
            # Its step queued, not merely its task claimed: a cancel the worker learns of
            # before the run's submit ends the run there (LeaseLost), never in its wait.
            await eventually(lambda: _queued(redis, coder, 1), 10, "a waiting run's step")
            await planner.cancel(stranded)
            await eventually(lambda: task_in(planner, stranded, "cancelled"), 10, "cancelled")
            if handler.startswith("sync_"):
                await eventually(lambda: stranded in sample_handlers.WAITS_CANCELLED, 5,
                                 "the sync handler's wait ended with WaitCancelled")
            plan = await planner.submit({"words": ["a", "b"], "to": coder})
            async with running(settings(redis_url, coder, f"{HANDLERS}:fan_in")):
                done = await eventually(lambda: task_in(planner, plan, "succeeded"), 15,
                                        "the plan, once the other pool ran its steps")
        assert done.result == expected and done.attempts == 1
        refused = [entry for entry in await redis.acl_log() if entry["username"] == user]
        assert refused == [], "the wait subscribed (a refused subscription would poll)"


async def test_a_runs_wait_for_another_pools_tasks_ends_at_its_timeout(
    redis: aioredis.Redis, redis_url: str, queue_name: str,
) -> None:
    """TimeoutError reaches the handler (here it fails the run) and is no Redis failure."""
    coder = f"{queue_name}-coder"
    planner = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:delegate_and_gather",
                                max_attempts=1, submits_to=coder)) as worker:
        task = await planner.submit({"words": ["x", "y"], "to": coder, "timeout": 0.5})
        dead = await eventually(lambda: task_in(planner, task, "dead"), 10, "the timed-out run")
        assert worker.health.redis_ok
        assert worker.metrics.redis_errors._value.get() == 0
    assert dead.error is not None
    head, _, traceback = dead.error.partition("\n")
    assert head == f"TimeoutError: 2 of 2 tasks of queue '{coder}' not final after 0.5s"
    assert "site-packages/redis" not in traceback, "the wait's own timeout, not redis-py's"


async def test_a_runs_wait_that_ends_on_a_redis_that_does_not_answer_says_so(
    queue_name: str,
) -> None:
    """The run's TimeoutError tells a frozen Redis from tasks that are merely slow, as a
    producer's wait does."""
    coder = f"{queue_name}-coder"
    with RedisServer() as server:
        redis = aioredis.Redis.from_url(server.url)
        planner = TaskQueue(redis, queue_name)
        try:
            async with running(settings(server.url, queue_name,
                                        f"{HANDLERS}:delegate_and_gather", max_attempts=1,
                                        submits_to=coder, lease_seconds=30)):
                task = await planner.submit({"words": ["x", "y"], "to": coder, "timeout": 3})
                await eventually(lambda: _queued(redis, coder, 2), 10, "the run's two steps")
                with frozen(server):
                    await asyncio.sleep(4)  # past the wait's 3 s
                dead = await eventually(lambda: task_in(planner, task, "dead"), 10,
                                        "the run, failed by its wait's TimeoutError")
        finally:
            await redis.aclose()
    assert dead.error is not None
    assert re.fullmatch(rf"TimeoutError: 2 of 2 tasks of queue '{coder}' not final after 3s; "
                        r"Redis did not answer( for the last [\d.]+s)?",
                        dead.error.partition("\n")[0]), dead.error


async def _queued(redis: aioredis.Redis, queue: str, count: int) -> bool:
    figures = await TaskQueue(redis, queue).figures()
    return sum(figures.queued_by_priority.values()) >= count


async def test_a_run_does_not_wait_for_tasks_of_its_own_queue() -> None:
    ctx = TaskContext("t", 1, 3, "planner", "pod:i1", channel=cast(RunChannel, object()))
    with pytest.raises(ProtocolError, match="submit the task that needs their results with"):
        await ctx.wait_many(["a" * 32], queue="planner")


@contextlib.asynccontextmanager
async def worker_user(redis: aioredis.Redis, redis_url: str, queue: str,
                      other: str) -> AsyncIterator[tuple[str, str]]:
    """A worker user of `queue` that may submit to `other`, as the operator makes it from
    spec.worker.submitsTo: its URL and name; deleted afterwards."""
    password = secrets.token_urlsafe(16)
    user = f"agentpool:tests:{uuid.uuid4().hex[:8]}:worker"
    await set_user(redis, user, acl_rules(queue, Role.WORKER, [password_hash(password)], (),
                                          [other]))
    try:
        yield with_credentials(redis_url, user, password), user
    finally:
        await delete_user(redis, user)
