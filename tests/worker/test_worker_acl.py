"""A worker whose Redis user is confined to its queue's keys runs, retries and drains its
tasks; a producer confined the same way submits and waits for them."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.protocol import TaskQueue
from agentpool.urls import with_credentials

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
    coder, password = f"{queue_name}-coder", secrets.token_urlsafe(16)
    user = f"agentpool:tests:{uuid.uuid4().hex[:8]}:worker"
    await set_user(redis, user, acl_rules(queue_name, Role.WORKER, [password_hash(password)],
                                          (), [coder]))
    producer = TaskQueue(redis, queue_name)
    try:
        async with running(settings(with_credentials(redis_url, user, password), queue_name,
                                    f"{HANDLERS}:delegate", max_attempts=2,
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
        assert dead.error is not None and "is not one this pool submits to" in dead.error
        assert f"queue '{queue_name}-other'" in dead.error and coder in dead.error
    finally:
        await delete_user(redis, user)
