"""Tasks that run after others, through a worker: a fan-in step reads the results of the
steps it runs after (ctx.results_before), async and sync handlers alike; a run submits its
own steps (ctx.submit), once per task whatever its attempts do."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import sample_handlers
from redis_freeze import frozen
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.protocol import ProtocolError, TaskQueue
from agentpool.redis_server import RedisServer, free_port
from agentpool_worker.handlers import RunChannel, TaskContext


@pytest.mark.parametrize(("handler", "expected"), [
    ("fan_in", "plan act check"), ("sync_fan_in", "PLAN+ACT+CHECK")])
async def test_a_fan_in_step_reads_the_results_of_the_steps_before_it(
    redis_url: str, queue_name: str, redis: aioredis.Redis, handler: str, expected: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    words = ("plan", "act", "check")  # run last to first: each waits less than the one before
    parts = [await queue.submit({"word": w}, delay=0.1 * (3 - i)) for i, w in enumerate(words)]
    summary = await queue.submit({"summarise": True}, after=parts)
    alone = await queue.submit({"summarise": True})
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:{handler}",
                                concurrency=4)):
        done = await eventually(lambda: task_in(queue, summary, "succeeded"), 10, "summary")
        lone = await eventually(lambda: task_in(queue, alone, "succeeded"), 10, "lone")
    assert done.result == expected, "the results in the order the submit named the tasks"
    assert lone.result == "", "a task submitted without after reads no results"


@pytest.mark.parametrize(("handler", "expected"), [
    ("fan_out_in", "plan act check"), ("sync_fan_out_in", "PLAN+ACT+CHECK"),
    ("batch_fan_out_in", "plan act check"), ("sync_batch_fan_out_in", "PLAN+ACT+CHECK")])
async def test_a_run_submits_its_steps_once_per_task_whatever_its_attempts(
    redis_url: str, queue_name: str, redis: aioredis.Redis, handler: str, expected: str,
) -> None:
    """ctx.submit and ctx.submit_many: the planners fail their first attempt after
    submitting; the second submits the same steps again and gets the same ids, so each step
    runs once."""
    queue = TaskQueue(redis, queue_name)
    plan = await queue.submit({"words": ["plan", "act", "check"]})
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:{handler}",
                                concurrency=4)):
        done = await eventually(lambda: task_in(queue, plan, "succeeded"), 10, "the plan")
        summary = await eventually(
            lambda: task_in(queue, done.result["summary"], "succeeded"), 10, "the summary")
    assert summary.result == expected
    assert summary.after == tuple(done.result["parts"])
    figures = await queue.figures()
    assert (figures.stats["submitted"], figures.stats["succeeded"]) == (5, 5), \
        "the plan, three parts and the summary, each once"


class QueueChannel:
    """The submit side of a worker's channel, straight on a real queue; `lose_reply` calls
    submit and then fail as a lost reply does (the task stored, the caller told nothing)."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.lose_reply = 0

    async def submit(self, ctx: TaskContext, payload: Any, **options: Any) -> str:
        task_id = await self.queue.submit(payload, **options)
        if self.lose_reply:
            self.lose_reply -= 1
            raise ConnectionError("reply lost")
        return task_id

    async def submit_many(self, ctx: TaskContext, payloads: list[Any],
                          **options: Any) -> list[str]:
        ids = await self.queue.submit_many(payloads, **options)
        if self.lose_reply:
            self.lose_reply -= 1
            raise ConnectionError("reply lost")
        return ids


def attempt(channel: QueueChannel, number: int, task_id: str = "plan-1") -> TaskContext:
    return TaskContext(task_id, number, 3, channel.queue.name, "pod:i1",
                       channel=cast(RunChannel, channel))


async def test_another_attempt_gets_the_same_tasks_in_any_order_and_new_ones_for_new_steps(
    queue: TaskQueue,
) -> None:
    channel = QueueChannel(queue)
    first = attempt(channel, 1)
    a, b, b_again = [await first.submit(p) for p in ({"w": "a"}, {"w": "b"}, {"w": "b"})]
    summary = await first.submit({"sum": True}, after=[a, b])
    assert len({a, b, b_again}) == 3, "the same payload twice in a run is two tasks"

    second = attempt(channel, 2)
    assert await second.submit({"w": "b"}) == b
    assert await second.submit({"w": "a"}) == a
    assert await second.submit({"w": "b"}) == b_again
    assert await second.submit({"sum": True}, after=[a, b]) == summary
    resumed = attempt(channel, 3)  # from a checkpoint taken after a and b
    assert await resumed.submit({"sum": True}, after=[a, b]) == summary
    replanned = await attempt(channel, 3).submit({"sum": True}, after=[a])
    assert replanned not in (a, b, b_again, summary), "other options, another task"
    assert (await queue.figures()).stats["submitted"] == 5


