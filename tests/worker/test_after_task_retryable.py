"""``outcome.retryable`` in the ``after_task`` hook says whether another attempt may follow:
not on the last attempt, whose task goes to the dead letters."""

from __future__ import annotations

import hook_handlers
import redis.asyncio as aioredis
from worker_helpers import eventually, running, settings, task_in

from agentpool.protocol import TaskQueue


async def test_the_last_attempt_of_a_retryable_failure_is_not_retryable(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    # hook_handlers' state is shared with test_worker_hooks, whose tests leave theirs behind
    hook_handlers.OUTCOMES.clear()
    hook_handlers.READY.update(answer=True, checks=0)
    hook_handlers.AFTER_TASK.update(delay=0.0, finished=[], follow_up_for=set())
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, "hook_handlers:run")):
        task_id = await queue.submit({"mode": "error"}, max_attempts=3)
        dead = await eventually(lambda: task_in(queue, task_id, "dead"), 15, "dead-lettered")
        await eventually(lambda: len(hook_handlers.OUTCOMES.get(task_id, [])) == 3, 5,
                         "after_task of each attempt")
    assert dead.attempts == 3
    outcomes = hook_handlers.OUTCOMES[task_id]
    assert [o.status for o in outcomes] == ["failed"] * 3
    assert [o.retryable for o in outcomes] == [True, True, False]
    assert all("the LLM API answered 500" in (o.error or "") for o in outcomes)
