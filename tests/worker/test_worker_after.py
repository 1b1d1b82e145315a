"""Tasks that run after others, through a worker: a fan-in step reads the results of the
steps it runs after (ctx.results_before), async and sync handlers alike."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.protocol import TaskQueue


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
    ("fan_out_in", "plan act check"), ("sync_fan_out_in", "PLAN+ACT+CHECK")])
async def test_a_run_submits_its_steps_once_per_task_whatever_its_attempts(
    redis_url: str, queue_name: str, redis: aioredis.Redis, handler: str, expected: str,
) -> None:
    """ctx.submit: the async planner fails its first attempt after submitting; its second
    submits the same steps again and gets the same ids, so each step runs once."""
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