async def test_a_key_of_its_own_names_a_submit_apart_from_the_unnamed_ones(
    queue: TaskQueue,
) -> None:
    channel = QueueChannel(queue)
    run = attempt(channel, 1)
    unnamed = await run.submit({"w": "a"})
    assert await run.submit({"w": "a"}, key="0") != unnamed
    assert await attempt(channel, 2).submit({"w": "other"}, key="0") == \
        await run.submit({"w": "z"}, key="0"), "the key alone names it"


async def test_a_submit_tried_again_after_a_lost_reply_is_one_task(queue: TaskQueue) -> None:
    channel = QueueChannel(queue)
    run = attempt(channel, 1)
    channel.lose_reply = 1
    with pytest.raises(ConnectionError):
        await run.submit({"w": "a"})
    task_id = await run.submit({"w": "a"})
    assert (await queue.figures()).stats["submitted"] == 1
    assert await run.submit({"w": "a"}) != task_id, "the next of its kind is a new task"


async def test_a_fan_out_submitted_again_by_another_attempt_queues_only_new_steps(
    queue: TaskQueue,
) -> None:
    """ctx.submit_many names each task as ctx.submit would: another attempt gets the same
    ids whether it fans out in one call or one by one, in any order, and new tasks only for
    new steps; a batch whose reply was lost, sent again, is one set of tasks."""
    channel = QueueChannel(queue)
    first = attempt(channel, 1)
    steps = await first.submit_many([{"w": "a"}, {"w": "b"}, {"w": "b"}], priority=3)
    assert len(set(steps)) == 3, "the same payload twice in a fan-out is two tasks"
    second = attempt(channel, 2)
    assert await second.submit({"w": "b"}, priority=3) == steps[1]
    again = await second.submit_many([{"w": "b"}, {"w": "c"}, {"w": "a"}], priority=3)
    assert (again[0], again[2]) == (steps[2], steps[0]) and again[1] not in steps
    assert (await queue.figures()).stats["submitted"] == 4
    channel.lose_reply = 1
    third = attempt(channel, 3)
    with pytest.raises(ConnectionError):
        await third.submit_many([{"w": "d"}, {"w": "a"}], priority=3)
    retried = await third.submit_many([{"w": "d"}, {"w": "a"}], priority=3)
    assert retried[1] == steps[0]
    assert [i.payload for i in await queue.get_many(retried)] == [{"w": "d"}, {"w": "a"}]
    assert (await queue.figures()).stats["submitted"] == 5, "the batch sent twice: one new task"


async def test_the_pools_own_queue_named_or_not_names_a_step_alike(queue: TaskQueue) -> None:
    channel = QueueChannel(queue)
    step = await attempt(channel, 1).submit({"w": "a"})
    assert await attempt(channel, 2).submit({"w": "a"}, queue=queue.name) == step
    assert await attempt(channel, 2).submit_many([{"w": "a"}], queue=queue.name) == [step]


async def test_a_fan_out_under_keys_of_its_own(queue: TaskQueue) -> None:
    channel = QueueChannel(queue)
    steps = await attempt(channel, 1).submit_many(["x", "y"], keys=["one", "two"])
    assert await attempt(channel, 2).submit_many(["other", "y"], keys=["one", "two"]) == steps
    assert await attempt(channel, 2).submit("z", key="two") == steps[1], "one naming"
    with pytest.raises(ProtocolError, match="keys has 1 keys for 2 payloads"):
        await attempt(channel, 2).submit_many(["x", "y"], keys=["one"])
    with pytest.raises(ProtocolError, match="a key is a non-empty string or None, got ''"):
        await attempt(channel, 2).submit_many(["x", "y"], keys=["one", ""])
    assert (await queue.figures()).stats["submitted"] == 2
    run = attempt(channel, 3)
    mixed = await run.submit_many(["x", "y"], keys=[None, None])
    assert len(set(mixed)) == 2, "None: each named by what it submits, as without keys"
    assert [i.payload for i in await queue.get_many(mixed)] == ["x", "y"]
    assert await attempt(channel, 4).submit_many(["y", "x"], keys=[None, None]) == [
        mixed[1], mixed[0]]
    assert await attempt(channel, 4).submit_many(["y", "z"], keys=[None, "two"]) == [
        mixed[1], steps[1]]


async def test_a_fan_out_refused_before_it_was_sent_gives_its_names_back(
    queue: TaskQueue,
) -> None:
    """A payload that cannot even be named (not JSON) stops the call: the names taken for
    the payloads before it are given back, so the run's next submit of those is named as
    another attempt names it."""
    channel = QueueChannel(queue)
    run = attempt(channel, 1)
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        await run.submit_many(["a", circular])
    assert await run.submit("a") == await attempt(channel, 2).submit("a")


class NoRedis:
    """A channel whose every call fails: a run that reads Redis through it would raise."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the run read Redis ({name})")


async def test_a_run_of_a_task_without_after_reads_no_results_from_redis() -> None:
    """Its claim said it runs after nothing: no round trip to find that out."""
    ctx = TaskContext("t", 1, 3, "q", "pod:i1", channel=cast(RunChannel, NoRedis()))
    assert await ctx.results_before() == {}
    waiting = TaskContext("t", 1, 3, "q", "pod:i1", channel=cast(RunChannel, NoRedis()),
                          after=("a" * 32,))
    with pytest.raises(AssertionError, match="the run read Redis"):
        await waiting.results_before()


def test_submit_without_a_worker_says_so() -> None:
    ctx = TaskContext("t", 1, 3, "q", "pod:i1")
    with pytest.raises(RuntimeError, match=r"ctx\.submit_sync needs the worker behind the run"):
        ctx.submit_sync({"w": 1})
    with pytest.raises(RuntimeError, match=r"ctx\.submit_many_sync needs the worker"):
        ctx.submit_many_sync([{"w": 1}])


@pytest.fixture
def queue(redis: aioredis.Redis, queue_name: str) -> TaskQueue:
    return TaskQueue(redis, queue_name)


async def test_a_submit_made_while_redis_is_frozen_goes_through_once_it_answers(
    queue_name: str,
) -> None:
    """ctx.submit waits for Redis: sent while it is frozen (each try times out), it is sent
    again until Redis answers, as one task; the run goes on and succeeds."""
    server = RedisServer(port=free_port()).start()
    client = aioredis.Redis.from_url(server.url)
    queue = TaskQueue(client, queue_name)
    try:
        async with running(settings(server.url, queue_name, f"{HANDLERS}:gated_submit",
                                    lease_seconds=10.0)) as worker:
            task_id = await queue.submit("frozen")
            await eventually(lambda: task_in(queue, task_id, "running"), 10, "the run")
            with frozen(server):
                sample_handlers.GATES.setdefault(task_id, asyncio.Event()).set()
                errors = worker.metrics.redis_errors._value
                deadline = asyncio.get_running_loop().time() + 10
                while errors.get() < 2:  # two tries of the submit (or a heartbeat) timed out
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.05)
            done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 15, "done")
        assert done.attempts == 1, "the run waited for Redis instead of failing"
        assert (await queue.figures()).stats["submitted"] == 2
        step = await queue.get(done.result)
        assert step is not None and step.payload == {"step": "frozen"}
    finally:
        await client.aclose()
        server.close()


async def test_a_runs_submits_are_its_tenants_unless_they_name_another(
    queue: TaskQueue,
) -> None:
    channel = QueueChannel(queue)
    run = dataclasses.replace(attempt(channel, 1), tenant="acme")
    step = await run.submit({"w": "a"})
    fan_out = await run.submit_many([{"w": "b"}, {"w": "c"}])
    elsewhere = await run.submit({"w": "d"}, tenant="globex")
    plain = await attempt(channel, 1, task_id="plan-2").submit({"w": "e"})
    tenants = {info.id: info.tenant
               for info in await queue.get_many([step, *fan_out, elsewhere, plain])}
    assert tenants == {step: "acme", fan_out[0]: "acme", fan_out[1]: "acme",
                       elsewhere: "globex", plain: None}
    again = dataclasses.replace(attempt(channel, 2), tenant="acme")
    assert await again.submit({"w": "a"}) == step, "another attempt: the same step"
    older = attempt(channel, 3)  # a worker of an earlier version hands over no tenant
    assert await older.submit({"w": "a"}) == step, "the inherited tenant names nothing"


async def test_a_tenants_plan_and_the_steps_its_run_submits_carry_the_tenant(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    plan = await queue.submit({"words": ["plan", "act"]}, tenant="acme")
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:fan_out_in",
                                concurrency=4)):
        done = await eventually(lambda: task_in(queue, plan, "succeeded"), 10, "the plan")
        summary = await eventually(
            lambda: task_in(queue, done.result["summary"], "succeeded"), 10, "the summary")
    parts = await queue.get_many(done.result["parts"])
    assert [p.tenant for p in parts] == ["acme", "acme"] and summary.tenant == "acme"
